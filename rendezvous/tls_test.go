package rendezvous_test

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"errors"
	"math/big"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/tubes-dev/tubes/connection"
	"github.com/tubes-dev/tubes/rendezvous"
	"github.com/tubes-dev/tubes/tperr"
)

// selfSigned writes a self-signed certificate for 127.0.0.1 (IP SAN only)
// and returns the cert and key paths and a pool trusting it.
func selfSigned(t *testing.T, notAfter time.Time) (string, string, *x509.CertPool) {
	k, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	tmpl := &x509.Certificate{
		SerialNumber:          big.NewInt(1),
		Subject:               pkix.Name{CommonName: "tube relay test"},
		NotBefore:             time.Now().Add(-time.Hour),
		NotAfter:              notAfter,
		IPAddresses:           []net.IP{net.ParseIP("127.0.0.1")},
		KeyUsage:              x509.KeyUsageDigitalSignature | x509.KeyUsageCertSign,
		ExtKeyUsage:           []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
		BasicConstraintsValid: true,
		IsCA:                  true,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &k.PublicKey, k)
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	certPath, keyPath := filepath.Join(dir, "cert.pem"), filepath.Join(dir, "key.pem")
	os.WriteFile(certPath, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), 0o600)
	kb, _ := x509.MarshalECPrivateKey(k)
	os.WriteFile(keyPath, pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: kb}), 0o600)
	pool := x509.NewCertPool()
	c, _ := x509.ParseCertificate(der)
	pool.AddCert(c)
	return certPath, keyPath, pool
}

func TestTLSListener(t *testing.T) {
	cert, key, pool := selfSigned(t, time.Now().Add(time.Hour))
	s := startRelay(t, rendezvous.Config{TLSCert: cert, TLSKey: key})
	if !strings.HasPrefix(s.URL(), "tls://127.0.0.1:") {
		t.Fatalf("URL %s", s.URL())
	}
	ctx := context.Background()
	k := newKey(t)
	cfg := rendezvous.DialConfig{Server: s.URL(), Account: "alice", Key: k, RootCAs: pool}
	if err := rendezvous.Register(ctx, cfg, ""); err != nil {
		t.Fatalf("register over TLS: %v", err)
	}
	c, err := rendezvous.Dial(ctx, cfg)
	if err != nil {
		t.Fatalf("dial over TLS: %v", err)
	}
	c.Close()

	// Without trusting the certificate: Cert_Self_Signed.
	var ce *rendezvous.ConnError
	_, err = rendezvous.Dial(ctx, rendezvous.DialConfig{Server: s.URL(), Account: "alice", Key: k})
	if !errors.As(err, &ce) || ce.Reason != connection.CertSelfSigned || ce.Name != tperr.CertSelfSigned {
		t.Fatalf("untrusted self-signed: %#v", err)
	}
	// Through a name the certificate does not cover: Cert_Hostname_Mismatch
	// with the spec's details.
	port := s.URL()[strings.LastIndex(s.URL(), ":")+1:]
	_, err = rendezvous.Dial(ctx, rendezvous.DialConfig{Server: "tls://localhost:" + port, Account: "alice", Key: k, RootCAs: pool})
	if !errors.As(err, &ce) || ce.Reason != connection.CertHostnameMismatch || ce.Details["expected-hostname"] != "localhost" {
		t.Fatalf("hostname mismatch: %#v", err)
	}
	// A plain client against a TLS relay does not get in.
	_, err = rendezvous.Dial(ctx, rendezvous.DialConfig{Server: "nats://127.0.0.1:" + port, Account: "alice", Key: k})
	// (nats upgrades to TLS when the server requires it, then the
	// certificate is not trusted.)
	if !errors.As(err, &ce) || ce.Reason != connection.CertSelfSigned {
		t.Fatalf("plain client against a TLS relay: %v", err)
	}
}

func TestExpiredCertificate(t *testing.T) {
	cert, key, pool := selfSigned(t, time.Now().Add(-time.Minute))
	s := startRelay(t, rendezvous.Config{TLSCert: cert, TLSKey: key})
	var ce *rendezvous.ConnError
	_, err := rendezvous.Dial(context.Background(), rendezvous.DialConfig{Server: s.URL(), Account: "alice", Key: newKey(t), RootCAs: pool})
	if !errors.As(err, &ce) || ce.Reason != connection.CertExpired || ce.Name != tperr.CertExpired {
		t.Fatalf("expired certificate: %#v", err)
	}
}
