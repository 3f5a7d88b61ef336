package e2e

import (
	"bytes"
	"encoding/json"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/tubes-dev/tubes/api"
	"github.com/tubes-dev/tubes/internal/testenv"
	"github.com/tubes-dev/tubes/internal/tubetest"
	"github.com/tubes-dev/tubes/localclient"
)

// The registry through the CLI: add descriptors (user and system scope),
// list and find with filters (JSON compared with golden files), defaults,
// remove; malformed descriptors refused with file, line and rule; and the
// registry survives a daemon restart.
func TestServicesCLI(t *testing.T) {
	testenv.MustHaveRoot(t) // the system scope is root's
	dir := t.TempDir()
	sock := filepath.Join(dir, "daemon.sock")
	sys := filepath.Join(dir, "system-services.json")
	startDaemon := func() *proc {
		p := start(t, nil, "daemon", "--state", dir, "--socket", sock, "--system-services", sys)
		p.waitLine("daemon: ")
		return p
	}
	d := startDaemon()
	env := []string{"TUBE_SOCKET=" + sock}
	descs := "../registry/testdata/descriptors/"
	mustRun(t, env, "services", "add", descs+"testservice.xml")
	mustRun(t, env, "services", "add", descs+"filestorage-1.0.xml", "--scope", "system")

	golden(t, "services-list.json", mustRun(t, env, "services", "list", "--json"))
	golden(t, "services-find-location.json", mustRun(t, env, "services", "find", "--interface", "com.nokia.qt.ilocation", "--version", "1.5", "--json"))
	golden(t, "services-find-capability.json", mustRun(t, env, "services", "find", "--capability", "ReadUserData", "--json"))

	var impls []struct{ Service, Interface, Version, Scope string }
	json.Unmarshal([]byte(mustRun(t, env, "services", "find", "--loadable", "--capability", "ReadUserData", "--json")), &impls)
	if len(impls) != 3 || impls[0].Scope != "user" {
		t.Fatalf("loadable with ReadUserData: %+v", impls)
	}
	json.Unmarshal([]byte(mustRun(t, env, "services", "find", "--scope", "system", "--json")), &impls)
	if len(impls) != 1 || impls[0].Service != "FileStorage" {
		t.Fatalf("system scope: %+v", impls)
	}
	if out := mustRun(t, env, "services", "default", "com.nokia.qt.ILocation"); !strings.Contains(out, "TestService") || !strings.Contains(out, "1.5") {
		t.Fatalf("default:\n%s", out)
	}
	mustRun(t, env, "services", "default", "com.nokia.qt.ILocation", "TestService", "--version", "1.4")
	golden(t, "services-default.json", mustRun(t, env, "services", "default", "com.nokia.qt.ILocation", "--json"))

	for _, c := range []struct {
		args []string
		code int
		want string
	}{
		{[]string{"services", "add", "../registry/testdata/bad/duplicate-interface.xml"}, 1, "duplicate-interface.xml:9"},
		// Qt refuses a location registered already.
		{[]string{"services", "add", descs + "testservice.xml"}, 1, "ServiceAlreadyExists"},
		{[]string{"services", "find", "--interface", "a.b", "--version", "1.x"}, 1, "InvalidFilter"},
		{[]string{"services", "find", "--version", "1.0"}, 2, "--version needs --interface"},
		{[]string{"services", "remove", "NoSuchService"}, 1, "ComponentNotFound"},
		{[]string{"services", "list", "--scope", "galaxy"}, 2, "--scope is user or system"},
	} {
		code, out := run(t, env, c.args...)
		if code != c.code || !strings.Contains(out, c.want) {
			t.Errorf("tube %s: exit %d %s; want exit %d and %q", strings.Join(c.args, " "), code, out, c.code, c.want)
		}
	}

	// Changes reach the event stream with their scope.
	c := localclient.New(sock)
	defer c.Close()
	ev := tubetest.Record(t, c, "")
	sysStream, err := c.EventsIn(t.Context(), "", "system")
	if err != nil {
		t.Fatal(err)
	}
	defer sysStream.Close()
	mustRun(t, env, "services", "remove", "FileStorage", "--scope", "system")
	e := ev.MustWait("ServiceRemoved", func(e api.Event) bool { return e.Type == api.EventServiceRemoved })
	if e.Service != "FileStorage" || e.Scope != "system" {
		t.Fatalf("event %+v", e)
	}
	// A user change between two system ones.
	extra := filepath.Join(t.TempDir(), "extra.xml")
	os.WriteFile(extra, []byte(`<SFW version="1.1"><service><name>Extra</name><ipcaddress>extra</ipcaddress>
<interface><name>org.example.Extra</name><version>1.0</version></interface></service></SFW>`), 0o644)
	mustRun(t, env, "services", "add", extra)
	ev.MustWait("user ServiceAdded", func(e api.Event) bool { return e.Type == api.EventServiceAdded && e.Service == "Extra" })
	mustRun(t, env, "services", "add", descs+"filestorage-1.0.xml", "--scope", "system")
	ev.MustWait("ServiceAdded", func(e api.Event) bool { return e.Type == api.EventServiceAdded && e.Service == "FileStorage" })
	// The system-scope watcher saw both system changes and not the user one.
	var seen []string
	for len(seen) < 2 {
		select {
		case e := <-sysStream.C():
			if e.Type == api.EventServiceAdded || e.Type == api.EventServiceRemoved {
				if e.Scope != "system" {
					t.Fatalf("a system-scope watcher got %+v", e)
				}
				seen = append(seen, e.Type)
			}
		case <-time.After(5 * time.Second):
			t.Fatalf("the system-scope watcher saw %v", seen)
		}
	}
	// A second location of Extra adds its implementations (one service
	// from several plugins); one already provided is refused; removing
	// Extra by name removes both locations.
	extra2 := filepath.Join(t.TempDir(), "extra-2.xml")
	os.WriteFile(extra2, []byte(`<SFW version="1.1"><service><name>Extra</name><ipcaddress>extra-2</ipcaddress>
<interface><name>org.example.Extra</name><version>2.0</version></interface></service></SFW>`), 0o644)
	mustRun(t, env, "services", "add", extra2)
	if code, out := run(t, env, "services", "add", extra); code != 1 || !strings.Contains(out, "location extra is registered to service Extra already (ServiceAlreadyExists)") {
		t.Fatalf("Extra's location again: exit %d %s", code, out)
	}
	var rows []string
	for _, l := range strings.Split(mustRun(t, env, "services", "list"), "\n") {
		if f := strings.Fields(l); len(f) > 1 && f[0] == "Extra" {
			rows = append(rows, f[1])
		}
	}
	if strings.Join(rows, " ") != "extra extra-2" {
		t.Fatalf("Extra's locations listed: %q", rows)
	}
	if out := mustRun(t, env, "services", "find", "--service", "extra"); strings.Count(out, "org.example.Extra") != 2 {
		t.Fatalf("find Extra:\n%s", out)
	}
	mustRun(t, env, "services", "remove", "Extra")
	if out := mustRun(t, env, "services", "list"); strings.Contains(out, "Extra") {
		t.Fatalf("after removing Extra:\n%s", out)
	}

	// A restart keeps the registry, the default included.
	d.stop()
	startDaemon()
	if out := mustRun(t, env, "services", "default", "com.nokia.qt.ILocation", "--json"); !strings.Contains(out, `"version": "1.4"`) {
		t.Fatalf("default after a restart:\n%s", out)
	}
	mustRun(t, env, "services", "remove", "TestService")
	if out := mustRun(t, env, "services", "list"); strings.Contains(out, "TestService") || !strings.Contains(out, "FileStorage") {
		t.Fatalf("after remove:\n%s", out)
	}
}

// A daemon SIGKILLed while registering leaves the registry before or
// after the change, never corrupt: after each kill a new daemon loads it,
// and the service is either there whole (every interface) or not there.
// The kills are spread over the time one registration takes, measured
// first, so that some land in the middle of the write.
func TestServicesSurviveKill(t *testing.T) {
	dir := t.TempDir()
	sock := filepath.Join(dir, "daemon.sock")
	env := []string{"TUBE_SOCKET=" + sock}
	xml, err := os.ReadFile("../registry/testdata/descriptors/testservice.xml")
	if err != nil {
		t.Fatal(err)
	}
	startDaemon := func() *proc {
		d := start(t, nil, "daemon", "--state", dir, "--socket", sock, "--system-services", filepath.Join(dir, "sys.json"))
		d.waitLine("daemon: ")
		return d
	}
	// What a whole registration looks like, and how long it takes.
	d := startDaemon()
	c := localclient.New(sock)
	t0 := time.Now()
	whole, err := c.AddService(t.Context(), string(xml), "testservice.xml", "")
	took := time.Since(t0)
	if err != nil {
		t.Fatal(err)
	}
	mustRun(t, env, "services", "remove", "TestService")
	c.Close()
	d.kill()
	const rounds = 12
	outcomes := map[int]int{}
	for round := range rounds + 1 {
		d := startDaemon()
		var list []*api.ServiceDescriptor
		if err := json.Unmarshal([]byte(mustRun(t, env, "services", "list", "--json")), &list); err != nil {
			t.Fatalf("round %d: the registry after a kill: %v", round, err)
		}
		if len(list) > 1 || len(list) == 1 && (list[0].Name != whole.Name || len(list[0].Interfaces) != len(whole.Interfaces)) {
			t.Fatalf("round %d: after a kill mid-registration the registry holds %+v; want nothing or %s whole", round, list, whole.Name)
		}
		outcomes[len(list)]++
		if round == rounds {
			break
		}
		if len(list) == 1 {
			mustRun(t, env, "services", "remove", "TestService")
		}
		c := localclient.New(sock)
		done := make(chan struct{})
		go func() {
			defer close(done)
			c.AddService(t.Context(), string(xml), "testservice.xml", "")
		}()
		time.Sleep(took * time.Duration(round) / (rounds / 2))
		d.kill()
		<-done
		c.Close()
	}
	t.Logf("one registration took %s; after the kills: %d times before, %d times after", took, outcomes[0], outcomes[1])
}

// golden compares got with testdata/name (UPDATE_GOLDEN=1 writes it).
func golden(t *testing.T, name, got string) {
	t.Helper()
	path := filepath.Join("testdata", name)
	if os.Getenv("UPDATE_GOLDEN") != "" {
		os.MkdirAll("testdata", 0o755)
		os.WriteFile(path, []byte(got), 0o644)
		return
	}
	want, err := os.ReadFile(path)
	if err != nil {
		t.Fatalf("%v (UPDATE_GOLDEN=1 go test ./e2e writes it)", err)
	}
	if !bytes.Equal(bytes.TrimSpace(want), bytes.TrimSpace([]byte(got))) {
		t.Errorf("%s:\n%s\nwant\n%s", name, got, want)
	}
}

// The system scope is root's: a daemon running as another user lists it
// but may not change it (PermissionDenied, nothing written), while its
// own user scope works; what root's daemon registers there later, the
// other daemon sees without a restart.
func TestSystemScopeRootOnly(t *testing.T) {
	testenv.MustHaveRoot(t)
	const nobody = 65534
	dir := t.TempDir()
	os.Chmod(filepath.Dir(dir), 0o755) // for nobody to reach its state
	os.Chmod(dir, 0o755)
	sys := filepath.Join(dir, "system-services.json")
	descs := "../registry/testdata/descriptors/"
	abs := func(p string) string { a, _ := filepath.Abs(p); return a }

	// root registers a system service.
	rootSock := filepath.Join(dir, "root.sock")
	d := start(t, nil, "daemon", "--state", filepath.Join(dir, "root"), "--socket", rootSock, "--system-services", sys)
	d.waitLine("daemon: ")
	rootEnv := []string{"TUBE_SOCKET=" + rootSock}
	mustRun(t, rootEnv, "services", "add", descs+"filestorage-1.0.xml", "--scope", "system")
	before, err := os.ReadFile(sys)
	if err != nil {
		t.Fatal(err)
	}

	// nobody's daemon, and nobody's commands.
	state := filepath.Join(dir, "nobody")
	os.Mkdir(state, 0o700)
	os.Chown(state, nobody, nobody)
	asNobody := func(cmd *exec.Cmd) *exec.Cmd {
		cmd.SysProcAttr = &syscall.SysProcAttr{Credential: &syscall.Credential{Uid: nobody, Gid: nobody}}
		return cmd
	}
	sock := filepath.Join(state, "daemon.sock")
	p := startCmd(t, asNobody(exec.Command(tubeBin, "daemon", "--state", state, "--socket", sock, "--system-services", sys)), nil)
	p.waitLine("daemon: ")
	env := []string{"TUBE_SOCKET=" + sock}
	tube := func(args ...string) (int, string) { return runCmd(t, asNobody(exec.Command(tubeBin, args...)), env) }

	if code, out := tube("services", "list", "--scope", "system"); code != 0 || !strings.Contains(out, "FileStorage") {
		t.Fatalf("nobody listing the system scope: exit %d %s", code, out)
	}
	code, out := tube("services", "add", abs(descs+"testservice.xml"), "--scope", "system")
	if code != 1 || !strings.Contains(out, "PermissionDenied") {
		t.Fatalf("nobody adding to the system scope: exit %d %s", code, out)
	}
	if code, out := tube("services", "remove", "FileStorage", "--scope", "system"); code != 1 || !strings.Contains(out, "PermissionDenied") {
		t.Fatalf("nobody removing from the system scope: exit %d %s", code, out)
	}
	if after, _ := os.ReadFile(sys); !bytes.Equal(before, after) {
		t.Fatalf("the system scope changed:\n%s", after)
	}
	if code, out := tube("services", "add", abs(descs+"testservice.xml")); code != 0 {
		t.Fatalf("nobody adding to the user scope: exit %d %s", code, out)
	}
	if code, out := tube("services", "list"); code != 0 || !strings.Contains(out, "TestService") || !strings.Contains(out, "FileStorage") {
		t.Fatalf("nobody's listing: exit %d %s", code, out)
	}
	extra := filepath.Join(dir, "extra.xml")
	os.WriteFile(extra, []byte(`<SFW version="1.1"><service><name>Extra</name><ipcaddress>extra</ipcaddress>
<interface><name>org.example.Extra</name><version>1.0</version></interface></service></SFW>`), 0o644)
	mustRun(t, rootEnv, "services", "add", extra, "--scope", "system")
	if code, out := tube("services", "find", "--interface", "org.example.Extra"); code != 0 || !strings.Contains(out, "Extra") || !strings.Contains(out, "system") {
		t.Fatalf("nobody looking for what root registered since: exit %d %s", code, out)
	}
	d.stop()
}

// Registering through the CLI, the edges: an empty descriptor file is
// refused by the parser, naming the file and the rule (the local API once
// refused it first, for a missing field); a <filepath> that is not there
// yet is registered with a warning; an empty INTERFACE is a usage error
// (it once reached the API as a path it does not serve, NotImplemented).
func TestServicesAddEdges(t *testing.T) {
	_, env := daemon(t)
	dir := t.TempDir()
	empty := filepath.Join(dir, "empty.xml")
	os.WriteFile(empty, nil, 0o644)
	if code, out := run(t, env, "services", "add", empty); code != 1 || !strings.Contains(out, empty+":") || !strings.Contains(out, "MalformedXML") {
		t.Errorf("an empty descriptor: exit %d %s", code, out)
	}
	missing := filepath.Join(dir, "later.xml")
	os.WriteFile(missing, []byte(`<service><name>Later</name><filepath>`+filepath.Join(dir, "not-installed-yet")+`</filepath>
<interface><name>org.example.Later</name><version>1.0</version></interface></service>`), 0o644)
	if code, out := run(t, env, "services", "add", missing); code != 0 || !strings.Contains(out, "warning: service Later:") || !strings.Contains(out, "does not exist yet") {
		t.Errorf("a filepath not installed yet: exit %d %s", code, out)
	}
	if code, out := run(t, env, "services", "default", ""); code != 2 || !strings.Contains(out, "INTERFACE is empty") {
		t.Errorf("an empty interface: exit %d %s", code, out)
	}
}

// The default rules through the CLI: listed with the scope that keeps
// each, set, and cleared back to the newest implementation.
func TestServicesDefaultsCLI(t *testing.T) {
	_, env := daemon(t)
	dir := t.TempDir()
	for name, v := range map[string]string{"Newer": "2.0", "Older": "1.0"} {
		path := filepath.Join(dir, name+".xml")
		os.WriteFile(path, []byte(`<SFW version="1.1"><service><name>`+name+`</name><description>`+name+` editor</description><ipcaddress>`+
			filepath.Join(dir, name)+`</ipcaddress><interface><name>org.example.Edit</name><version>`+v+`</version></interface></service></SFW>`), 0o644)
		mustRun(t, env, "services", "add", path)
	}
	mustRun(t, env, "services", "default", "org.example.Edit", "Older")
	var rules []api.DefaultRule
	if err := json.Unmarshal([]byte(mustRun(t, env, "services", "defaults", "--json")), &rules); err != nil {
		t.Fatal(err)
	}
	if len(rules) != 1 || rules[0].Scope != "user" || rules[0].Implementation.Service != "Older" || rules[0].Implementation.ServiceDescription != "Older editor" {
		t.Fatalf("defaults: %+v", rules)
	}
	if out := mustRun(t, env, "services", "defaults"); !strings.Contains(strings.Join(strings.Fields(out), " "), "user org.example.Edit Older 1.0 user") {
		t.Errorf("defaults table:\n%s", out)
	}
	mustRun(t, env, "services", "default", "org.example.Edit", "--clear")
	if out := mustRun(t, env, "services", "default", "org.example.Edit"); !strings.Contains(out, "Newer") {
		t.Errorf("after --clear the default is\n%s\nwant the newest, Newer", out)
	}
	if code, _ := run(t, env, "services", "default", "org.example.Edit", "Newer", "--clear"); code != 2 {
		t.Errorf("--clear with a SERVICE: exit %d, want 2", code)
	}
	if code, out := run(t, env, "services", "default", "org.example.None", "--clear"); code != 1 || !strings.Contains(out, "ComponentNotFound") {
		t.Errorf("clearing a rule that is not there: exit %d %s", code, out)
	}
}

// Services started on demand are listed by name, the same order every
// time (they came in map order).
func TestActivationsSorted(t *testing.T) {
	_, env := daemon(t)
	dir := t.TempDir()
	for _, name := range []string{"Zeta", "Alpha", "Mid"} {
		script := tubetest.ActivatedScript(t, dir, name) // a location of its own
		path := filepath.Join(dir, name+".xml")
		os.WriteFile(path, []byte(`<service><name>`+name+`</name><filepath>`+script+`</filepath>
<interface><name>org.example.`+name+`</name><version>1.0</version></interface></service>`), 0o644)
		mustRun(t, env, "services", "add", path)
	}
	for range 8 {
		var names []string
		for _, l := range strings.Split(strings.TrimSpace(mustRun(t, env, "services", "activations")), "\n")[1:] {
			names = append(names, strings.Fields(l)[0])
		}
		if strings.Join(names, " ") != "Alpha Mid Zeta" {
			t.Fatalf("activations listed %q, want Alpha Mid Zeta", names)
		}
	}
}

// A daemon killed (SIGKILL) takes the on-demand instances it started
// with it: none is left running, orphaned, holding what it held.
func TestKilledDaemonTakesItsInstances(t *testing.T) {
	dir := t.TempDir()
	sock := filepath.Join(dir, "daemon.sock")
	p := start(t, nil, "daemon", "--state", dir, "--socket", sock, "--system-services", filepath.Join(dir, "system.json"))
	p.waitLine("daemon: ")
	env := []string{"TUBE_SOCKET=" + sock}
	xml := filepath.Join(dir, "svc.xml")
	os.WriteFile(xml, []byte(`<SFW version="1.1"><service><name>svc</name><filepath>`+tubetest.ActivatedScript(t, dir, "svc")+
		`</filepath><interface><name>org.ex.S</name><version>1.0</version></interface></service></SFW>`), 0o644)
	mustRun(t, env, "services", "add", xml)
	var acts map[string]api.ActivationStatus
	json.Unmarshal([]byte(mustRun(t, env, "services", "activations", "--json")), &acts)
	pid := tubetest.AskActivated(t, acts["svc"].Socket)
	// Not p.kill, which waits for the daemon's output to end: an orphan
	// holding it would hang the test rather than fail it.
	p.cmd.Process.Kill()
	for deadline := time.Now().Add(10 * time.Second); syscall.Kill(pid, 0) == nil; time.Sleep(20 * time.Millisecond) {
		if time.Now().After(deadline) {
			syscall.Kill(pid, syscall.SIGKILL)
			t.Fatalf("the instance (pid %d) outlived its daemon", pid)
		}
	}
}
