package localapi_test

import (
	"context"
	"encoding/json"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"

	"github.com/tubes-dev/tubes/api"
	"github.com/tubes-dev/tubes/internal/testenv"
	"github.com/tubes-dev/tubes/internal/tubetest"
	"github.com/tubes-dev/tubes/rendezvous"
	"github.com/tubes-dev/tubes/tperr"
)

func rawClient(socket string) *http.Client {
	return &http.Client{Transport: &http.Transport{
		DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
			return (&net.Dialer{}).DialContext(ctx, "unix", socket)
		},
	}}
}

func call(t *testing.T, hc *http.Client, method, path, body string) (int, api.Error) {
	t.Helper()
	req, _ := http.NewRequest(method, "http://tube"+path, strings.NewReader(body))
	resp, err := hc.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	var e api.Error
	if resp.StatusCode >= 300 {
		if err := json.Unmarshal(b, &e); err != nil {
			t.Fatalf("%s %s: error body is not {code, message}: %s", method, path, b)
		}
	}
	return resp.StatusCode, e
}

func TestBadRequests(t *testing.T) {
	relay := tubetest.Relay(t, rendezvous.Config{})
	d := tubetest.StartDaemon(t, "")
	d.Register(t, "alice", relay)
	hc := rawClient(d.Socket)
	for _, tc := range []struct {
		method, path, body string
		status             int
		code               string
		mention            string // the message must name this
	}{
		{"POST", "/v1/accounts", `{"name": 5, "server": "x"}`, 400, tperr.InvalidArgument, `"name"`},
		{"POST", "/v1/accounts", `{"name": "bob", "server": "x", "regster": true}`, 400, tperr.InvalidArgument, `"regster"`},
		{"POST", "/v1/accounts", `{"name": "bob", "server": ["x"]}`, 400, tperr.InvalidArgument, `"server"`},
		{"POST", "/v1/accounts", `{"name": "bob"`, 400, tperr.InvalidArgument, "not valid JSON"},
		{"POST", "/v1/accounts", ``, 400, tperr.InvalidArgument, "empty"},
		{"POST", "/v1/accounts", `[1,2]`, 400, tperr.InvalidArgument, "JSON object"},
		{"POST", "/v1/accounts", `{"server": "x"}`, 400, tperr.InvalidArgument, `"name"`},
		{"POST", "/v1/accounts/alice/handles/request", `{"type": "contact", "identifiers": ["bob"]}`, 400, tperr.InvalidArgument, `"type"`},
		{"POST", "/v1/accounts/alice/handles/request", `{"type": 1, "identifiers": "bob"}`, 400, tperr.InvalidArgument, `"identifiers"`},
		{"POST", "/v1/accounts/alice/contacts", `{}`, 400, tperr.InvalidArgument, `"name"`},
		{"POST", "/v1/accounts/alice/contacts", `{"name": "nobody"}`, 404, tperr.DoesNotExist, "nobody"},
		{"POST", "/v1/accounts/alice/rooms/nosuch/join", ``, 403, tperr.PermissionDenied, "nosuch"}, // as for a room one may not see
		{"GET", "/v1/accounts/nobody", ``, 404, tperr.NotFound, "nobody"},
		{"POST", "/v1/accounts/alice/interest/add", `{"tokens": []}`, 400, tperr.InvalidArgument, "Tube-Client"},
		{"GET", "/v1/nothing", ``, 501, tperr.NotImplemented, "/v1/nothing"},
	} {
		status, e := call(t, hc, tc.method, tc.path, tc.body)
		if status != tc.status || e.Code != tc.code || !strings.Contains(e.Message, tc.mention) {
			t.Errorf("%s %s %s: got %d %s %q; want %d %s mentioning %s", tc.method, tc.path, tc.body, status, e.Code, e.Message, tc.status, tc.code, tc.mention)
		}
	}
	// Nothing was created by the bad requests.
	if as, _ := d.C.Accounts(context.Background()); len(as) != 1 {
		t.Fatalf("accounts after bad requests: %+v", as)
	}
}

// TestOtherUser runs a client as another user (nobody). With the socket's
// default mode the kernel refuses it; with the mode opened up, the daemon
// refuses it itself (SO_PEERCRED) with 403.
func TestOtherUser(t *testing.T) {
	testenv.MustHaveRoot(t)
	dir, err := os.MkdirTemp("", "tube-uid-")
	if err != nil {
		t.Fatal(err)
	}
	defer os.RemoveAll(dir)
	os.Chmod(dir, 0o755)
	d := tubetest.StartDaemon(t, filepath.Join(dir, "state"))
	// A copy of this test binary that nobody may run.
	self, _ := os.Executable()
	bin := filepath.Join(dir, "client.test")
	b, err := os.ReadFile(self)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(bin, b, 0o755); err != nil {
		t.Fatal(err)
	}
	asNobody := func() (string, error) {
		cmd := exec.Command(bin, "-test.run=^TestHelperClient$")
		cmd.Env = []string{"TUBE_HELPER_SOCKET=" + d.Socket}
		cmd.SysProcAttr = &syscall.SysProcAttr{Credential: &syscall.Credential{Uid: 65534, Gid: 65534}}
		out, err := cmd.CombinedOutput()
		return string(out), err
	}
	out, err := asNobody()
	if err != nil || !strings.Contains(out, "kernel refused") {
		t.Fatalf("with mode 0600: %v\n%s", err, out)
	}
	os.Chmod(filepath.Join(dir, "state"), 0o755)
	os.Chmod(d.Socket, 0o666)
	out, err = asNobody()
	if err != nil || !strings.Contains(out, "status 403 "+tperr.PermissionDenied) {
		t.Fatalf("with the socket opened up: %v\n%s", err, out)
	}
	// The owner still gets in.
	if _, err := d.C.Status(context.Background()); err != nil {
		t.Fatal(err)
	}
}

// TestHelperClient is run by TestOtherUser as another user.
func TestHelperClient(t *testing.T) {
	socket := os.Getenv("TUBE_HELPER_SOCKET")
	if socket == "" {
		return // not run as the helper
	}
	c, err := net.Dial("unix", socket)
	if err != nil {
		if strings.Contains(err.Error(), "permission denied") {
			println("kernel refused:", err.Error())
			return
		}
		t.Fatal(err)
	}
	c.Close()
	hc := rawClient(socket)
	resp, err := hc.Get("http://tube/v1/status")
	if err != nil {
		t.Fatal(err)
	}
	var e api.Error
	json.NewDecoder(resp.Body).Decode(&e)
	println("status", resp.StatusCode, e.Code)
}
