package daemon_test

import (
	"fmt"
	"net"
	"os"
	"testing"

	"github.com/tubes-dev/tubes/internal/node"
	"github.com/tubes-dev/tubes/internal/serve"
	"github.com/tubes-dev/tubes/internal/testenv"
	"github.com/tubes-dev/tubes/internal/tubetest"
)

// The test binary doubles as a socket-activated service (see
// activatedService) when ACTIVATED_SERVICE is set.
func TestMain(m *testing.M) {
	if os.Getenv("ACTIVATED_SERVICE") != "" {
		activatedService()
		return
	}
	os.Exit(m.Run())
}

// activatedService serves the socket it was given as fd 3 (LISTEN_FDS=1,
// LISTEN_PID its own), a listening one (shared instance) or its one
// connection (per-client): each connection gets back "activated PID
// SHA256 N" for what it sent up to its half-close.
func activatedService() {
	err := serve.Activated(func(c net.Conn) {
		fmt.Fprintf(c, "activated %d ", os.Getpid())
		serve.HashBack(c)
	})
	if err != nil {
		fmt.Fprintln(os.Stderr, "activated service:", err)
		os.Exit(3)
	}
}

// testenvRoot requires root (another uid runs a client).
func testenvRoot(t *testing.T) { testenv.MustHaveRoot(t) }

// nodeConfig is a daemon configuration logging to log.
func nodeConfig(log *tubetest.LogBuffer) node.DaemonConfig {
	return node.DaemonConfig{Logger: log.Logger()}
}
