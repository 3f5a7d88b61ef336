// Package tperr carries Telepathy D-Bus-style error names through Tubes.
//
// Every error a user or a local-API client can see has a Name from the
// im.telepathy1.Error namespace (for example im.telepathy1.Error.InvalidHandle)
// and one sentence of Message meant for people.
//
// # Policy
//
//   - Error() returns the Message, and nothing else: the text of an
//     *Error is what people read (the CLI's stderr, the local API's
//     {code, message}, a refusal sent to a peer). The cause, Err, is
//     reached through Unwrap (errors.Is, errors.As).
//   - A Message carries no cause: never the text of an error (%v of err)
//     that came from inside, which holds addresses, paths, library words
//     and a peer's or the relay's internals. Two kinds of cause may be
//     told, and only to the local user (never in a message that can reach
//     a peer or the relay): text already written for people (another
//     *Error's Message, see [Message]; a registry or descriptor error; a
//     peer's message, clipped, quoted as theirs), and the operating
//     system's short answer about a file, socket or address the user
//     named ([Reason]: "permission denied", not the Go error chain).
//   - Logs get the cause: an *Error is a [slog.LogValuer] whose value is
//     its message, its name and its whole cause chain ([Detail]). Log an
//     error as "err", err; for an error that only wraps an *Error, log
//     tperr.Detail(err).
package tperr

import (
	"errors"
	"fmt"
	"log/slog"
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

// Error returns the message for people (the policy above).
func (e *Error) Error() string { return e.Message }

// LogValue gives a log the error's message, name and cause.
func (e *Error) LogValue() slog.Value {
	return slog.StringValue(Detail(e))
}

var _ slog.LogValuer = (*Error)(nil)

// Detail returns err's text with every cause that an *Error in its chain
// keeps from people: "message (Name): cause: cause…". It is for logs only.
func Detail(err error) string {
	if err == nil {
		return ""
	}
	var b strings.Builder
	b.WriteString(err.Error())
	for e := err; e != nil; e = errors.Unwrap(e) {
		te, ok := e.(*Error)
		if !ok {
			continue
		}
		if e == err && te.Name != "" {
			b.WriteString(" (" + Short(te.Name) + ")")
		}
		if te.Err != nil {
			b.WriteString(": ")
			b.WriteString(Detail(te.Err))
			break
		}
	}
	return b.String()
}

// Message returns the sentence for people that err carries: the Message
// of the first *Error in its chain, or "" if it has none.
func Message(err error) string {
	var e *Error
	if errors.As(err, &e) {
		return e.Message
	}
	return ""
}

// Because returns ": " and the sentence for people that err carries
// ([Message]), or "" when it carries none: how a message tells a cause
// that is already written for people, and only such a cause.
func Because(err error) string {
	if m := Message(err); m != "" {
		return ": " + m
	}
	return ""
}

// Reason returns the innermost of err's causes, as the operating system
// words it ("permission denied", "address already in use"): what a
// message may tell the local user about a file, socket or address they
// named, without the Go error chain around it.
func Reason(err error) string {
	for e := errors.Unwrap(err); e != nil; e = errors.Unwrap(e) {
		err = e
	}
	return err.Error()
}

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
