package identity

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func TestSaveLoadAndNKey(t *testing.T) {
	k, err := Generate()
	if err != nil {
		t.Fatal(err)
	}
	path := filepath.Join(t.TempDir(), "k.key")
	if err := k.Save(path); err != nil {
		t.Fatal(err)
	}
	if st, _ := os.Stat(path); st.Mode().Perm() != 0o600 {
		t.Fatalf("key file mode %v", st.Mode().Perm())
	}
	k2, err := Load(path)
	if err != nil || !k2.Public().Equal(k.Public()) {
		t.Fatalf("load: %v", err)
	}
	// The NATS nkey is the same ed25519 key.
	kp, _ := k.NKey()
	pub, _ := kp.PublicKey()
	if pub != k.Public().String() || !strings.HasPrefix(pub, "U") {
		t.Fatalf("nkey %s vs %s", pub, k.Public())
	}
	sig, _ := kp.Sign([]byte("nonce"))
	if !k.Public().Verify([]byte("nonce"), sig) {
		t.Fatal("nkey signature does not verify with the account key")
	}
	p, err := ParsePublicKey(pub)
	if err != nil || !p.Equal(k.Public()) {
		t.Fatalf("parse: %v", err)
	}
	// Others may not read a key.
	os.Chmod(path, 0o644)
	if _, err := Load(path); err == nil || !strings.Contains(err.Error(), "readable by others") {
		t.Fatalf("loose mode accepted: %v", err)
	}
}

func TestParseRejects(t *testing.T) {
	for _, in := range []string{"", "garbage", "-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n"} {
		if _, err := Parse([]byte(in)); err == nil {
			t.Errorf("Parse(%q) accepted", in)
		}
	}
	if _, err := ParsePublicKey("ABCDEF"); err == nil {
		t.Error("bad public key accepted")
	}
}

func TestSeal(t *testing.T) {
	bob, _ := Generate()
	eve, _ := Generate()
	ct, err := Seal(bob.Public(), []byte("tube t1"), []byte("password=hunter2"))
	if err != nil {
		t.Fatal(err)
	}
	if strings.Contains(string(ct), "hunter2") {
		t.Fatal("plaintext visible in the sealed message")
	}
	pt, err := bob.Open([]byte("tube t1"), ct)
	if err != nil || string(pt) != "password=hunter2" {
		t.Fatalf("open: %q %v", pt, err)
	}
	if _, err := eve.Open([]byte("tube t1"), ct); err == nil {
		t.Fatal("another key opened it")
	}
	if _, err := bob.Open([]byte("tube t2"), ct); err == nil {
		t.Fatal("opened with other info (replay into another tube)")
	}
	// The X25519 public key derived from the private key matches the
	// conversion of the ed25519 public key.
	xk, _ := bob.X25519()
	xp, _ := bob.Public().X25519()
	if !xk.PublicKey().Equal(xp) {
		t.Fatal("X25519 forms of the key pair disagree")
	}
}

// Safety numbers: 40 digits in groups of five, stable for a key, different
// for another, and matched with or without spaces; SHA256: fingerprints
// match too; anything else does not.
func TestSafetyNumber(t *testing.T) {
	a, _ := FromSeed(make([]byte, 32))
	seed := make([]byte, 32)
	seed[0] = 1
	b, _ := FromSeed(seed)
	n := a.Public().SafetyNumber()
	if len(n) != 47 || strings.Count(n, " ") != 7 || n != a.Public().SafetyNumber() {
		t.Fatalf("safety number %q: want 8 groups of 5 digits, stable", n)
	}
	if n == b.Public().SafetyNumber() {
		t.Fatal("two keys share a safety number")
	}
	for _, fp := range []string{n, strings.ReplaceAll(n, " ", ""), "  " + n + "\n", a.Public().Fingerprint()} {
		if !a.Public().MatchesFingerprint(fp) {
			t.Errorf("%q does not match its own key", fp)
		}
	}
	for _, fp := range []string{b.Public().SafetyNumber(), b.Public().Fingerprint(), n[:40], "", "SHA256:", n + "1"} {
		if a.Public().MatchesFingerprint(fp) {
			t.Errorf("%q matches a key it does not name", fp)
		}
	}
}
