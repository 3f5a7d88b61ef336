package e2e

import (
	"fmt"
	"io"
	"net"
	"net/http"
	"strconv"
	"strings"
	"testing"
	"time"
)

// metric is the value of a Prometheus metric (name with its labels, as
// printed) that a --http endpoint serves, and whether it is there.
func metric(t *testing.T, addr, name string) (float64, bool) {
	t.Helper()
	v, there, err := readMetric(addr, name)
	if err != nil {
		t.Fatal(err)
	}
	return v, there
}

// readMetric is metric without a test: the value, whether it is there,
// or why it could not be read.
func readMetric(addr, name string) (float64, bool, error) {
	resp, err := http.Get("http://" + addr + "/metrics")
	if err != nil {
		return 0, false, err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		return 0, false, err
	}
	for _, l := range strings.Split(string(b), "\n") {
		if v, ok := strings.CutPrefix(l, name+" "); ok {
			f, err := strconv.ParseFloat(v, 64)
			if err != nil {
				return 0, false, fmt.Errorf("%s: %s is %q", addr, name, v)
			}
			return f, true, nil
		}
	}
	return 0, false, nil
}

// waitMetric waits until a metric satisfies ok, and returns its value.
func waitMetric(t *testing.T, addr, name string, ok func(float64) bool) float64 {
	t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for {
		v, there := metric(t, addr, name)
		if there && ok(v) {
			return v
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s: %s is %v (present: %v), never what the test waits for", addr, name, v, there)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

func equal(n float64) func(float64) bool { return func(v float64) bool { return v == n } }

// dialFrom connects to addr from a source address of the loopback
// network (127.0.0.0/8 is all loopback on Linux), so that an attacker in
// a test is a source of its own.
func dialFrom(src, addr string) (net.Conn, error) {
	d := net.Dialer{LocalAddr: &net.TCPAddr{IP: net.ParseIP(src)}, Timeout: 5 * time.Second}
	return d.Dial("tcp", addr)
}
