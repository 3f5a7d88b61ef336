package daemon_test

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"maps"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/tubes-dev/tubes/api"
	"github.com/tubes-dev/tubes/daemon"
	"github.com/tubes-dev/tubes/internal/node"
	"github.com/tubes-dev/tubes/internal/tubetest"
	"github.com/tubes-dev/tubes/registry"
	"github.com/tubes-dev/tubes/rendezvous"
	"github.com/tubes-dev/tubes/tperr"
)

// Alice publishes a registered service to bob and to a room; bob and a
// room member discover it with filters, are told of additions and
// removals, and never see what alice did not publish to them.
func TestPublishAndBrowse(t *testing.T) {
	ctx := context.Background()
	relay := tubetest.Relay(t, rendezvous.Config{})
	alice, bob, carol := tubetest.StartDaemon(t, ""), tubetest.StartDaemon(t, ""), tubetest.StartDaemon(t, "")
	alice.Register(t, "alice", relay)
	bob.Register(t, "bob", relay)
	carol.Register(t, "carol", relay)
	tubetest.Befriend(t, alice, "alice", bob, "bob")
	// An open room: carol, who is not alice's contact, joins it.
	if _, err := alice.C.CreateRoomWith(ctx, "alice", api.RoomRequest{Room: "lab", Open: true}); err != nil {
		t.Fatal(err)
	}
	if _, err := carol.C.JoinRoom(ctx, "carol", "lab"); err != nil {
		t.Fatal(err)
	}
	bobEv, carolEv := tubetest.Record(t, bob.C, "bob"), tubetest.Record(t, carol.C, "carol")
	// Remote service changes are reported to clients that hold the interest.
	for who, d := range map[string]*tubetest.Daemon{"bob": bob, "carol": carol} {
		if err := d.C.AddClientInterest(ctx, who, api.InterestServices); err != nil {
			t.Fatal(err)
		}
	}

	for _, f := range []string{"testservice.xml", "filestorage-1.0.xml"} {
		b, err := os.ReadFile("../registry/testdata/descriptors/" + f)
		if err != nil {
			t.Fatal(err)
		}
		if _, err := alice.C.AddService(ctx, string(b), f, ""); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := alice.C.Publish(ctx, "alice", api.Publication{Service: "NoSuchService", To: "bob"}); tperr.Name(err) != tperr.NotFound {
		t.Fatalf("publish an unknown service: %v", err)
	}
	if _, err := alice.C.Publish(ctx, "alice", api.Publication{Service: "testservice", To: "bob"}); err != nil {
		t.Fatal(err)
	}
	ev := bobEv.MustWait("ServiceAdded", func(e api.Event) bool { return e.Type == api.EventServiceAdded })
	if ev.Service != "TestService" || ev.Contact != "alice" || ev.Scope != "remote" || ev.Room != "" {
		t.Fatalf("bob's event %+v", ev)
	}

	browse := func(who *tubetest.Daemon, name string, req api.BrowseRequest) []string {
		t.Helper()
		impls, err := who.C.Browse(ctx, name, req)
		if err != nil {
			t.Fatalf("%s browses %+v: %v", name, req, err)
		}
		var out []string
		for _, i := range impls {
			out = append(out, i.Publisher+" "+i.Room+" "+i.Service+" "+i.Interface+" "+i.Version.String())
		}
		return out
	}
	got := browse(bob, "bob", api.BrowseRequest{Contact: "alice", Filter: api.ServiceFilter{Interface: "com.nokia.qt.ilocation", Version: "1.5"}})
	if !slices.Equal(got, []string{"alice  TestService com.nokia.qt.ILocation 1.5"}) {
		t.Fatalf("bob's filtered browse: %q", got)
	}
	if got := browse(bob, "bob", api.BrowseRequest{Contact: "alice", Filter: api.ServiceFilter{Interface: "com.nokia.qt.ILocation", Version: "2.0"}}); len(got) != 0 {
		t.Fatalf("a filter nothing matches: %q", got)
	}
	// All of TestService, and nothing of FileStorage, which alice did not publish.
	got = browse(bob, "bob", api.BrowseRequest{Contact: "alice"})
	if len(got) != 3 || slices.ContainsFunc(got, func(s string) bool { return strings.Contains(s, "FileStorage") }) {
		t.Fatalf("bob sees: %q", got)
	}
	if _, err := bob.C.Browse(ctx, "bob", api.BrowseRequest{Contact: "alice", Filter: api.ServiceFilter{Interface: "x", Version: "1.x"}}); tperr.Name(err) != tperr.InvalidArgument {
		t.Fatalf("invalid filter version: %v", err)
	}

	// The room: nothing until alice publishes to it.
	if got := browse(carol, "carol", api.BrowseRequest{Room: "lab"}); len(got) != 0 {
		t.Fatalf("carol sees before publication: %q", got)
	}
	if _, err := alice.C.Publish(ctx, "alice", api.Publication{Service: "TestService", Room: "lab"}); err != nil {
		t.Fatal(err)
	}
	ev = carolEv.MustWait("ServiceAdded", func(e api.Event) bool { return e.Type == api.EventServiceAdded })
	if ev.Service != "TestService" || ev.Contact != "alice" || ev.Room != "lab" {
		t.Fatalf("carol's event %+v", ev)
	}
	if got := browse(carol, "carol", api.BrowseRequest{Room: "lab", Filter: api.ServiceFilter{Capabilities: []string{"ReadUserData"}}}); !slices.Equal(got, []string{"alice lab TestService com.nokia.qt.ISysInfo 2.3"}) {
		t.Fatalf("carol's room browse: %q", got)
	}
	// carol is not alice's contact: she cannot ask alice directly.
	if _, err := carol.C.Browse(ctx, "carol", api.BrowseRequest{Contact: "alice"}); err == nil {
		t.Fatal("a non-contact browsed alice directly")
	}

	// Unregistering withdraws it everywhere.
	if err := alice.C.RemoveService(ctx, "TestService", ""); err != nil {
		t.Fatal(err)
	}
	for who, e := range map[string]*tubetest.Events{"bob": bobEv, "carol": carolEv} {
		ev := e.MustWait(who+" ServiceRemoved", func(e api.Event) bool { return e.Type == api.EventServiceRemoved && e.Scope == "remote" })
		if ev.Service != "TestService" || ev.Contact != "alice" {
			t.Fatalf("%s's removal event %+v", who, ev)
		}
	}
	if got := browse(bob, "bob", api.BrowseRequest{Contact: "alice"}); len(got) != 0 {
		t.Fatalf("bob still sees: %q", got)
	}
	if ps, _ := alice.C.Publications(ctx, "alice"); len(ps) != 0 {
		t.Fatalf("publications left: %+v", ps)
	}

	// Without the interest, bob is not told (the catalog still answers).
	if err := bob.C.RemoveClientInterest(ctx, "bob", api.InterestServices); err != nil {
		t.Fatal(err)
	}
	if _, err := alice.C.Publish(ctx, "alice", api.Publication{Service: "FileStorage", To: "bob"}); err != nil {
		t.Fatal(err)
	}
	if got := browse(bob, "bob", api.BrowseRequest{Contact: "alice"}); len(got) != 1 {
		t.Fatalf("bob's browse after the new publication: %q", got)
	}
	if _, ok := bobEv.Wait(func(e api.Event) bool { return e.Type == api.EventServiceAdded && e.Service == "FileStorage" }, 300*time.Millisecond); ok {
		t.Fatal("bob was told of a publication without holding the interest")
	}
}

// tube open CONTACT/INTERFACE@M.m resolves through what the contact
// publishes (the highest version the filter selects) and reaches the
// service over a reverse tube; an interface nobody publishes in that
// version is NotFound.
func TestOpenByInterface(t *testing.T) {
	ctx := context.Background()
	alice, bob := contacts(t)
	for _, sv := range [][2]string{{"EchoOld", "1.2"}, {"EchoNew", "1.5"}} { // EchoOld first: the default
		name, v := sv[0], sv[1]
		prefix := name
		ln := tubetest.ServeTCP(t, func(c net.Conn) {
			defer c.Close()
			b := make([]byte, 5)
			if _, err := io.ReadFull(c, b); err == nil {
				fmt.Fprintf(c, "%s:%s", prefix, b)
			}
		})
		xml := fmt.Sprintf(`<SFW version="1.1"><service><name>%s</name><ipcaddress>%s</ipcaddress>
<interface><name>org.example.Echo</name><version>%s</version></interface></service></SFW>`, name, ln.Addr(), v)
		if _, err := alice.C.AddService(ctx, xml, name+".xml", ""); err != nil {
			t.Fatal(err)
		}
		if _, err := alice.C.Publish(ctx, "alice", api.Publication{Service: name, To: "bob"}); err != nil {
			t.Fatal(err)
		}
	}
	reach := func(target string) string { t.Helper(); return say(t, bob, "alice", target, "hello") }
	// alice's default (EchoOld, first registered) when the filter takes it ...
	if got := reach("org.example.Echo@1.0"); got != "EchoOld:hello" {
		t.Fatalf("@1.0 reached %q, want alice's default EchoOld", got)
	}
	// ... else the highest version the filter selects.
	if got := reach("org.example.Echo@1.3"); got != "EchoNew:hello" {
		t.Fatalf("@1.3 reached %q, want EchoNew (1.5)", got)
	}
	if _, err := alice.C.SetDefaultService(ctx, "org.example.Echo", "EchoNew", "", ""); err != nil {
		t.Fatal(err)
	}
	if got := reach("org.example.Echo"); got != "EchoNew:hello" {
		t.Fatalf("after alice's new default: %q", got)
	}
	if _, err := bob.C.Open(ctx, "bob", api.OpenRequest{Contact: "alice", Service: "org.example.Echo@2.0"}); tperr.Name(err) != tperr.NotFound {
		t.Fatalf("open a version nobody publishes: %v", err)
	}
	// Withdrawn publications close the way in, also for a service
	// reached before (its export goes with the publication).
	for _, name := range []string{"EchoOld", "EchoNew"} {
		if err := alice.C.Unpublish(ctx, "alice", api.Publication{Service: name, To: "bob"}); err != nil {
			t.Fatal(err)
		}
		if _, err := bob.C.Open(ctx, "bob", api.OpenRequest{Contact: "alice", Service: name}); tperr.Name(err) != tperr.PermissionDenied {
			t.Fatalf("opened %s, no longer published: %v", name, err)
		}
	}
}

// A published service with a <filepath> starts on the first connection
// through a tube, with its socket passed systemd-style, serves it with
// every byte checked, and stops once idle.
func TestOpenAutostartedService(t *testing.T) {
	ctx := context.Background()
	script := tubetest.ActivatedScript(t, t.TempDir(), "service")
	alice, bob := contacts(t)
	listeners := tcpListeners(t)
	xml := `<SFW version="1.1"><service><name>Hasher</name><filepath>` + script + `</filepath>
<interface><name>org.example.Hash</name><version>1.0</version><customproperty key="idle">1</customproperty></interface></service></SFW>`
	if _, err := alice.C.AddService(ctx, xml, "hasher.xml", ""); err != nil {
		t.Fatal(err)
	}
	if _, err := alice.C.Publish(ctx, "alice", api.Publication{Service: "Hasher", To: "bob"}); err != nil {
		t.Fatal(err)
	}
	if acts, _ := alice.C.Activations(ctx); acts["Hasher"].Starts != 0 {
		t.Fatalf("started before any connection: %+v", acts)
	}
	// Nothing listens for it on TCP, where any local user could connect
	// past its uid/gid filter.
	if n := tcpListeners(t); n != listeners {
		t.Fatalf("this process listens on %d TCP sockets, %d before the on-demand service was set up", n, listeners)
	}
	tb, err := bob.C.Open(ctx, "bob", api.OpenRequest{Contact: "alice", Service: "org.example.Hash@1.0"})
	if err != nil {
		t.Fatalf("open: %v", err)
	}
	data := bytes.Repeat([]byte("autostart "), 100000)
	c, err := net.Dial("tcp", tb.Address)
	if err != nil {
		t.Fatal(err)
	}
	c.SetDeadline(time.Now().Add(20 * time.Second))
	c.Write(data)
	c.(*net.TCPConn).CloseWrite()
	got, err := io.ReadAll(c)
	c.Close()
	var pid int
	var sum string
	var n int
	if _, serr := fmt.Sscanf(string(got), "activated %d %s %d", &pid, &sum, &n); serr != nil || err != nil ||
		sum != fmt.Sprintf("%x", sha256.Sum256(data)) || n != len(data) {
		t.Fatalf("the autostarted service answered %q (%v)", got, err)
	}
	st := statusOf(t, alice, "Hasher")
	if st.Starts != 1 || st.PID != pid {
		t.Fatalf("activation status %+v, service pid %d", st, pid)
	}
	deadline := time.Now().Add(10 * time.Second)
	for statusOf(t, alice, "Hasher").Running {
		if time.Now().After(deadline) {
			t.Fatal("the idle service did not stop")
		}
		time.Sleep(50 * time.Millisecond)
	}
}

func statusOf(t *testing.T, d *tubetest.Daemon, service string) api.ActivationStatus {
	t.Helper()
	acts, err := d.C.Activations(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	return acts[service]
}

// An on-demand service that is missing, exits at once, or never accepts
// refuses the tube connection: the application sees a reset, the tube
// reports ConnectionRefused, and the activation status says why. A
// per-client instance is given the connection itself: one that fails
// before answering anything refused it too; one that hangs just keeps its
// connection (see activation.TestFailuresReset).
func TestAutostartFailureRefused(t *testing.T) {
	ctx := context.Background()
	dir := t.TempDir()
	script := func(body string) func(name string) string {
		return func(name string) string {
			p := filepath.Join(dir, name+".sh")
			if err := os.WriteFile(p, []byte("#!/bin/sh\n"+body+"\n"), 0o755); err != nil {
				t.Fatal(err)
			}
			return p
		}
	}
	missing := func(name string) string { return "/nonexistent/" + name }
	exits, hangs := script("exit 1"), script("exec sleep 60")
	alice, bob := contacts(t)
	bobEv := tubetest.Record(t, bob.C, "bob")
	for i, c := range []struct {
		name       string
		path       func(name string) string // a location per service
		props, why string
	}{
		{"missing binary", missing, "", "no such file or directory"},
		{"exits at once", exits, "", "exited before accepting (exit status 1)"},
		{"never accepts", hangs, `<customproperty key="start-timeout">1</customproperty>`, "did not accept within 1s"},
		{"per-client missing binary", missing, `<customproperty key="instance">per-client</customproperty>`, "no such file or directory"},
		{"per-client exits at once", exits, `<customproperty key="instance">per-client</customproperty>`,
			"a per-client instance failed (exit status 1)"},
	} {
		t.Run(c.name, func(t *testing.T) {
			name := fmt.Sprintf("Broken%d", i)
			xml := `<SFW version="1.1"><service><name>` + name + `</name><filepath>` + c.path(name) + `</filepath>
<interface><name>org.example.` + name + `</name><version>1.0</version>` + c.props + `</interface></service></SFW>`
			if _, err := alice.C.AddService(ctx, xml, name+".xml", ""); err != nil {
				t.Fatal(err)
			}
			if _, err := alice.C.Publish(ctx, "alice", api.Publication{Service: name, To: "bob"}); err != nil {
				t.Fatal(err)
			}
			tb, err := bob.C.Open(ctx, "bob", api.OpenRequest{Contact: "alice", Service: "org.example." + name + "@1.0"})
			if err != nil {
				t.Fatal(err)
			}
			c2, err := net.Dial("tcp", tb.Address) // the reset may reach the dial already
			if err == nil {
				defer c2.Close()
				c2.SetDeadline(time.Now().Add(20 * time.Second))
				if _, err = c2.Write([]byte("hello")); err == nil { // or the write
					_, err = io.ReadAll(c2)
				}
			}
			if !errors.Is(err, syscall.ECONNRESET) {
				t.Fatalf("the application got %v, want a reset", err)
			}
			ev := bobEv.MustWait("ConnectionClosed", func(e api.Event) bool { return e.Type == api.EventConnectionClosed && e.TubeID == tb.ID })
			if ev.Error != tperr.ConnectionRefused {
				t.Fatalf("closed with %s (%s), want ConnectionRefused", ev.Error, ev.Message)
			}
			// Why it failed is alice's to know: bob is told that it did.
			if strings.Contains(ev.Message, c.why) || strings.Contains(ev.Message, "/") || strings.Contains(ev.Message, "exit status") {
				t.Fatalf("bob was told alice's local reason: %q", ev.Message)
			}
			if st := statusOf(t, alice, name); !strings.Contains(st.LastError, c.why) {
				t.Fatalf("activation status %+v, want %q", st, c.why)
			}
			// The failure is in the daemon's status too.
			if st, err := alice.C.Status(ctx); err != nil || !strings.Contains(st.Activations[name].LastError, c.why) {
				t.Fatalf("status: %+v %v", st.Activations, err)
			}
		})
	}
}

// A published service with the custom property instance=per-client runs
// one process per connection: two connections at once through a tube
// are answered by two processes, and the status counts two starts.
func TestAutostartPerClient(t *testing.T) {
	script := tubetest.ActivatedScript(t, t.TempDir(), "service")
	alice, bob := contacts(t)
	tb := publishAndOpen(t, alice, bob, "PerClient", script, `<customproperty key="instance">per-client</customproperty>`)
	var conns []net.Conn
	for i := range 2 {
		c, err := net.Dial("tcp", tb.Address)
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		c.SetDeadline(time.Now().Add(20 * time.Second))
		fmt.Fprintf(c, "connection %d", i)
		conns = append(conns, c)
	}
	pids := map[int]bool{}
	for i, c := range conns { // both open before either ends
		c.(*net.TCPConn).CloseWrite()
		got, err := io.ReadAll(c)
		var pid int
		var sum string
		if _, serr := fmt.Sscanf(string(got), "activated %d %s", &pid, &sum); serr != nil || err != nil ||
			sum != fmt.Sprintf("%x", sha256.Sum256(fmt.Appendf(nil, "connection %d", i))) {
			t.Fatalf("connection %d: the service answered %q (%v)", i, got, err)
		}
		pids[pid] = true
	}
	if len(pids) != 2 {
		t.Fatalf("one process for two per-client connections: %v", pids)
	}
	if st := statusOf(t, alice, "PerClient"); st.Starts != 2 {
		t.Fatalf("activation status %+v, want 2 starts", st)
	}
}

// A published service whose interface requires a capability is reached
// only by contacts granted it; revoking takes the access back.
func TestCapabilityGrants(t *testing.T) {
	ctx := context.Background()
	alice, bob := contacts(t)
	ln := tubetest.ServeTCP(t, func(c net.Conn) { io.Copy(c, c); c.Close() })
	xml := `<SFW version="1.1"><service><name>Vault</name><ipcaddress>` + ln.Addr().String() + `</ipcaddress>
<interface><name>org.example.Vault</name><version>1.0</version><capabilities>ReadSecrets,Audit</capabilities></interface></service></SFW>`
	if _, err := alice.C.AddService(ctx, xml, "vault.xml", ""); err != nil {
		t.Fatal(err)
	}
	if _, err := alice.C.Publish(ctx, "alice", api.Publication{Service: "Vault", To: "bob"}); err != nil {
		t.Fatal(err)
	}
	open := func() error {
		_, err := bob.C.Open(ctx, "bob", api.OpenRequest{Contact: "alice", Service: "Vault"})
		return err
	}
	if err := open(); tperr.Name(err) != tperr.PermissionDenied {
		t.Fatalf("no capability granted: %v", err)
	}
	if _, err := alice.C.Grant(ctx, "alice", api.Grant{Contact: "bob", Capabilities: []string{"ReadSecrets"}}, false); err != nil {
		t.Fatal(err)
	}
	if err := open(); tperr.Name(err) != tperr.PermissionDenied {
		t.Fatalf("one of two capabilities granted: %v", err)
	}
	g, err := alice.C.Grant(ctx, "alice", api.Grant{Contact: "bob", Capabilities: []string{"Audit"}}, false)
	if err != nil || !slices.Equal(g.Capabilities, []string{"Audit", "ReadSecrets"}) {
		t.Fatalf("grant: %+v %v", g, err)
	}
	if err := open(); err != nil {
		t.Fatalf("both capabilities granted: %v", err)
	}
	if _, err := alice.C.Grant(ctx, "alice", api.Grant{Contact: "bob", Capabilities: []string{"Audit"}}, true); err != nil {
		t.Fatal(err)
	}
	if err := open(); tperr.Name(err) != tperr.PermissionDenied {
		t.Fatalf("after revoking one: %v", err)
	}
	if gs, _ := alice.C.Grants(ctx, "alice"); len(gs) != 1 || !slices.Equal(gs[0].Capabilities, []string{"ReadSecrets"}) {
		t.Fatalf("grants %+v", gs)
	}
}

// An on-demand service has a local socket: this uid, and the uids and
// gids its "allow-uid" and "allow-gid" properties name, get in (starting
// the service); another uid or gid is refused and logged.
func TestLocalUIDFilter(t *testing.T) {
	testenvRoot(t)
	ctx := context.Background()
	dir, err := os.MkdirTemp("", "tube-local-") // reachable by uid 65534, unlike t.TempDir
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	os.Chmod(dir, 0o755)
	log := &tubetest.LogBuffer{}
	alice := tubetest.StartDaemonConfig(t, nodeConfig(log))
	add := func(name, allow string) string {
		script := tubetest.ActivatedScript(t, dir, name)
		xml := `<SFW version="1.1"><service><name>` + name + `</name><filepath>` + script + `</filepath>
<interface><name>org.example.Local</name><version>1.0</version>` + allow + `</interface></service></SFW>`
		if _, err := alice.C.AddService(ctx, xml, name+".xml", ""); err != nil {
			t.Fatal(err)
		}
		for deadline := time.Now().Add(5 * time.Second); ; time.Sleep(10 * time.Millisecond) {
			if s := statusOf(t, alice, name).Socket; s != "" {
				return s
			}
			if time.Now().After(deadline) {
				t.Fatalf("%s has no local socket", name)
			}
		}
	}
	private := add("Private", "")
	shared := add("Shared", `<customproperty key="allow-uid">65534</customproperty>`)
	group := add("Group", `<customproperty key="allow-gid">4242</customproperty>`)
	if statusOf(t, alice, "Private").Starts != 0 {
		t.Fatal("started before any connection")
	}
	// Our own uid gets in and starts it.
	c, err := net.Dial("unix", private)
	if err != nil {
		t.Fatal(err)
	}
	c.Write([]byte("own uid"))
	c.(*net.UnixConn).CloseWrite()
	c.SetDeadline(time.Now().Add(10 * time.Second))
	if b, _ := io.ReadAll(c); !strings.HasPrefix(string(b), "activated ") {
		t.Fatalf("own uid: %q", b)
	}
	c.Close()
	// uid 65534 (running a copy of this binary it can read): refused by
	// Private, let into Shared; into Group with gid 4242 only.
	bin := filepath.Join(dir, "helper.test")
	exe, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	b, err := os.ReadFile(exe)
	if err != nil {
		t.Fatal(err)
	}
	os.WriteFile(bin, b, 0o755)
	for _, c := range []struct {
		sock string
		gid  uint32
		want string
	}{
		{private, 65534, "refused"},
		{shared, 65534, "activated"},
		{group, 4242, "activated"},
		{group, 65534, "refused"},
	} {
		cmd := exec.Command(bin, "-test.run=^TestHelperLocalDial$")
		cmd.Env = []string{"TUBE_HELPER_LOCAL=" + c.sock}
		cmd.SysProcAttr = &syscall.SysProcAttr{Credential: &syscall.Credential{Uid: 65534, Gid: c.gid}}
		out, _ := cmd.CombinedOutput()
		if !strings.Contains(string(out), c.want) {
			t.Fatalf("uid 65534 gid %d on %s: %s, want %s", c.gid, filepath.Base(c.sock), out, c.want)
		}
	}
	if !strings.Contains(log.String(), "uid/gid filter") || !strings.Contains(log.String(), "uid=65534") {
		t.Fatalf("the refusal is not logged:\n%s", log.String())
	}
}

// TestHelperLocalDial runs as another uid for TestLocalUIDFilter.
func TestHelperLocalDial(t *testing.T) {
	sock := os.Getenv("TUBE_HELPER_LOCAL")
	if sock == "" {
		return
	}
	c, err := net.Dial("unix", sock)
	if err != nil {
		fmt.Println("refused:", err)
		return
	}
	defer c.Close()
	c.Write([]byte("other uid"))
	c.(*net.UnixConn).CloseWrite()
	c.SetDeadline(time.Now().Add(10 * time.Second))
	b, _ := io.ReadAll(c)
	if len(b) == 0 {
		fmt.Println("refused: closed")
		return
	}
	fmt.Println(string(b))
}

// contacts starts a relay and two daemons, alice and bob, mutual contacts.
func contacts(t *testing.T) (alice, bob *tubetest.Daemon) {
	t.Helper()
	relay := tubetest.Relay(t, rendezvous.Config{})
	alice, bob = tubetest.StartDaemon(t, ""), tubetest.StartDaemon(t, "")
	alice.Register(t, "alice", relay)
	bob.Register(t, "bob", relay)
	tubetest.Befriend(t, alice, "alice", bob, "bob")
	return alice, bob
}

// publishAndOpen adds service (executable script, one interface
// org.example.<service> 1.0 with the custom properties props) at alice,
// publishes it to bob, and returns the tube bob opens to it.
func publishAndOpen(t *testing.T, alice, bob *tubetest.Daemon, service, script, props string) api.Tube {
	t.Helper()
	ctx := context.Background()
	xml := `<SFW version="1.1"><service><name>` + service + `</name><filepath>` + script + `</filepath>
<interface><name>org.example.` + service + `</name><version>1.0</version>` + props + `</interface></service></SFW>`
	if _, err := alice.C.AddService(ctx, xml, strings.ToLower(service)+".xml", ""); err != nil {
		t.Fatal(err)
	}
	if _, err := alice.C.Publish(ctx, "alice", api.Publication{Service: service, To: "bob"}); err != nil {
		t.Fatal(err)
	}
	tb, err := bob.C.Open(ctx, "bob", api.OpenRequest{Contact: "alice", Service: "org.example." + service + "@1.0"})
	if err != nil {
		t.Fatalf("open: %v", err)
	}
	return tb
}

// tcpListeners counts the listening TCP sockets this process holds.
func tcpListeners(t *testing.T) int {
	t.Helper()
	mine := map[string]bool{}
	fds, err := os.ReadDir("/proc/self/fd")
	if err != nil {
		t.Fatal(err)
	}
	for _, fd := range fds {
		if l, err := os.Readlink("/proc/self/fd/" + fd.Name()); err == nil && strings.HasPrefix(l, "socket:[") {
			mine[strings.TrimSuffix(strings.TrimPrefix(l, "socket:["), "]")] = true
		}
	}
	n := 0
	for _, table := range []string{"/proc/self/net/tcp", "/proc/self/net/tcp6"} {
		b, err := os.ReadFile(table)
		if err != nil {
			continue
		}
		for _, line := range strings.Split(string(b), "\n")[1:] {
			f := strings.Fields(line)
			if len(f) > 9 && f[3] == "0A" && mine[f[9]] { // 0A: LISTEN
				n++
			}
		}
	}
	return n
}

// One service from several locations (Qt's plugins of one service):
// alice registers Media at a TCP address and at two executables started
// on demand. Bob sees one service with every location's interfaces, is
// told again when a location is added, and each interface he opens is
// served by the location that implements it, each executable by its own
// unit; the service by name is its first location. Removing it removes
// every location and unit.
func TestServiceFromSeveralLocations(t *testing.T) {
	ctx := context.Background()
	alice, bob := contacts(t)
	bobEv := watchServices(t, bob, "bob")
	ln := tubetest.ServeTCP(t, func(c net.Conn) {
		defer c.Close()
		b := make([]byte, 5)
		if _, err := io.ReadFull(c, b); err == nil {
			fmt.Fprintf(c, "audio:%s", b)
		}
	})
	dir := t.TempDir()
	video, play := tubetest.ActivatedScript(t, dir, "video"), tubetest.ActivatedScript(t, dir, "play")
	add := func(location, ifaces string) {
		t.Helper()
		xml := `<SFW version="1.1"><service><name>Media</name>` + location + ifaces + `</service></SFW>`
		if _, err := alice.C.AddService(ctx, xml, "media.xml", ""); err != nil {
			t.Fatalf("add Media at %s: %v", location, err)
		}
	}
	iface := func(name, v string) string {
		return `<interface><name>` + name + `</name><version>` + v + `</version></interface>`
	}
	add(`<ipcaddress>`+ln.Addr().String()+`</ipcaddress>`, iface("org.media.Audio", "1.0"))
	add(`<filepath>`+video+`</filepath>`, iface("org.media.Video", "1.0"))
	if _, err := alice.C.Publish(ctx, "alice", api.Publication{Service: "media", To: "bob"}); err != nil {
		t.Fatal(err)
	}
	published := func(e api.Event) bool {
		return e.Type == api.EventServiceAdded && e.Service == "Media" && e.Scope == "remote"
	}
	bobEv.MustWait("Media published", published)
	mark := len(bobEv.All())
	// A third location, added while published: bob is told again.
	add(`<filepath>`+play+`</filepath>`, iface("org.media.Play", "2.0"))
	if _, ok := bobEv.WaitFrom(mark, published, 10*time.Second); !ok {
		t.Fatal("bob was not told of Media's new location")
	}
	impls, err := bob.C.Browse(ctx, "bob", api.BrowseRequest{Contact: "alice"})
	if err != nil {
		t.Fatal(err)
	}
	var seen []string
	for _, i := range impls {
		if i.FilePath != "" || i.IPCAddress != "" {
			t.Fatalf("bob sees a location of alice's: %+v", i)
		}
		seen = append(seen, i.Service+" "+i.Interface+" "+i.Version.String())
	}
	if want := []string{"Media org.media.Audio 1.0", "Media org.media.Play 2.0", "Media org.media.Video 1.0"}; !slices.Equal(seen, want) {
		t.Fatalf("bob browses %q, want %q", seen, want)
	}

	reach := func(target string) string { t.Helper(); return say(t, bob, "alice", target, "hello") }
	hashed := fmt.Sprintf("%x 5\n", sha256.Sum256([]byte("hello")))
	pids := map[string]string{}
	for target, want := range map[string]string{
		"org.media.Audio@1.0": "audio:hello",
		"org.media.Video@1.0": hashed,
		"org.media.Play@2.0":  hashed,
		"Media":               "audio:hello", // by name: the first location
	} {
		got := reach(target)
		if !strings.HasSuffix(got, want) {
			t.Fatalf("%s reached %q, want %q", target, got, want)
		}
		if want == hashed {
			pids[target] = strings.Fields(got)[1]
		}
	}
	if pids["org.media.Video@1.0"] == pids["org.media.Play@2.0"] {
		t.Fatalf("Video and Play were served by one process (%s)", pids["org.media.Play@2.0"])
	}
	// Each executable has its own unit: the first by the service's name,
	// the next by name and path, each with its own socket.
	acts, err := alice.C.Activations(ctx)
	if err != nil {
		t.Fatal(err)
	}
	first, next := acts["Media"], acts["Media@"+play]
	if len(acts) != 2 || first.Starts != 1 || next.Starts != 1 || first.Socket == "" || first.Socket == next.Socket {
		t.Fatalf("activations %+v", acts)
	}

	if err := alice.C.RemoveService(ctx, "MEDIA", ""); err != nil {
		t.Fatal(err)
	}
	bobEv.MustWait("Media withdrawn", func(e api.Event) bool { return e.Type == api.EventServiceRemoved && e.Service == "Media" })
	if ds, _ := alice.C.Services(ctx, ""); len(ds) != 0 {
		t.Fatalf("left after removing Media: %+v", ds)
	}
	// The removal returns once its units are gone.
	if acts, _ := alice.C.Activations(ctx); len(acts) != 0 {
		t.Fatalf("units left after removing Media: %+v", acts)
	}
	for _, s := range []string{first.Socket, next.Socket} {
		if _, err := os.Stat(s); !os.IsNotExist(err) {
			t.Fatalf("socket %s left: %v", s, err)
		}
	}
}

// say opens a reverse tube from who (account "bob") to target of
// contact, writes msg through it, ends its side, and returns what comes
// back.
func say(t *testing.T, who *tubetest.Daemon, contact, target, msg string) string {
	t.Helper()
	tb, err := who.C.Open(context.Background(), "bob", api.OpenRequest{Contact: contact, Service: target})
	if err != nil {
		t.Fatalf("open %s: %v", target, err)
	}
	c, err := net.Dial("tcp", tb.Address)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(20 * time.Second))
	io.WriteString(c, msg)
	c.(*net.TCPConn).CloseWrite()
	got, _ := io.ReadAll(c)
	return string(got)
}

// Every on-demand unit has a socket of its own, which reaches that unit
// and keeps its name across a restart, whatever the services' names:
// names that make the same file name ("x/y" and "x_y"), one written to
// look like another's hashed socket name, and names too long for a
// socket's path that begin alike.
func TestOnDemandSocketsDistinct(t *testing.T) {
	ctx := context.Background()
	state, scripts := t.TempDir(), t.TempDir()
	d := tubetest.StartDaemon(t, state)
	long := strings.Repeat("Long", 12)
	path := func(i int) string { return tubetest.ActivatedScript(t, scripts, fmt.Sprint("s", i)) }
	sum := sha256.Sum256([]byte("x/y\x00" + path(0)))
	names := []string{"x/y", "x_y", fmt.Sprintf("x_y~%x", sum[:8]), long + "AA", long + "BB"}
	for i, name := range names {
		xml := `<SFW version="1.1"><service><name>` + name + `</name><filepath>` + path(i) +
			`</filepath><interface><name>org.example.S</name><version>1.` + fmt.Sprint(i) + `</version></interface></service></SFW>`
		if _, err := d.C.AddService(ctx, xml, "s.xml", ""); err != nil {
			t.Fatal(err)
		}
	}
	check := func(d *tubetest.Daemon) map[string]string {
		t.Helper()
		acts, err := d.C.Activations(ctx)
		if err != nil {
			t.Fatal(err)
		}
		sockets := map[string]string{} // socket → unit
		for name, st := range acts {
			if other, dup := sockets[st.Socket]; dup || st.Socket == "" {
				t.Fatalf("%s and %s share the socket %q", name, other, st.Socket)
			}
			sockets[st.Socket] = name
			pid := tubetest.AskActivated(t, st.Socket)
			if st := statusOf(t, d, name); st.PID != pid {
				t.Fatalf("%s's socket reached pid %d; its unit runs %d", name, pid, st.PID)
			}
		}
		if len(sockets) != len(names) {
			t.Fatalf("activations %+v", acts)
		}
		return sockets
	}
	before := check(d)
	d.Close()
	if after := check(tubetest.StartDaemon(t, state)); !maps.Equal(after, before) {
		t.Fatalf("sockets before a restart %v, after %v", before, after)
	}
}

// What alice shows of services at several locations, and which location
// serves bob: a service asked for by name is served by its first
// location whose capabilities bob holds; the publisher's defaults are
// flagged whatever case each location writes the name in; a catalog
// larger than one message leaves out services, in order, rather than
// fail; a service grown too large to publish by a new location is
// withdrawn, and the rest of the catalog still answers.
func TestPublishedLocationsChosen(t *testing.T) {
	ctx := context.Background()
	alice, bob := contacts(t)
	bobEv := watchServices(t, bob, "bob")
	serve := func(prefix string) string {
		return tubetest.ServeTCP(t, func(c net.Conn) {
			defer c.Close()
			b, _ := io.ReadAll(c)
			fmt.Fprintf(c, "%s:%s", prefix, b)
		}).Addr().String()
	}
	ifaces := func(prefix string, n int, caps string) string {
		var b strings.Builder
		for i := range n {
			fmt.Fprintf(&b, `<interface><name>%s%04d</name><version>1.0</version>%s</interface>`, prefix, i, caps)
		}
		return b.String()
	}
	add := func(name, addr, ifs string) {
		t.Helper()
		xml := `<SFW version="1.1"><service><name>` + name + `</name><ipcaddress>` + addr + `</ipcaddress>` + ifs + `</service></SFW>`
		if _, err := alice.C.AddService(ctx, xml, name+".xml", ""); err != nil {
			t.Fatalf("add %s: %v", name, err)
		}
	}
	publish := func(name string) {
		t.Helper()
		if _, err := alice.C.Publish(ctx, "alice", api.Publication{Service: name, To: "bob"}); err != nil {
			t.Fatalf("publish %s: %v", name, err)
		}
	}
	add("Vault", serve("secret"), ifaces("org.vault.Secret", 1, "<capabilities>ReadSecrets</capabilities>"))
	add("vault", serve("public"), ifaces("org.vault.Public", 1, ""))
	add("Media", serve("admin"), ifaces("org.media.Admin", 1, ""))
	add("media", serve("play"), ifaces("org.media.Play", 1, ""))
	add("Big", serve("big"), ifaces("org.big.A", 1, ""))
	for _, n := range []string{"Vault", "Media", "Big"} {
		publish(n)
	}
	// Each Fat is under the limit of one publication; together they are
	// over that of one message. Tiny, after them, still fits.
	for i := range 4 {
		n := fmt.Sprint("Fat", i)
		add(n, serve(n), ifaces("org.example.fat"+n+".Interface", 130, ""))
		publish(n)
	}
	add("Tiny", serve("tiny"), ifaces("org.tiny.T", 1, ""))
	publish("Tiny")
	// A small descriptor whose defaults, each naming its long name, are
	// more than one publication carries.
	long := strings.Repeat("L", 255)
	add(long, serve("long"), ifaces("org.long.I", 100, ""))
	if _, err := alice.C.Publish(ctx, "alice", api.Publication{Service: long, To: "bob"}); tperr.Name(err) != tperr.InvalidArgument ||
		!strings.Contains(err.Error(), "too large to publish") {
		t.Fatalf("publish a service too large with its defaults: %v", err)
	}

	if got := say(t, bob, "alice", "Vault", "hello"); got != "public:hello" {
		t.Fatalf("Vault by name reached %q, want its location that needs no capability", got)
	}
	if _, err := bob.C.Open(ctx, "bob", api.OpenRequest{Contact: "alice", Service: "org.vault.Secret0000@1.0"}); tperr.Name(err) != tperr.PermissionDenied {
		t.Fatalf("the interface bob lacks the capability for: %v", err)
	}

	browse := func() map[string][]api.RemoteImplementation {
		t.Helper()
		impls, err := bob.C.Browse(ctx, "bob", api.BrowseRequest{Contact: "alice"})
		if err != nil {
			t.Fatalf("browse: %v", err)
		}
		by := map[string][]api.RemoteImplementation{}
		for _, i := range impls {
			by[i.Service] = append(by[i.Service], i)
		}
		return by
	}
	by := browse()
	for _, i := range by["Media"] {
		if !i.Default {
			t.Errorf("%s %s is alice's default, not flagged", i.Interface, i.Version)
		}
	}
	if len(by["Media"]) != 2 || len(by["Vault"]) != 2 || len(by["Big"]) != 1 {
		t.Fatalf("bob browses %v", by)
	}
	fat := 0
	for i := range 4 {
		if len(by[fmt.Sprint("Fat", i)]) == 130 {
			fat++
		}
	}
	if fat != 3 || len(by["Fat3"]) != 0 || len(by["Tiny"]) != 1 {
		t.Fatalf("bob sees %d whole Fat services (Fat3: %d interfaces), Tiny %d times: want the first 3 Fats, not Fat3, and Tiny",
			fat, len(by["Fat3"]), len(by["Tiny"]))
	}

	// Big grows past what one publication carries: bob is told it is
	// gone, and browses the rest.
	mark := len(bobEv.All())
	add("big", serve("big2"), ifaces("org.big.B", 400, ""))
	if _, ok := bobEv.WaitFrom(mark, func(e api.Event) bool {
		return e.Type == api.EventServiceRemoved && e.Service == "Big" && e.Scope == "remote"
	}, 10*time.Second); !ok {
		t.Fatal("bob was not told that Big was withdrawn")
	}
	if by := browse(); len(by["Big"]) != 0 || len(by["Media"]) != 2 {
		t.Fatalf("after Big grew, bob browses %v", by)
	}
	// Withdrawn, it is not reached by name either.
	if _, err := bob.C.Open(ctx, "bob", api.OpenRequest{Contact: "alice", Service: "Big"}); tperr.Name(err) != tperr.PermissionDenied {
		t.Fatalf("bob opens the withdrawn Big: %v", err)
	}
}

// A publication is of the service it was published as: a user's
// service of the name hides a published system one (bob is told it is
// withdrawn, and cannot reach it), which is published again once the
// user's goes; a published user service removed takes its publication,
// not handing it to the system's of the name.
func TestPublicationKeepsItsService(t *testing.T) {
	testenvRoot(t) // the system scope is root's
	ctx := context.Background()
	alice, bob := contacts(t)
	bobEv := watchServices(t, bob, "bob")
	add := func(scope, iface string) {
		t.Helper()
		addr := tubetest.ServeTCP(t, func(c net.Conn) { io.Copy(io.Discard, c); io.WriteString(c, iface); c.Close() }).Addr().String()
		xml := `<SFW version="1.1"><service><name>Shadow</name><ipcaddress>` + addr + `</ipcaddress><interface><name>` + iface +
			`</name><version>1.0</version></interface></service></SFW>`
		if _, err := alice.C.AddService(ctx, xml, "shadow.xml", scope); err != nil {
			t.Fatal(err)
		}
	}
	remote := func(typ string) func(api.Event) bool {
		return func(e api.Event) bool { return e.Type == typ && e.Service == "Shadow" && e.Scope == "remote" }
	}
	add("system", "org.shadow.System")
	if _, err := alice.C.Publish(ctx, "alice", api.Publication{Service: "Shadow", To: "bob"}); err != nil {
		t.Fatal(err)
	}
	bobEv.MustWait("Shadow published", remote(api.EventServiceAdded))
	if got := say(t, bob, "alice", "Shadow", ""); got != "org.shadow.System" {
		t.Fatalf("Shadow reached %q, want the system's", got)
	}

	mark := len(bobEv.All())
	add("", "org.shadow.User")
	if _, ok := bobEv.WaitFrom(mark, remote(api.EventServiceRemoved), 10*time.Second); !ok {
		t.Fatal("bob was not told the system's Shadow is hidden")
	}
	if _, err := bob.C.Open(ctx, "bob", api.OpenRequest{Contact: "alice", Service: "Shadow"}); tperr.Name(err) != tperr.PermissionDenied {
		t.Fatalf("bob opens the user's Shadow, never published: %v", err)
	}
	if impls, err := bob.C.Browse(ctx, "bob", api.BrowseRequest{Contact: "alice"}); err != nil || len(impls) != 0 {
		t.Fatalf("bob browses %+v (%v) while the published Shadow is hidden", impls, err)
	}

	mark = len(bobEv.All())
	if err := alice.C.RemoveService(ctx, "Shadow", ""); err != nil {
		t.Fatal(err)
	}
	if _, ok := bobEv.WaitFrom(mark, remote(api.EventServiceAdded), 10*time.Second); !ok {
		t.Fatal("bob was not told the system's Shadow is back")
	}
	if got := say(t, bob, "alice", "Shadow", ""); got != "org.shadow.System" {
		t.Fatalf("Shadow reached %q after the user's went, want the system's", got)
	}

	// Published as the user's, it goes with the user's.
	add("", "org.shadow.User")
	if _, err := alice.C.Publish(ctx, "alice", api.Publication{Service: "Shadow", To: "bob"}); err != nil {
		t.Fatal(err)
	}
	mark = len(bobEv.All())
	if err := alice.C.RemoveService(ctx, "Shadow", ""); err != nil {
		t.Fatal(err)
	}
	if _, ok := bobEv.WaitFrom(mark, remote(api.EventServiceRemoved), 10*time.Second); !ok {
		t.Fatal("bob was not told the user's Shadow went")
	}
	if ps, _ := alice.C.Publications(ctx, "alice"); len(ps) != 0 {
		t.Fatalf("publications %+v, after the service they were of went", ps)
	}
	if _, err := bob.C.Open(ctx, "bob", api.OpenRequest{Contact: "alice", Service: "Shadow"}); tperr.Name(err) != tperr.PermissionDenied {
		t.Fatalf("bob opens the system's Shadow, never published as it: %v", err)
	}
}

// A tube granted one on-demand unit reaches that unit only: once the
// service is removed and another registered under its name (on the same
// socket name), the old tube's connections are refused, not handed to
// the newcomer, which was never published.
func TestTubeKeepsItsUnit(t *testing.T) {
	ctx := context.Background()
	alice, bob := contacts(t)
	dir := t.TempDir()
	add := func(script, iface string) {
		t.Helper()
		xml := `<SFW version="1.1"><service><name>vault</name><filepath>` + tubetest.ActivatedScript(t, dir, script) +
			`</filepath><interface><name>` + iface + `</name><version>1.0</version></interface></service></SFW>`
		if _, err := alice.C.AddService(ctx, xml, "vault.xml", ""); err != nil {
			t.Fatal(err)
		}
	}
	add("published", "org.vault.Public")
	if _, err := alice.C.Publish(ctx, "alice", api.Publication{Service: "vault", To: "bob"}); err != nil {
		t.Fatal(err)
	}
	tb, err := bob.C.Open(ctx, "bob", api.OpenRequest{Contact: "alice", Service: "vault"})
	if err != nil {
		t.Fatal(err)
	}
	roundTrip := func() (string, error) {
		c, err := net.Dial("tcp", tb.Address)
		if err != nil {
			return "", err
		}
		defer c.Close()
		c.SetDeadline(time.Now().Add(20 * time.Second))
		io.WriteString(c, "hi")
		c.(*net.TCPConn).CloseWrite()
		b, err := io.ReadAll(c)
		return string(b), err
	}
	if got, err := roundTrip(); err != nil || !strings.HasPrefix(got, "activated ") {
		t.Fatalf("the published unit: %q %v", got, err)
	}
	first := statusOf(t, alice, "vault")
	if err := alice.C.RemoveService(ctx, "vault", ""); err != nil {
		t.Fatal(err)
	}
	add("secret", "org.vault.Secret")
	if st := statusOf(t, alice, "vault"); st.Socket != first.Socket || st.Starts != 0 {
		t.Fatalf("the newcomer's unit %+v, the first's %+v: want the same socket, not started", st, first)
	}
	if got, err := roundTrip(); err == nil && got != "" {
		t.Fatalf("bob's old tube reached the unpublished newcomer: %q", got)
	}
	if st := statusOf(t, alice, "vault"); st.Starts != 0 {
		t.Fatalf("the newcomer was started through bob's old tube: %+v", st)
	}
}

// A user's location of a name the system scope registers comes first:
// it gets the name's unit and socket at once, and the system's location
// moves to NAME@PATH.
func TestUserLocationComesFirst(t *testing.T) {
	testenvRoot(t) // the system scope is root's
	ctx := context.Background()
	d := tubetest.StartDaemon(t, "")
	dir := t.TempDir()
	paths := map[string]string{}
	for _, scope := range []string{"system", ""} {
		paths[scope] = tubetest.ActivatedScript(t, dir, "s"+scope)
		xml := `<SFW version="1.1"><service><name>svc</name><filepath>` + paths[scope] +
			`</filepath><interface><name>org.ex.S</name><version>1.` + fmt.Sprint(len(scope)) + `</version></interface></service></SFW>`
		if _, err := d.C.AddService(ctx, xml, "svc.xml", scope); err != nil {
			t.Fatal(err)
		}
	}
	acts, err := d.C.Activations(ctx)
	if err != nil {
		t.Fatal(err)
	}
	user, sys := acts["svc"], acts["svc@"+paths["system"]]
	if len(acts) != 2 || user.Path != paths[""] || filepath.Base(user.Socket) != "svc.sock" || sys.Path != paths["system"] ||
		!strings.HasPrefix(filepath.Base(sys.Socket), "svc~") || user.LastError != "" || sys.LastError != "" {
		t.Fatalf("activations %+v", acts)
	}
}

// A service removed while a publication of it is on its way (sent, not
// yet recorded) takes that publication too: bob is told it is
// withdrawn, alice keeps no publication of it, and a service registered
// later under the name is not published by it.
func TestRemovedWhilePublishing(t *testing.T) {
	ctx := context.Background()
	alice, bob := contacts(t)
	bobEv := watchServices(t, bob, "bob")
	add := func(addr string) {
		t.Helper()
		xml := `<SFW version="1.1"><service><name>racex</name><ipcaddress>` + addr +
			`</ipcaddress><interface><name>org.ex.R</name><version>1.0</version></interface></service></SFW>`
		if _, err := alice.C.AddService(ctx, xml, "racex.xml", ""); err != nil {
			t.Fatal(err)
		}
	}
	add("127.0.0.1:11")
	daemon.SetAfterPublishSent(func() {
		if err := alice.C.RemoveService(ctx, "racex", ""); err != nil {
			t.Errorf("remove racex: %v", err)
		}
	})
	defer daemon.SetAfterPublishSent(nil)
	if _, err := alice.C.Publish(ctx, "alice", api.Publication{Service: "racex", To: "bob"}); err != nil {
		t.Fatal(err)
	}
	daemon.SetAfterPublishSent(nil)
	bobEv.MustWait("racex withdrawn", func(e api.Event) bool {
		return e.Type == api.EventServiceRemoved && e.Service == "racex" && e.Scope == "remote"
	})
	if ps, _ := alice.C.Publications(ctx, "alice"); len(ps) != 0 {
		t.Fatalf("publications of a removed service: %+v", ps)
	}
	add("127.0.0.1:12")
	if impls, err := bob.C.Browse(ctx, "bob", api.BrowseRequest{Contact: "alice"}); err != nil || len(impls) != 0 {
		t.Fatalf("bob browses %+v (%v): the newcomer was never published", impls, err)
	}
}

// Alice answers at most MaxAnswering browses at once: while that many
// catalogs are being made, further browses are dropped (and counted),
// and once they are done she answers again.
func TestBrowsesAnsweredAtOnceBounded(t *testing.T) {
	ctx := context.Background()
	alice, bob := contacts(t)
	release := make(chan struct{})
	held := make(chan struct{}, 64)
	daemon.SetBeforeCatalog(func() { held <- struct{}{}; <-release })
	defer daemon.SetBeforeCatalog(nil)
	bctx, cancel := context.WithCancel(ctx)
	errs := make(chan error, 64)
	const browses = 3 * daemon.MaxAnswering
	for range browses {
		go func() {
			_, err := bob.C.Browse(bctx, "bob", api.BrowseRequest{Contact: "alice"})
			errs <- err
		}()
	}
	for range daemon.MaxAnswering {
		<-held
	}
	ad := alice.Daemon.Daemon
	for deadline := time.Now().Add(10 * time.Second); daemon.BrowsesDropped(ad) < browses-daemon.MaxAnswering; time.Sleep(10 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatalf("%d browses dropped, want %d", daemon.BrowsesDropped(ad), browses-daemon.MaxAnswering)
		}
	}
	if len(held) != 0 {
		t.Fatalf("%d catalogs past the bound", len(held)+daemon.MaxAnswering)
	}
	cancel()
	close(release)
	for range browses {
		<-errs
	}
	daemon.SetBeforeCatalog(nil)
	// Once the held catalogs are sent, alice answers again.
	for deadline := time.Now().Add(10 * time.Second); daemon.Answering(ad) > 0; time.Sleep(10 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatalf("%d catalogs still being answered", daemon.Answering(ad))
		}
	}
	if _, err := bob.C.Browse(ctx, "bob", api.BrowseRequest{Contact: "alice"}); err != nil {
		t.Fatalf("a browse after the flood: %v", err)
	}
}

// A removal is taken in as what it was, however late: with alice's
// publication changes held up (another publication on its way), vault is
// removed and another service registered under its name; once the queue
// moves, vault's publication is withdrawn, not carried over to the
// newcomer, which bob neither browses nor reaches.
func TestRemovalTakenInLate(t *testing.T) {
	ctx := context.Background()
	alice, bob := contacts(t)
	bobEv := watchServices(t, bob, "bob")
	add := func(name, iface string) {
		t.Helper()
		addr := tubetest.ServeTCP(t, func(c net.Conn) { io.Copy(io.Discard, c); io.WriteString(c, iface); c.Close() }).Addr().String()
		xml := `<SFW version="1.1"><service><name>` + name + `</name><ipcaddress>` + addr +
			`</ipcaddress><interface><name>` + iface + `</name><version>1.0</version></interface></service></SFW>`
		if _, err := alice.C.AddService(ctx, xml, name+".xml", ""); err != nil {
			t.Fatal(err)
		}
	}
	add("vault", "org.vault.Public")
	add("other", "org.other.O")
	if _, err := alice.C.Publish(ctx, "alice", api.Publication{Service: "vault", To: "bob"}); err != nil {
		t.Fatal(err)
	}
	daemon.SetAfterPublishSent(func() {
		daemon.SetAfterPublishSent(nil)
		if err := alice.C.RemoveService(ctx, "vault", ""); err != nil {
			t.Errorf("remove vault: %v", err)
		}
		add("vault", "org.vault.Secret")
	})
	defer daemon.SetAfterPublishSent(nil)
	if _, err := alice.C.Publish(ctx, "alice", api.Publication{Service: "other", To: "bob"}); err != nil {
		t.Fatal(err)
	}
	bobEv.MustWait("vault withdrawn", func(e api.Event) bool {
		return e.Type == api.EventServiceRemoved && e.Service == "vault" && e.Scope == "remote"
	})
	if ps, _ := alice.C.Publications(ctx, "alice"); len(ps) != 1 || ps[0].Service != "other" {
		t.Fatalf("publications %+v, want other's alone", ps)
	}
	impls, err := bob.C.Browse(ctx, "bob", api.BrowseRequest{Contact: "alice"})
	if err != nil || len(impls) != 1 || impls[0].Interface != "org.other.O" {
		t.Fatalf("bob browses %+v (%v), want other's alone", impls, err)
	}
	if _, err := bob.C.Open(ctx, "bob", api.OpenRequest{Contact: "alice", Service: "vault"}); tperr.Name(err) != tperr.PermissionDenied {
		t.Fatalf("bob opens the newcomer: %v", err)
	}
}

// A system service replaced (removed, and another registered under its
// name) by another daemon between two of alice's looks at the file is a
// removal too: her publication of it is withdrawn.
func TestSystemServiceReplacedBetweenPolls(t *testing.T) {
	ctx := context.Background()
	relay := tubetest.Relay(t, rendezvous.Config{})
	sys := filepath.Join(t.TempDir(), "system.json")
	alice := tubetest.StartDaemonConfig(t, node.DaemonConfig{SystemServices: sys})
	bob := tubetest.StartDaemon(t, "")
	alice.Register(t, "alice", relay)
	bob.Register(t, "bob", relay)
	tubetest.Befriend(t, alice, "alice", bob, "bob")
	bobEv := watchServices(t, bob, "bob")
	root, err := registry.Open(registry.Config{SystemFile: sys, CanWriteSystem: func() bool { return true }})
	if err != nil {
		t.Fatal(err)
	}
	desc := func(loc, iface string) *registry.Descriptor {
		d, err := registry.Parse("sys.xml", strings.NewReader(`<SFW version="1.1"><service><name>sys</name><ipcaddress>`+loc+
			`</ipcaddress><interface><name>`+iface+`</name><version>1.0</version></interface></service></SFW>`))
		if err != nil {
			t.Fatal(err)
		}
		return d
	}
	if err := root.Add(desc("127.0.0.1:11", "org.sys.One"), registry.SystemScope); err != nil {
		t.Fatal(err)
	}
	if _, err := alice.C.Publish(ctx, "alice", api.Publication{Service: "sys", To: "bob"}); err != nil {
		t.Fatal(err)
	}
	if err := root.Remove("sys", registry.SystemScope); err != nil {
		t.Fatal(err)
	}
	if err := root.Add(desc("127.0.0.1:12", "org.sys.Two"), registry.SystemScope); err != nil {
		t.Fatal(err)
	}
	bobEv.MustWait("sys withdrawn", func(e api.Event) bool {
		return e.Type == api.EventServiceRemoved && e.Service == "sys" && e.Scope == "remote"
	})
	if ps, _ := alice.C.Publications(ctx, "alice"); len(ps) != 0 {
		t.Fatalf("publications %+v after sys was replaced", ps)
	}
}

// watchServices records who's events, with the interest that brings
// what contacts publish.
func watchServices(t *testing.T, who *tubetest.Daemon, name string) *tubetest.Events {
	t.Helper()
	ev := tubetest.Record(t, who.C, name)
	if err := who.C.AddClientInterest(context.Background(), name, api.InterestServices); err != nil {
		t.Fatal(err)
	}
	return ev
}

// Publications of services that went while the daemon was down are
// dropped when it starts, and so are those no publication can be (no
// contact and no room; repeats); one from before publications were
// pinned takes the name's service as it is. While the system scope's
// file cannot be read, a publication of a system service is kept.
func TestPublicationsPrunedAtStart(t *testing.T) {
	ctx := context.Background()
	relay := tubetest.Relay(t, rendezvous.Config{})
	dir := t.TempDir()
	sys := filepath.Join(dir, "system-services.json")
	d := tubetest.StartDaemon(t, dir)
	d.Register(t, "alice", relay)
	for _, svc := range []struct{ name, scope string }{{"kept", ""}, {"system", "system"}} {
		xml := `<SFW version="1.1"><service><name>` + svc.name + `</name><ipcaddress>127.0.0.1:11</ipcaddress>` +
			`<interface><name>org.k.K</name><version>1.0</version></interface></service></SFW>`
		if svc.scope == "system" {
			xml = strings.Replace(xml, "127.0.0.1:11", "127.0.0.1:12", 1)
		}
		if _, err := d.C.AddService(ctx, xml, svc.name+".xml", svc.scope); err != nil {
			t.Fatal(err)
		}
	}
	d.Close()
	file := filepath.Join(dir, "publications.json")
	write := func(pubs string) {
		t.Helper()
		if err := os.WriteFile(file, []byte(pubs), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	write(`{"alice":[{"service":"gone","to":"bob"},{"service":"kept","to":"bob"},{"service":"kept","to":"bob"},
		{"service":"kept","to":"carol","pin":"sha256:00"},{"service":"kept"},{"service":"kept","to":"dave","room":"lab"}]}`)
	d = tubetest.StartDaemon(t, dir)
	ps, err := d.C.Publications(ctx, "alice")
	if err != nil || len(ps) != 1 || ps[0] != (api.Publication{Service: "kept", To: "bob"}) {
		t.Fatalf("publications after the start: %+v (%v)", ps, err)
	}
	var saved map[string][]api.Publication
	b, _ := os.ReadFile(file)
	if json.Unmarshal(b, &saved); len(saved["alice"]) != 1 || !strings.HasPrefix(saved["alice"][0].Pin, "sha256:") {
		t.Fatalf("publications.json: %s", b)
	}

	// The system file unreadable at the start: its services' publications
	// stay, for when it is read again.
	pinned := saved["alice"][0]
	d.Close()
	sysPin := strings.Replace(pinned.Pin, "0", "1", 1) // not the user's
	write(`{"alice":[{"service":"system","to":"bob","pin":"` + sysPin + `"}]}`)
	good, _ := os.ReadFile(sys)
	os.WriteFile(sys, []byte(`{garbage`), 0o644)
	d = tubetest.StartDaemon(t, dir)
	if ps, _ := d.C.Publications(ctx, "alice"); len(ps) != 1 || ps[0].Service != "system" {
		t.Fatalf("publications with the system file unreadable: %+v", ps)
	}
	d.Close()
	os.WriteFile(sys, good, 0o644)
	d = tubetest.StartDaemon(t, dir)
	if ps, _ := d.C.Publications(ctx, "alice"); len(ps) != 0 {
		t.Fatalf("publications once the system file is read: %+v (the pin was not the system service's)", ps)
	}
}
