package localclient

import (
	"bufio"
	"strings"
	"testing"
)

// FuzzReadEvent: the SSE stream from the daemon.
func FuzzReadEvent(f *testing.F) {
	f.Add("event: Hello\ndata: {\"seq\":0,\"type\":\"Hello\",\"client_id\":\"x\"}\n\n")
	f.Add(": keepalive\n\nevent: StatusChanged\ndata: {\"type\":\"StatusChanged\",\"status\":\"Connected\",\"status_code\":0}\n\n")
	f.Add("event: Overflow\ndata: {\"message\":\"behind\"}\n\n")
	f.Add("data: {\"type\":\r\ndata: \"x\"}\r\n\r\n")
	f.Add("data: not json\n\n")
	f.Fuzz(func(t *testing.T, s string) {
		br := bufio.NewReader(strings.NewReader(s))
		for range 100 {
			if _, err := readEvent(br); err != nil {
				return
			}
		}
	})
}
