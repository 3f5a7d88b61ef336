package relay

import (
	"crypto/hmac"
	"crypto/sha1"
	"encoding/base64"
	"fmt"
	"strconv"
	"strings"
	"time"
)

// RESTCredentials returns a short-lived TURN credential for user under the
// TURN REST scheme that coturn's use-auth-secret/static-auth-secret also
// accepts: the username is "<expiry unix seconds>:<user>" and the password
// base64(HMAC-SHA1(secret, username)).
func RESTCredentials(secret, user string, ttl time.Duration, now time.Time) (username, password string) {
	username = strconv.FormatInt(now.Add(ttl).Unix(), 10) + ":" + user
	return username, restPassword(secret, username)
}

func restPassword(secret, username string) string {
	mac := hmac.New(sha1.New, []byte(secret))
	mac.Write([]byte(username))
	return base64.StdEncoding.EncodeToString(mac.Sum(nil))
}

// parseREST splits a REST username into its expiry and user ("<expiry>"
// alone names no user; coturn accepts that form too).
func parseREST(username string) (expiry time.Time, user string, ok bool) {
	ts, user, _ := strings.Cut(username, ":")
	n, err := strconv.ParseInt(ts, 10, 64)
	if err != nil || n <= 0 {
		return time.Time{}, "", false
	}
	if user == "" {
		user = username
	}
	return time.Unix(n, 0), user, true
}

// ParseUser parses a USER:PASSWORD static credential.
func ParseUser(s string) (user, password string, err error) {
	user, password, ok := strings.Cut(s, ":")
	if !ok || user == "" || password == "" {
		return "", "", fmt.Errorf("relay: a TURN user is USER:PASSWORD, got %q", redact(s))
	}
	return user, password, nil
}

// redact shows the user part of USER:PASSWORD only.
func redact(s string) string {
	if u, _, ok := strings.Cut(s, ":"); ok {
		return u + ":…"
	}
	return "…"
}

// authenticator resolves a TURN username to the user it stands for and
// its password.
type authenticator struct {
	secret string
	users  map[string]string
	now    func() time.Time
}

// lookup returns the user id (quotas count per user) and the password for
// username, or why it is refused.
func (a *authenticator) lookup(username string) (user, password string, err error) {
	if p, ok := a.users[username]; ok {
		return username, p, nil
	}
	if a.secret != "" {
		if exp, u, ok := parseREST(username); ok {
			if !exp.After(a.now()) {
				return "", "", fmt.Errorf("credential for %s expired at %s", u, exp.UTC().Format(time.RFC3339))
			}
			return u, restPassword(a.secret, username), nil
		}
	}
	return "", "", fmt.Errorf("unknown user")
}
