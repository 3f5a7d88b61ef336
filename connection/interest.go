package connection

import (
	"slices"
	"sync"
)

// Interests counts client interest per client and per token, as in the
// spec's AddClientInterest/RemoveClientInterest. A token's total going from
// zero to non-zero or back is what the daemon acts on: it subscribes to
// the network notifications behind a token only while someone wants them.
type Interests struct {
	// Known reports whether a token is supported; unknown tokens are
	// ignored, not errors.
	Known func(token string) bool

	mu      sync.Mutex // guards the fields below
	clients map[string]map[string]int
	total   map[string]int
}

// Add increments client's count for each token and returns the tokens
// whose total went from zero to one.
func (in *Interests) Add(client string, tokens []string) (started []string) {
	in.mu.Lock()
	defer in.mu.Unlock()
	if in.clients == nil {
		in.clients = make(map[string]map[string]int)
		in.total = make(map[string]int)
	}
	for _, tok := range tokens {
		if in.Known != nil && !in.Known(tok) {
			continue
		}
		c := in.clients[client]
		if c == nil {
			c = make(map[string]int)
			in.clients[client] = c
		}
		c[tok]++
		in.total[tok]++
		if in.total[tok] == 1 {
			started = append(started, tok)
		}
	}
	return started
}

// Remove decrements client's count for each token it holds and returns the
// tokens whose total fell to zero. Removing an interest the client never
// added does nothing.
func (in *Interests) Remove(client string, tokens []string) (stopped []string) {
	in.mu.Lock()
	defer in.mu.Unlock()
	c := in.clients[client]
	for _, tok := range tokens {
		if c[tok] == 0 {
			continue
		}
		c[tok]--
		if c[tok] == 0 {
			delete(c, tok)
		}
		if in.dec(tok, 1) {
			stopped = append(stopped, tok)
		}
	}
	if len(c) == 0 {
		delete(in.clients, client)
	}
	return stopped
}

// DropClient sets all of client's counts to zero (it went away) and returns
// the tokens whose total fell to zero.
func (in *Interests) DropClient(client string) (stopped []string) {
	in.mu.Lock()
	defer in.mu.Unlock()
	for tok, n := range in.clients[client] {
		if in.dec(tok, n) {
			stopped = append(stopped, tok)
		}
	}
	delete(in.clients, client)
	slices.Sort(stopped)
	return stopped
}

func (in *Interests) dec(tok string, n int) (zero bool) {
	in.total[tok] -= n
	if in.total[tok] <= 0 {
		delete(in.total, tok)
		return true
	}
	return false
}

// Wanted reports whether any client holds an interest in token.
func (in *Interests) Wanted(token string) bool {
	in.mu.Lock()
	defer in.mu.Unlock()
	return in.total[token] > 0
}

// Tokens returns the tokens someone is interested in, sorted.
func (in *Interests) Tokens() []string {
	in.mu.Lock()
	defer in.mu.Unlock()
	out := make([]string, 0, len(in.total))
	for t := range in.total {
		out = append(out, t)
	}
	slices.Sort(out)
	return out
}

// Count returns client's count for token (for tests and status).
func (in *Interests) Count(client, token string) int {
	in.mu.Lock()
	defer in.mu.Unlock()
	return in.clients[client][token]
}
