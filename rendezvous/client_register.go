package rendezvous

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"net"
	"strings"
	"syscall"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/tubes-dev/tubes/connection"
	"github.com/tubes-dev/tubes/tperr"
)

// Registration and connection errors (client side): registering as a
// guest, and telling why a login failed.

// Register creates the account cfg.Account with cfg.Key on the relay.
// Registering a name that is already ours succeeds. invite is needed on
// relays with closed registration.
func Register(ctx context.Context, cfg DialConfig, invite string) error {
	return asGuest(ctx, cfg, func(nc *nats.Conn, nkey string) error {
		err := request(ctx, nc, guestSubject(nkey, opRegister), registerReq{Name: cfg.Account, Invite: invite}, nil)
		if err == nil {
			return nil
		}
		ce := &ConnError{Reason: connection.AuthenticationFailed, Name: tperr.Name(err), Message: err.Error(),
			Details: map[string]any{"server-message": err.Error()}, Err: err}
		switch ce.Name {
		case tperr.RegistrationExists:
			ce.Reason = connection.NameInUse
		case tperr.InvalidArgument, tperr.PermissionDenied, tperr.AuthenticationFailed:
		case tperr.ServiceBusy: // over a registration limit: try again later
			ce.Reason = connection.NetworkError
		default:
			ce.Reason, ce.Name = connection.NetworkError, tperr.NetworkError
		}
		return ce
	})
}

func asGuest(ctx context.Context, cfg DialConfig, f func(nc *nats.Conn, nkey string) error) error {
	kp, err := cfg.Key.NKey()
	if err != nil {
		return err
	}
	nkey, _ := kp.PublicKey()
	dialer := &recordingDialer{}
	opts, err := cfg.options("", guestReplyInbox(nkey), dialer)
	if err != nil {
		return err
	}
	nc, err := connectCtx(ctx, serverURL(cfg.Server), opts, dialer)
	if err != nil {
		return classify(dialer.cause(err), cfg.Server)
	}
	defer nc.Close()
	return f(nc, nkey)
}

// diagnoseAuth asks the relay, as a guest, why our login was refused, so
// the user reads "no account named alice" rather than a bare refusal, and
// so the daemon tells a refusal from a relay too busy to check the login.
func diagnoseAuth(ctx context.Context, cfg DialConfig, ce *ConnError) *ConnError {
	err := asGuest(ctx, cfg, func(nc *nats.Conn, nkey string) error {
		var w whoisResp
		if err := request(ctx, nc, guestSubject(nkey, opWhois), nameReq{Name: cfg.Account}, &w); err != nil {
			return err
		}
		switch {
		case !w.Exists:
			ce.Message = fmt.Sprintf("there is no account named %s on the relay %s; register it with --register", cfg.Account, cfg.Server)
			ce.Refused = true
		case !w.KeyMatches:
			ce.Message = fmt.Sprintf("the relay %s refused the key of %s: the account is registered with another key", cfg.Server, cfg.Account)
			ce.Refused = true
		case w.ShutOut:
			ce.Message = fmt.Sprintf("the relay %s shut %s out for a while: it kept sending past the relay's limits", cfg.Server, cfg.Account)
		default:
			ce.Message = fmt.Sprintf("the relay %s did not let %s in although it knows its key: it may be too busy to check logins", cfg.Server, cfg.Account)
		}
		return nil
	})
	if err != nil {
		ce.Message = fmt.Sprintf("the relay %s did not let %s in and did not answer why: it may be too busy to check logins", cfg.Server, cfg.Account)
	}
	ce.Details["server-message"] = ce.Message
	return ce
}

// classify turns a connection failure into a Telepathy reason, error name
// and details.
func classify(err error, server string) *ConnError {
	ce := &ConnError{Err: err, Details: map[string]any{"debug-message": err.Error()}}
	var (
		hostErr x509.HostnameError
		authErr x509.UnknownAuthorityError
		certErr x509.CertificateInvalidError
		recErr  tls.RecordHeaderError
		opErr   *net.OpError
	)
	msg := err.Error()
	switch {
	case errors.Is(err, nats.ErrAuthorization) || strings.Contains(strings.ToLower(msg), "authorization violation"):
		ce.Reason, ce.Name = connection.AuthenticationFailed, tperr.AuthenticationFailed
		ce.Message = fmt.Sprintf("the relay %s refused the login", server)
		ce.Details["server-message"] = "Authorization Violation"
	case errors.As(err, &hostErr):
		ce.Reason, ce.Name = connection.CertHostnameMismatch, tperr.CertHostnameMismatch
		ce.Message = fmt.Sprintf("the relay's certificate is not valid for %s", hostErr.Host)
		ce.Details["expected-hostname"] = hostErr.Host
		if hostErr.Certificate != nil {
			names := hostErr.Certificate.DNSNames
			if len(names) == 0 {
				names = []string{hostErr.Certificate.Subject.CommonName}
			}
			ce.Details["certificate-hostname"] = names[0]
		}
	case errors.As(err, &authErr):
		ce.Reason, ce.Name = connection.CertUntrusted, tperr.CertUntrusted
		ce.Message = "the relay's certificate is signed by an authority this account does not trust (pass its CA with --ca)"
		if c := authErr.Cert; c != nil && c.Issuer.String() == c.Subject.String() {
			ce.Reason, ce.Name = connection.CertSelfSigned, tperr.CertSelfSigned
			ce.Message = "the relay's certificate is self-signed and not trusted (pass it with --ca)"
		}
	case errors.As(err, &certErr):
		ce.Reason, ce.Name = connection.CertOtherError, tperr.CertInvalid
		ce.Message = "the relay's certificate is not valid (the debug-message detail says why)"
		if certErr.Reason == x509.Expired {
			ce.Reason, ce.Name = connection.CertExpired, tperr.CertExpired
			ce.Message = "the relay's certificate has expired or is not valid yet"
			if certErr.Cert != nil && time.Now().Before(certErr.Cert.NotBefore) {
				ce.Reason, ce.Name = connection.CertNotActivated, tperr.CertNotActivated
			}
		}
	case errors.As(err, &recErr) || strings.Contains(msg, "tls:"):
		ce.Reason, ce.Name = connection.EncryptionError, tperr.EncryptionError
		ce.Message = "the TLS handshake with the relay failed"
	case strings.Contains(msg, "secure connection not available") || strings.Contains(msg, "secure connection required"):
		ce.Reason, ce.Name = connection.EncryptionError, tperr.EncryptionNotAvailable
		ce.Message = "the relay and this account disagree about TLS"
	case errors.Is(err, syscall.ECONNREFUSED):
		ce.Reason, ce.Name = connection.NetworkError, tperr.ConnectionRefused
		ce.Message = fmt.Sprintf("the relay %s refused the connection (is it running?)", server)
	case errors.As(err, &opErr) || errors.Is(err, nats.ErrNoServers) || errors.Is(err, context.DeadlineExceeded) || errors.Is(err, nats.ErrTimeout):
		ce.Reason, ce.Name = connection.NetworkError, tperr.ConnectionFailed
		ce.Message = fmt.Sprintf("could not reach the relay %s", server)
	default:
		ce.Reason, ce.Name = connection.NetworkError, tperr.NetworkError
		ce.Message = fmt.Sprintf("could not connect to the relay %s", server)
	}
	return ce
}
