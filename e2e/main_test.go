// Package e2e runs the tube binary as users and operators do: relays as
// processes that get killed and restarted, clusters, other users.
package e2e

import (
	"bufio"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/tubes-dev/tubes/internal/serve"
)

var tubeBin string

func TestMain(m *testing.M) {
	if os.Getenv("ACTIVATED_SERVICE") != "" {
		serve.ActivatedMain() // what tests register as a service started on demand
	}
	dir, err := os.MkdirTemp("", "tube-e2e-")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	os.Chmod(dir, 0o755) // other users run it too
	tubeBin = filepath.Join(dir, "tube")
	build := exec.Command("go", "build", "-o", tubeBin, "../cmd/tube")
	build.Stdout, build.Stderr = os.Stderr, os.Stderr
	if err := build.Run(); err != nil {
		fmt.Fprintln(os.Stderr, "build tube:", err)
		os.Exit(1)
	}
	code := m.Run()
	os.RemoveAll(dir)
	os.Exit(code)
}

// proc is a tube process whose output is collected line by line.
type proc struct {
	t     *testing.T
	cmd   *exec.Cmd
	mu    sync.Mutex
	lines []string
	more  chan struct{}
	done  chan struct{}
}

func start(t *testing.T, env []string, args ...string) *proc {
	t.Helper()
	return startCmd(t, exec.Command(tubeBin, args...), env)
}

// startCmd starts cmd (a tube command, perhaps wrapped) like start.
func startCmd(t *testing.T, cmd *exec.Cmd, env []string) *proc {
	t.Helper()
	cmd.Env = append(os.Environ(), env...)
	pr, pw := io.Pipe()
	cmd.Stdout, cmd.Stderr = pw, pw
	p := &proc{t: t, cmd: cmd, more: make(chan struct{}, 1), done: make(chan struct{})}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	go func() {
		sc := bufio.NewScanner(pr)
		for sc.Scan() {
			p.mu.Lock()
			p.lines = append(p.lines, sc.Text())
			p.mu.Unlock()
			select {
			case p.more <- struct{}{}:
			default:
			}
		}
	}()
	go func() {
		cmd.Wait()
		pw.Close()
		close(p.done)
	}()
	t.Cleanup(p.stop)
	return p
}

func (p *proc) output() string {
	p.mu.Lock()
	defer p.mu.Unlock()
	return strings.Join(p.lines, "\n")
}

// waitLine waits for a line starting with prefix and returns its rest.
func (p *proc) waitLine(prefix string) string {
	p.t.Helper()
	return p.waitFunc(prefix, func(l string) (string, bool) { return strings.CutPrefix(l, prefix) })
}

// waitContains waits for a line containing s and returns it.
func (p *proc) waitContains(s string) string {
	p.t.Helper()
	return p.waitFunc(s, func(l string) (string, bool) { return l, strings.Contains(l, s) })
}

func (p *proc) waitFunc(what string, match func(string) (string, bool)) string {
	p.t.Helper()
	prefix := what
	deadline := time.After(30 * time.Second)
	for {
		p.mu.Lock()
		for _, l := range p.lines {
			if rest, ok := match(l); ok {
				p.mu.Unlock()
				return rest
			}
		}
		p.mu.Unlock()
		select {
		case <-p.more:
		case <-p.done:
			p.t.Fatalf("%v exited before printing %q:\n%s", p.cmd.Args, prefix, p.output())
		case <-deadline:
			p.t.Fatalf("%v never printed %q:\n%s", p.cmd.Args, prefix, p.output())
		}
	}
}

func (p *proc) kill() {
	p.cmd.Process.Signal(syscall.SIGKILL)
	<-p.done
}

func (p *proc) stop() {
	select {
	case <-p.done:
		return
	default:
	}
	p.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-p.done:
	case <-time.After(10 * time.Second):
		p.kill()
	}
}

// run runs tube to completion and returns exit code and combined output.
func run(t *testing.T, env []string, args ...string) (int, string) {
	t.Helper()
	return runCmd(t, exec.Command(tubeBin, args...), env)
}

// runCmd runs cmd (a tube command, perhaps as another user) like run.
func runCmd(t *testing.T, cmd *exec.Cmd, env []string) (int, string) {
	t.Helper()
	cmd.Env = append(os.Environ(), env...)
	out, err := cmd.CombinedOutput()
	if ee, ok := err.(*exec.ExitError); ok {
		return ee.ExitCode(), string(out)
	}
	if err != nil {
		t.Fatal(err)
	}
	return 0, string(out)
}

func mustRun(t *testing.T, env []string, args ...string) string {
	t.Helper()
	code, out := run(t, env, args...)
	if code != 0 {
		t.Fatalf("tube %s: exit %d\n%s", strings.Join(args, " "), code, out)
	}
	return out
}

// freePort returns a loopback port that was free a moment ago.
func freePort(t *testing.T) int {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port
}

// daemon starts `tube daemon` (with extra flags, if any) and returns the
// environment that points client commands at it.
func daemon(t *testing.T, flags ...string) (*proc, []string) {
	dir := t.TempDir()
	sock := filepath.Join(dir, "daemon.sock")
	p := start(t, nil, append([]string{"daemon", "--state", dir, "--socket", sock}, flags...)...)
	p.waitLine("daemon: ")
	return p, []string{"TUBE_SOCKET=" + sock}
}
