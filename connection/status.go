// Package connection is the Telepathy Connection model of the connection
// manager: statuses and their reasons with the spec's numbers and error
// names, handles, and client interest counting. It holds no network code;
// the daemon drives it and the local API exposes it.
package connection

import (
	"fmt"

	"github.com/tubes-dev/tubes/tperr"
)

// Status is Connection_Status.
type Status uint32

// Connection_Status values, numbered as in the Telepathy spec.
const (
	Connected    Status = 0
	Connecting   Status = 1
	Disconnected Status = 2
)

var statusNames = [...]string{"Connected", "Connecting", "Disconnected"}

func (s Status) String() string {
	if int(s) < len(statusNames) {
		return statusNames[s]
	}
	return fmt.Sprintf("Status(%d)", uint32(s))
}

// Reason is Connection_Status_Reason.
type Reason uint32

// Connection_Status_Reason values, numbered as in the Telepathy spec.
const (
	NoneSpecified           Reason = 0
	Requested               Reason = 1
	NetworkError            Reason = 2
	AuthenticationFailed    Reason = 3
	EncryptionError         Reason = 4
	NameInUse               Reason = 5
	CertNotProvided         Reason = 6
	CertUntrusted           Reason = 7
	CertExpired             Reason = 8
	CertNotActivated        Reason = 9
	CertHostnameMismatch    Reason = 10
	CertFingerprintMismatch Reason = 11
	CertSelfSigned          Reason = 12
	CertOtherError          Reason = 13
	CertRevoked             Reason = 14
	CertInsecure            Reason = 15
	CertLimitExceeded       Reason = 16
)

var reasonNames = [...]string{
	"None_Specified", "Requested", "Network_Error", "Authentication_Failed",
	"Encryption_Error", "Name_In_Use", "Cert_Not_Provided", "Cert_Untrusted",
	"Cert_Expired", "Cert_Not_Activated", "Cert_Hostname_Mismatch",
	"Cert_Fingerprint_Mismatch", "Cert_Self_Signed", "Cert_Other_Error",
	"Cert_Revoked", "Cert_Insecure", "Cert_Limit_Exceeded",
}

// Normalize maps unknown reasons to NoneSpecified, as the spec asks
// ("Unknown status reasons SHOULD be treated like this reason").
func (r Reason) Normalize() Reason {
	if int(r) < len(reasonNames) {
		return r
	}
	return NoneSpecified
}

func (r Reason) String() string { return reasonNames[r.Normalize()] }

// ParseReason returns the reason with the spec name s.
func ParseReason(s string) (Reason, bool) {
	for i, n := range reasonNames {
		if n == s {
			return Reason(i), true
		}
	}
	return 0, false
}

// ParseStatus returns the status with the spec name s.
func ParseStatus(s string) (Status, bool) {
	for i, n := range statusNames {
		if n == s {
			return Status(i), true
		}
	}
	return 0, false
}

// ErrorName is the D-Bus-style error equivalent to being disconnected for
// reason r. Reasons with several possible errors (Network_Error,
// Name_In_Use, Encryption_Error) get their most general one here; the
// daemon picks the specific one (ConnectionRefused, RegistrationExists…)
// where it knows more.
func (r Reason) ErrorName() string {
	switch r.Normalize() {
	case Requested:
		return tperr.Cancelled
	case NetworkError:
		return tperr.NetworkError
	case AuthenticationFailed:
		return tperr.AuthenticationFailed
	case EncryptionError:
		return tperr.EncryptionError
	case NameInUse:
		return tperr.AlreadyConnected
	case CertNotProvided:
		return tperr.CertNotProvided
	case CertUntrusted:
		return tperr.CertUntrusted
	case CertExpired:
		return tperr.CertExpired
	case CertNotActivated:
		return tperr.CertNotActivated
	case CertHostnameMismatch:
		return tperr.CertHostnameMismatch
	case CertFingerprintMismatch:
		return tperr.CertFingerprintMismatch
	case CertSelfSigned:
		return tperr.CertSelfSigned
	case CertOtherError:
		return tperr.CertInvalid
	case CertRevoked:
		return tperr.CertRevoked
	case CertInsecure:
		return tperr.CertInsecure
	case CertLimitExceeded:
		return tperr.CertLimitExceeded
	default:
		return tperr.Disconnected
	}
}

// MarshalText makes statuses read as their spec names in JSON map keys
// and text encodings; numbers travel in separate *_code fields.
func (s Status) MarshalText() ([]byte, error) { return []byte(s.String()), nil }

// UnmarshalText accepts a spec name.
func (s *Status) UnmarshalText(b []byte) error {
	v, ok := ParseStatus(string(b))
	if !ok {
		return fmt.Errorf("connection: unknown status %q", b)
	}
	*s = v
	return nil
}

// MarshalText encodes the spec name.
func (r Reason) MarshalText() ([]byte, error) { return []byte(r.String()), nil }

// UnmarshalText accepts a spec name; unknown names become None_Specified.
func (r *Reason) UnmarshalText(b []byte) error {
	v, _ := ParseReason(string(b))
	*r = v
	return nil
}
