package lint

import (
	"fmt"
	"os"
	"regexp"
	"strings"
	"testing"

	"github.com/tubes-dev/tubes/activation"
	"github.com/tubes-dev/tubes/daemon"
	"github.com/tubes-dev/tubes/peerlink"
	"github.com/tubes-dev/tubes/relay"
	"github.com/tubes-dev/tubes/rendezvous"
	"github.com/tubes-dev/tubes/tube"
)

// The README's limits table says what the code does: each row's default
// is the constant the code uses, and each metric it names is registered
// by the code (its name appears in a Go source file).
func TestLimitsTable(t *testing.T) {
	readme, err := os.ReadFile("../../README.md")
	if err != nil {
		t.Fatal(err)
	}
	_, table, ok := strings.Cut(string(readme), "### Limits\n")
	if !ok {
		t.Fatal("README.md has no Limits section")
	}
	table, _, _ = strings.Cut(table, "\n### ")
	rows := map[string]string{} // flag or property → default
	var metrics []string
	metricRe := regexp.MustCompile("`(tubes_[a-z_]+)")
	for _, l := range strings.Split(table, "\n") {
		cells := strings.Split(l, "|")
		if len(cells) < 6 || strings.HasPrefix(strings.TrimSpace(cells[1]), "---") {
			continue
		}
		def, flag := strings.TrimSpace(cells[3]), strings.TrimSpace(cells[4])
		if f := regexp.MustCompile("`([a-z-]+)`").FindStringSubmatch(flag); f != nil {
			rows[strings.TrimPrefix(f[1], "--")] = def
		}
		rows[strings.TrimSpace(cells[2])] = def
		for _, m := range metricRe.FindAllStringSubmatch(cells[5], -1) {
			metrics = append(metrics, m[1])
		}
	}
	mib := func(n int) string { return fmt.Sprintf("%d MiB", n>>20) }
	for key, want := range map[string]string{
		"turn-unauth-per-source":     fmt.Sprint(relay.DefaultUnauthPerSource),
		"turn-unauth-total":          fmt.Sprint(relay.DefaultUnauthTotal),
		"turn-auth-deadline":         relay.DefaultAuthDeadline.String(),
		"turn-max-connections":       fmt.Sprint(relay.DefaultMaxConnections),
		"link-handshakes-per-source": fmt.Sprint(tube.DefaultHandshakesPerSource),
		"link-handshake-timeout":     peerlink.DefaultHandshake.String(),
		"link-streams":               fmt.Sprint(peerlink.DefaultStreams),
		"link-stall-timeout":         peerlink.DefaultStall.String(),
		"event-buffer":               mib(daemon.DefaultEventBytes),
		"event-write-timeout":        daemon.DefaultEventWriteTimeout.String(),
		"max-instances":              fmt.Sprint(activation.DefaultMaxInstances),
		"receive budget per peer link (all its streams together)":                                             mib(peerlink.ReceiveBudget),
		"reserve per stream past the link's budget (streams whose applications read go on beside stuck ones)": fmt.Sprintf("%d KiB", peerlink.StreamReserve>>10),
		"links per contact (the dialer retires those it replaces; beyond this the oldest closes)":             fmt.Sprint(tube.LinksPerPeer),
		"turn-allocations-per-user":  fmt.Sprint(relay.DefaultMaxAllocations),
		"turn-allocations":           fmt.Sprint(relay.DefaultTotalAllocations),
		"account-requests-in-flight": fmt.Sprint(rendezvous.DefaultInFlight),
		"account-request-rate":       fmt.Sprint(rendezvous.DefaultRate),
		"account-message-rate":       fmt.Sprint(rendezvous.DefaultMessages),
		"account-rooms":              fmt.Sprint(rendezvous.DefaultRooms),
		"account-contact-requests":   fmt.Sprint(rendezvous.DefaultContactRequests),
		"account-invitations":        fmt.Sprint(rendezvous.DefaultInvitations),
		"register-per-source":        fmt.Sprint(rendezvous.DefaultRegisterPerSource),
		"register-per-minute":        fmt.Sprint(rendezvous.DefaultRegisterPerMinute),
		"logins being checked at once (capacity of their own, that no request can take)":        fmt.Sprint(rendezvous.MaxLoginsInFlight),
		"guest logins (to register, or to learn why a login was refused) per source per minute": fmt.Sprint(rendezvous.GuestLoginsPerSource),
		"one message from an account (a request, or a message it sends)":                        fmt.Sprintf("%d KiB", rendezvous.MaxPayload>>10),
		"message body (larger is refused to its sender)":                                        fmt.Sprintf("%d bytes", tube.MaxMessageBody),
	} {
		if got, ok := rows[key]; !ok {
			t.Errorf("the limits table has no row for %s", key)
		} else if got != want {
			t.Errorf("the limits table says %s for %s; the code's default is %s", got, key, want)
		}
	}
	src := goSources(t)
	for _, m := range metrics {
		if !strings.Contains(src, `"`+m+`"`) && !strings.Contains(src, `"`+m+`{`) {
			t.Errorf("the limits table names the metric %s, which no code registers", m)
		}
	}
}

// goSources is the text of every non-test Go file.
func goSources(t *testing.T) string {
	var b strings.Builder
	for _, f := range goFiles(t) {
		if strings.HasSuffix(f, "_test.go") {
			continue
		}
		src, err := os.ReadFile(f)
		if err != nil {
			t.Fatal(err)
		}
		b.Write(src)
	}
	return b.String()
}
