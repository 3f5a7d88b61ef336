// Package tperr carries Telepathy D-Bus-style error names through Tubes.
//
// Every error a user or a local-API client can see has a Name from the
// im.telepathy1.Error namespace (for example im.telepathy1.Error.InvalidHandle)
// and one sentence of Message meant for people. Internal detail (addresses,
// wrapped causes) stays in the wrapped error, which is logged, not shown.
package tperr

import (
	"errors"
	"fmt"
	"strings"
)

// Prefix is the namespace of every Telepathy error name.
const Prefix = "im.telepathy1.Error."

// Error names used by Tubes. They are the Telepathy spec's names, so a
// Telepathy user finds them where they expect.
const (
	NetworkError           = Prefix + "NetworkError"
	ConnectionRefused      = Prefix + "ConnectionRefused"
	ConnectionFailed       = Prefix + "ConnectionFailed"
	ConnectionLost         = Prefix + "ConnectionLost"
	AuthenticationFailed   = Prefix + "AuthenticationFailed"
	EncryptionNotAvailable = Prefix + "EncryptionNotAvailable"
	EncryptionError        = Prefix + "EncryptionError"
	RegistrationExists     = Prefix + "RegistrationExists"
	AlreadyConnected       = Prefix + "AlreadyConnected"
	ConnectionReplaced     = Prefix + "ConnectionReplaced"
	Cancelled              = Prefix + "Cancelled"
	Disconnected           = Prefix + "Disconnected"
	InvalidArgument        = Prefix + "InvalidArgument"
	InvalidHandle          = Prefix + "InvalidHandle"
	NotImplemented         = Prefix + "NotImplemented"
	NotAvailable           = Prefix + "NotAvailable"
	NotYours               = Prefix + "NotYours"
	PermissionDenied       = Prefix + "PermissionDenied"
	Offline                = Prefix + "Offline"
	DoesNotExist           = Prefix + "DoesNotExist"
	Timeout                = Prefix + "Timeout"
	ServiceBusy            = Prefix + "ServiceBusy"
	NotCapable             = Prefix + "NotCapable"
	NotFound               = Prefix + "NotFound" // not in the Telepathy spec; used for unknown local objects

	CertNotProvided         = Prefix + "Cert.NotProvided"
	CertUntrusted           = Prefix + "Cert.Untrusted"
	CertExpired             = Prefix + "Cert.Expired"
	CertNotActivated        = Prefix + "Cert.NotActivated"
	CertHostnameMismatch    = Prefix + "Cert.HostnameMismatch"
	CertFingerprintMismatch = Prefix + "Cert.FingerprintMismatch"
	CertSelfSigned          = Prefix + "Cert.SelfSigned"
	CertInvalid             = Prefix + "Cert.Invalid"
	CertRevoked             = Prefix + "Cert.Revoked"
	CertInsecure            = Prefix + "Cert.Insecure"
	CertLimitExceeded       = Prefix + "Cert.LimitExceeded"
)

// Error is an error with a Telepathy name and a message for people.
type Error struct {
	Name    string // full name, e.g. im.telepathy1.Error.InvalidHandle
	Message string // one sentence for users
	Err     error  // optional internal cause, never shown to users
}

// New returns an *Error with the given name and a formatted message.
func New(name, format string, args ...any) *Error {
	return &Error{Name: name, Message: fmt.Sprintf(format, args...)}
}

// Wrap returns an *Error with the given name and message that wraps cause.
func Wrap(cause error, name, format string, args ...any) *Error {
	return &Error{Name: name, Message: fmt.Sprintf(format, args...), Err: cause}
}

func (e *Error) Error() string { return e.Message }

func (e *Error) Unwrap() error { return e.Err }

// Is reports whether target is an *Error with the same name, so that
// errors.Is(err, tperr.New(tperr.InvalidHandle, "")) works.
func (e *Error) Is(target error) bool {
	t, ok := target.(*Error)
	return ok && t.Name == e.Name
}

// Name returns the Telepathy name carried by err, or "" if it carries none.
func Name(err error) string {
	var e *Error
	if errors.As(err, &e) {
		return e.Name
	}
	return ""
}

// Has reports whether err carries the Telepathy error name.
func Has(err error, name string) bool { return Name(err) == name }

// Short returns the name without the im.telepathy1.Error. prefix.
func Short(name string) string { return strings.TrimPrefix(name, Prefix) }

// IsName reports whether name looks like a Telepathy error name (one
// that came from a peer, say): the prefix, then up to 64 letters, digits
// and dots.
func IsName(name string) bool {
	rest, ok := strings.CutPrefix(name, Prefix)
	if !ok || rest == "" || len(rest) > 64 {
		return false
	}
	for _, c := range rest {
		if !(c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '.' || c == '_') {
			return false
		}
	}
	return true
}

// NameOr returns the Telepathy name carried by err, or def.
func NameOr(err error, def string) string {
	if n := Name(err); n != "" {
		return n
	}
	return def
}
