package relay

import (
	"testing"

	"github.com/pion/stun/v4"
)

// FuzzGuard feeds arbitrary frames from a client to the guard (over TCP
// and UDP) and to what the pairing reads from pion's answers: no panic,
// and an answer, when there is one, is a STUN error response.
func FuzzGuard(f *testing.F) {
	s, err := Start(Config{Listen: "127.0.0.1:0", Users: map[string]string{"alice": "secret"}})
	if err != nil {
		f.Fatal(err)
	}
	f.Cleanup(func() { s.Close() })
	key := stun.NewLongTermIntegrity("alice", DefaultRealm, "secret")
	for _, setters := range [][]stun.Setter{
		{stun.NewType(stun.MethodAllocate, stun.ClassRequest), stun.RawAttribute{Type: stun.AttrRequestedTransport, Value: []byte{6, 0, 0, 0}}},
		{stun.NewType(stun.MethodAllocate, stun.ClassRequest), stun.RawAttribute{Type: stun.AttrRequestedTransport, Value: []byte{6, 0, 0, 0}}, stun.RawAttribute{Type: stun.AttrEvenPort, Value: []byte{0}}},
		{stun.NewType(stun.MethodConnect, stun.ClassRequest)},
		{stun.NewType(stun.MethodRefresh, stun.ClassRequest), stun.RawAttribute{Type: stun.AttrLifetime, Value: []byte{0, 0, 0x1c, 0x20}}},
		{stun.NewType(stun.MethodConnectionAttempt, stun.ClassIndication), stun.RawAttribute{Type: stun.AttrConnectionID, Value: []byte{0, 0, 0, 1}}},
	} {
		all := append([]stun.Setter{stun.TransactionID}, setters...)
		all = append(all, stun.NewUsername("alice"), stun.NewRealm(DefaultRealm), stun.NewNonce("n"), key, stun.Fingerprint)
		m, err := stun.Build(all...)
		if err != nil {
			f.Fatal(err)
		}
		f.Add(m.Raw, true)
	}
	f.Add([]byte{0x40, 0x00, 0x00, 0x01, 'x', 0, 0, 0}, false)
	f.Fuzz(func(t *testing.T, b []byte, tcp bool) {
		answer, req := s.check(b, "tcp:fuzz>fuzz", tcp)
		if answer != nil {
			m := &stun.Message{Raw: answer}
			if err := m.Decode(); err != nil || m.Type.Class != stun.ClassErrorResponse {
				t.Fatalf("the guard answered with %v (%v), not an error response", m.Type, err)
			}
			if req != nil {
				t.Fatal("the guard both answered and passed the request on")
			}
		}
		g := &guardConn{s: s, tuple: "tcp:fuzz>fuzz"}
		g.noteIncoming(b)
		g.noteOutgoing(b)
		g.bound()
	})
}
