package identity

import "testing"

// FuzzParse: key files and public keys given by users.
func FuzzParse(f *testing.F) {
	k, _ := FromSeed(make([]byte, 32))
	f.Add([]byte("-----BEGIN PRIVATE KEY-----\nMC4CAQAwBQYDK2VwBCIEIAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA\n-----END PRIVATE KEY-----\n"), k.Public().String())
	f.Add([]byte("-----BEGIN RSA PRIVATE KEY-----\nAAAA\n-----END RSA PRIVATE KEY-----\n"), "UAAAA")
	f.Add([]byte("garbage"), "SUAAAA")
	f.Fuzz(func(t *testing.T, pem []byte, pub string) {
		if k, err := Parse(pem); err == nil && len(k.Private()) != 64 {
			t.Fatal("parsed a key of the wrong size")
		}
		if p, err := ParsePublicKey(pub); err == nil && len(p) != 32 {
			t.Fatal("parsed a public key of the wrong size")
		}
	})
}
