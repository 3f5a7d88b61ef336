package tperr_test

import (
	"bytes"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"os"
	"strings"
	"syscall"
	"testing"

	"github.com/tubes-dev/tubes/tperr"
)

// The message is what people read; the cause stays out of it and goes to
// logs, also through an error that wraps the *Error.
func TestMessageAndLogs(t *testing.T) {
	cause := &net.OpError{Op: "dial", Net: "tcp", Addr: &net.TCPAddr{IP: net.IPv4(198, 18, 0, 7), Port: 4222}, Err: os.NewSyscallError("connect", syscall.ECONNREFUSED)}
	err := tperr.Wrap(cause, tperr.ConnectionFailed, "could not reach %s", "bob")
	if err.Error() != "could not reach bob" || tperr.Message(fmt.Errorf("op: %w", err)) != "could not reach bob" {
		t.Fatalf("Error() = %q: the message alone, with no cause", err.Error())
	}
	if !errors.Is(err, syscall.ECONNREFUSED) || !tperr.Has(err, tperr.ConnectionFailed) {
		t.Fatal("the cause and the name are not reachable through the chain")
	}
	if got := tperr.Reason(err); got != "connection refused" {
		t.Fatalf("Reason = %q, want the system's words alone", got)
	}
	var buf bytes.Buffer
	log := slog.New(slog.NewTextHandler(&buf, nil))
	log.Info("direct", "err", err)
	log.Info("wrapped", "err", tperr.Detail(fmt.Errorf("offer: %w", err)))
	for _, line := range strings.Split(strings.TrimSpace(buf.String()), "\n") {
		if !strings.Contains(line, "could not reach bob") || !strings.Contains(line, ": dial tcp 198.18.0.7:4222: connect: connection refused") {
			t.Errorf("the log lost the cause: %s", line)
		}
	}
	if d := tperr.Detail(errors.New("plain")); d != "plain" {
		t.Fatalf("Detail of a plain error = %q", d)
	}
	if tperr.Message(errors.New("plain")) != "" || tperr.Detail(nil) != "" {
		t.Fatal("Message of a plain error, or Detail of nil, is not empty")
	}
}
