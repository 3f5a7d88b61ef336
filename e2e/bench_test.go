package e2e

import (
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/tubes-dev/tubes/internal/testenv"
)

// The benchmark (scripts/bench) works end to end, in its tiny smoke
// form: every peer is measured and every concurrent connection checked.
// Its figures are not asserted: a benchmark is not a timed test.
func TestBenchSmoke(t *testing.T) {
	for _, c := range []string{"iperf3", "socat", "ssh", "ssh-keygen", "sshd"} {
		testenv.MustHaveCommand(t, c)
	}
	report := filepath.Join(t.TempDir(), "smoke.md")
	cmd := exec.Command("go", "run", "../bench/tubebench", "-smoke", "-tube", tubeBin, "-out", report)
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("bench smoke run: %v\n%s", err, out)
	}
	for _, want := range []string{"| raw loopback |", "| socat |", "| ssh -L |", "| tube (direct) |", "| 200 through one tube | 200 | 0 |",
		"| tube relay |", "| coturn |", "| find by capability and property (MatchMinimum) |",
		"| autostarted by its first connection (socket activation) |", "| through a tube (bob to alice's published service), autostarted |"} {
		if !strings.Contains(string(out), want) {
			t.Errorf("the report lacks %q:\n%s", want, out)
		}
	}
}
