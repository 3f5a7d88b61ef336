package e2e

import (
	"encoding/json"
	"fmt"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats-server/v2/server"
)

// TestRelayKilledKeepsState kills a relay with SIGKILL and restarts it on
// the same --data: accounts, contacts and rooms are intact and the daemons
// reconnect by themselves.
func TestRelayKilledKeepsState(t *testing.T) {
	data := t.TempDir()
	listen := fmt.Sprintf("127.0.0.1:%d", freePort(t))
	relay := start(t, nil, "relay", "--turn-listen", "127.0.0.1:0", "--listen", listen, "--data", data)
	url := strings.TrimSpace(relay.waitLine("rendezvous: "))

	_, alice := daemon(t)
	_, bob := daemon(t)
	mustRun(t, alice, "account", "add", "alice", "--server", url, "--register")
	mustRun(t, bob, "account", "add", "bob", "--server", url, "--register")
	mustRun(t, alice, "contact", "add", "bob")
	mustRun(t, bob, "contact", "approve", "alice")
	mustRun(t, alice, "room", "create", "lab")
	mustRun(t, alice, "room", "invite", "lab", "bob")
	mustRun(t, bob, "room", "join", "lab")

	relay.kill()
	waitStatus(t, alice, "Disconnected", "Network_Error")

	relay2 := start(t, nil, "relay", "--turn-listen", "127.0.0.1:0", "--listen", listen, "--data", data)
	relay2.waitLine("rendezvous: ")
	waitStatus(t, alice, "Connected", "Requested")
	waitStatus(t, bob, "Connected", "Requested")

	var contacts []struct{ Name, State string }
	json.Unmarshal([]byte(mustRun(t, alice, "contact", "list", "--json")), &contacts)
	if len(contacts) != 1 || contacts[0].Name != "bob" || contacts[0].State != "contact" {
		t.Fatalf("contacts after restart: %+v", contacts)
	}
	var members []struct{ Name string }
	json.Unmarshal([]byte(mustRun(t, bob, "room", "members", "lab", "--json")), &members)
	if len(members) != 2 {
		t.Fatalf("room members after restart: %+v", members)
	}
	// A name taken before the crash is still taken.
	_, carol := daemon(t)
	if code, out := run(t, carol, "account", "add", "alice", "--server", url, "--register"); code != 1 || !strings.Contains(out, "RegistrationExists") {
		t.Fatalf("re-register alice after restart: exit %d %s", code, out)
	}
}

// waitStatus polls `tube status --json` until the only account has the
// status and reason.
func waitStatus(t *testing.T, env []string, status, reason string) {
	t.Helper()
	deadline := time.Now().Add(20 * time.Second)
	var last string
	for time.Now().Before(deadline) {
		code, out := run(t, env, "status", "--json")
		if code == 0 {
			var st struct {
				Accounts []struct{ Status, Reason string }
			}
			json.Unmarshal([]byte(out), &st)
			if len(st.Accounts) == 1 && st.Accounts[0].Status == status && st.Accounts[0].Reason == reason {
				return
			}
			last = out
		}
		time.Sleep(50 * time.Millisecond)
	}
	t.Fatalf("never %s/%s; last status:\n%s", status, reason, last)
}

// TestClosedRegistrationCLI drives `tube relay user` against a running
// closed relay.
func TestClosedRegistrationCLI(t *testing.T) {
	data := t.TempDir()
	relay := start(t, nil, "relay", "--turn-listen", "127.0.0.1:0", "--listen", "127.0.0.1:0", "--data", data, "--registration", "closed")
	url := strings.TrimSpace(relay.waitLine("rendezvous: "))
	_, env := daemon(t)
	if code, out := run(t, env, "account", "add", "dave", "--server", url, "--register"); code != 1 || !strings.Contains(out, "closed") {
		t.Fatalf("register on a closed relay: exit %d %s", code, out)
	}
	code := strings.TrimSpace(strings.Split(mustRun(t, nil, "relay", "user", "add", "dave", "--data", data), "\n")[0])
	mustRun(t, env, "account", "add", "dave", "--server", url, "--register", "--invite", code)
	out := mustRun(t, nil, "relay", "user", "list", "--data", data)
	if !strings.Contains(out, "dave") || !strings.Contains(out, "registered") {
		t.Fatalf("user list:\n%s", out)
	}
	mustRun(t, nil, "relay", "user", "remove", "dave", "--data", data)
	waitStatus(t, env, "Disconnected", "Authentication_Failed")
}

// TestRelaysShareNATSCluster runs a two-server NATS cluster configured with
// `tube relay nats-config`, and two relays (account services) against it,
// each on its own server. alice connects to one server and bob to the
// other; they see each other and exchange a message; with the first relay
// killed, the second still serves both.
func TestRelaysShareNATSCluster(t *testing.T) {
	data1, data2 := t.TempDir(), t.TempDir()
	conf := mustRun(t, nil, "relay", "nats-config", "--data", data1)
	seed, err := os.ReadFile(filepath.Join(data1, "issuer.nk"))
	if err != nil {
		t.Fatal(err)
	}
	os.WriteFile(filepath.Join(data2, "issuer.nk"), seed, 0o600)
	conf = strings.ReplaceAll(conf, "CHANGE-ME-SVC", "svcpw")
	conf = strings.ReplaceAll(conf, "CHANGE-ME-SYS", "syspw")

	ports := []int{freePort(t), freePort(t)}
	routes := []int{freePort(t), freePort(t)}
	var urls []string
	for i := range 2 {
		cfg := fmt.Sprintf(`server_name: n%d
listen: 127.0.0.1:%d
jetstream { store_dir: %q }
cluster { name: tubes, listen: 127.0.0.1:%d, routes: [ nats://127.0.0.1:%d ] }
%s`, i, ports[i], t.TempDir(), routes[i], routes[1-i], strings.Replace(conf, "jetstream: enabled\n", "", 1))
		startNATS(t, cfg)
		urls = append(urls, fmt.Sprintf("127.0.0.1:%d", ports[i]))
	}
	relays := make([]*proc, 2)
	for i, data := range []string{data1, data2} {
		relays[i] = start(t, nil, "relay", "--turn-listen", "127.0.0.1:0",
			"--nats", "nats://tube-svc:svcpw@"+urls[i],
			"--nats-system", "nats://tube-sys:syspw@"+urls[i],
			"--data", data)
		relays[i].waitLine("rendezvous: ")
	}
	_, alice := daemon(t)
	_, bob := daemon(t)
	mustRun(t, alice, "account", "add", "alice", "--server", urls[0], "--register")
	mustRun(t, bob, "account", "add", "bob", "--server", urls[1], "--register")
	mustRun(t, alice, "contact", "add", "bob")
	mustRun(t, bob, "contact", "approve", "alice")
	waitOnline := func(env []string, who string) {
		t.Helper()
		deadline := time.Now().Add(10 * time.Second)
		for time.Now().Before(deadline) {
			var cs []struct {
				Name   string
				Online bool
			}
			json.Unmarshal([]byte(mustRun(t, env, "contact", "list", "--json")), &cs)
			if len(cs) == 1 && cs[0].Name == who && cs[0].Online {
				return
			}
			time.Sleep(50 * time.Millisecond)
		}
		t.Fatalf("%s never online", who)
	}
	waitOnline(alice, "bob")
	waitOnline(bob, "alice")
	sendAndReceive(t, alice, bob, "alice", "hello across the cluster")

	// The first relay dies; the second serves logins and requests alone.
	relays[0].kill()
	mustRun(t, alice, "disconnect")
	mustRun(t, alice, "connect")
	waitOnline(bob, "alice")
	sendAndReceive(t, alice, bob, "alice", "still here")
}

// startNATS runs a NATS server (the library, as nats-server runs it)
// with the configuration cfg until the test ends.
func startNATS(t *testing.T, cfg string) {
	t.Helper()
	path := filepath.Join(t.TempDir(), "nats.conf")
	os.WriteFile(path, []byte(cfg), 0o600)
	opts, err := server.ProcessConfigFile(path)
	if err != nil {
		t.Fatalf("the printed configuration does not load: %v\n%s", err, cfg)
	}
	opts.NoSigs, opts.NoLog = true, true
	ns, err := server.NewServer(opts)
	if err != nil {
		t.Fatal(err)
	}
	go ns.Start()
	t.Cleanup(ns.Shutdown)
	if !ns.ReadyForConnections(10 * time.Second) {
		t.Fatal("nats server not ready")
	}
}

// natsForRelay runs a NATS server configured by `tube relay nats-config
// --data data` and returns its address and the relay's --nats and
// --nats-system flags for it.
func natsForRelay(t *testing.T, data string) (addr string, flags []string) {
	t.Helper()
	conf := mustRun(t, nil, "relay", "nats-config", "--data", data)
	conf = strings.ReplaceAll(conf, "CHANGE-ME-SVC", "svcpw")
	conf = strings.ReplaceAll(conf, "CHANGE-ME-SYS", "syspw")
	addr = fmt.Sprintf("127.0.0.1:%d", freePort(t))
	startNATS(t, fmt.Sprintf("listen: %s\njetstream { store_dir: %q }\n%s", addr, t.TempDir(), strings.Replace(conf, "jetstream: enabled\n", "", 1)))
	return addr, []string{"--nats", "nats://tube-svc:svcpw@" + addr, "--nats-system", "nats://tube-sys:syspw@" + addr, "--data", data}
}

// sendAndReceive has from's daemon deliver a message to the account of
// to's daemon (through the local API's messages endpoint) and checks it
// arrives as an event.
func sendAndReceive(t *testing.T, from, to []string, fromName, text string) {
	t.Helper()
	watch := start(t, to, "status", "--watch")
	watch.waitLine("ACCOUNT")
	if out := mustRun(t, from, "message", "send", "--to", "bob", "--kind", "e2e", text); strings.TrimSpace(out) != "bob" {
		t.Fatalf("send reached %q", out)
	}
	watch.waitContains(`message "e2e" from ` + fromName)
	watch.stop()
}

// TestMetrics: --http serves Prometheus metrics on relay and daemon.
func TestMetrics(t *testing.T) {
	relayHTTP := fmt.Sprintf("127.0.0.1:%d", freePort(t))
	relay := start(t, nil, "relay", "--turn-listen", "127.0.0.1:0", "--listen", "127.0.0.1:0", "--http", relayHTTP)
	url := strings.TrimSpace(relay.waitLine("rendezvous: "))
	relay.waitLine("metrics: ")
	dir := t.TempDir()
	sock := filepath.Join(dir, "d.sock")
	daemonHTTP := fmt.Sprintf("127.0.0.1:%d", freePort(t))
	d := start(t, nil, "daemon", "--state", dir, "--socket", sock, "--http", daemonHTTP)
	d.waitLine("metrics: ")
	env := []string{"TUBE_SOCKET=" + sock}
	mustRun(t, env, "account", "add", "alice", "--server", url, "--register")

	scrape := func(addr, name string) float64 {
		t.Helper()
		v, ok := metric(t, addr, name)
		if !ok {
			t.Fatalf("%s serves no %s", addr, name)
		}
		return v
	}
	// Profiles only when asked for (--pprof): a CPU profile costs the
	// process, and --http is for metrics.
	for _, addr := range []string{relayHTTP, daemonHTTP} {
		resp, err := http.Get("http://" + addr + "/debug/pprof/")
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		if resp.StatusCode != http.StatusNotFound {
			t.Errorf("%s serves /debug/pprof/ without --pprof: %s", addr, resp.Status)
		}
	}
	if v := scrape(relayHTTP, "tubes_rendezvous_online_accounts"); v != 1 {
		t.Fatalf("relay online accounts = %v", v)
	}
	if v := scrape(relayHTTP, "tubes_rendezvous_accounts"); v != 1 {
		t.Fatalf("relay accounts = %v", v)
	}
	if v := scrape(daemonHTTP, "tubes_daemon_accounts_connected"); v != 1 {
		t.Fatalf("daemon connected accounts = %v", v)
	}
}
