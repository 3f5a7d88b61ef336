package daemon_test

import (
	"os"
	"testing"

	"github.com/tubes-dev/tubes/internal/node"
	"github.com/tubes-dev/tubes/internal/serve"
	"github.com/tubes-dev/tubes/internal/testenv"
	"github.com/tubes-dev/tubes/internal/tubetest"
)

// The test binary doubles as a socket-activated service
// (serve.ActivatedMain) when ACTIVATED_SERVICE is set.
func TestMain(m *testing.M) {
	if os.Getenv("ACTIVATED_SERVICE") != "" {
		serve.ActivatedMain()
	}
	os.Exit(m.Run())
}

// testenvRoot requires root (another uid runs a client).
func testenvRoot(t *testing.T) { testenv.MustHaveRoot(t) }

// nodeConfig is a daemon configuration logging to log.
func nodeConfig(log *tubetest.LogBuffer) node.DaemonConfig {
	return node.DaemonConfig{Logger: log.Logger()}
}
