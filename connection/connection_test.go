package connection

import (
	"encoding/json"
	"slices"
	"testing"

	"github.com/tubes-dev/tubes/tperr"
)

// The numbers and names are the Telepathy spec's (Connection_Status,
// Connection_Status_Reason) and must never change.
func TestStatusAndReasonNumbers(t *testing.T) {
	for _, tc := range []struct {
		s    Status
		n    uint32
		name string
	}{{Connected, 0, "Connected"}, {Connecting, 1, "Connecting"}, {Disconnected, 2, "Disconnected"}} {
		if uint32(tc.s) != tc.n || tc.s.String() != tc.name {
			t.Errorf("status %d = %q, want %d %q", tc.s, tc.s, tc.n, tc.name)
		}
	}
	reasons := []struct {
		n       uint32
		name    string
		errName string
	}{
		{0, "None_Specified", tperr.Disconnected},
		{1, "Requested", tperr.Cancelled},
		{2, "Network_Error", tperr.NetworkError},
		{3, "Authentication_Failed", tperr.AuthenticationFailed},
		{4, "Encryption_Error", tperr.EncryptionError},
		{5, "Name_In_Use", tperr.AlreadyConnected},
		{6, "Cert_Not_Provided", tperr.Prefix + "Cert.NotProvided"},
		{7, "Cert_Untrusted", tperr.Prefix + "Cert.Untrusted"},
		{8, "Cert_Expired", tperr.Prefix + "Cert.Expired"},
		{9, "Cert_Not_Activated", tperr.Prefix + "Cert.NotActivated"},
		{10, "Cert_Hostname_Mismatch", tperr.Prefix + "Cert.HostnameMismatch"},
		{11, "Cert_Fingerprint_Mismatch", tperr.Prefix + "Cert.FingerprintMismatch"},
		{12, "Cert_Self_Signed", tperr.Prefix + "Cert.SelfSigned"},
		{13, "Cert_Other_Error", tperr.Prefix + "Cert.Invalid"},
		{14, "Cert_Revoked", tperr.Prefix + "Cert.Revoked"},
		{15, "Cert_Insecure", tperr.Prefix + "Cert.Insecure"},
		{16, "Cert_Limit_Exceeded", tperr.Prefix + "Cert.LimitExceeded"},
	}
	for _, tc := range reasons {
		r := Reason(tc.n)
		if r.String() != tc.name || r.ErrorName() != tc.errName {
			t.Errorf("reason %d = %q/%q, want %q/%q", tc.n, r, r.ErrorName(), tc.name, tc.errName)
		}
		if p, ok := ParseReason(tc.name); !ok || p != r {
			t.Errorf("ParseReason(%q) = %d %v", tc.name, p, ok)
		}
	}
	// Unknown reasons are treated as None_Specified.
	if Reason(17).Normalize() != NoneSpecified || Reason(1000).String() != "None_Specified" {
		t.Error("unknown reasons must read as None_Specified")
	}
	b, _ := json.Marshal(map[string]any{"s": Connecting, "r": NameInUse})
	if string(b) != `{"r":"Name_In_Use","s":"Connecting"}` {
		t.Errorf("JSON = %s", b)
	}
}

func TestHandles(t *testing.T) {
	var h Handles
	h.Normalize = func(_ HandleType, id string) (string, error) {
		if id == "" {
			return "", tperr.New(tperr.InvalidArgument, "empty")
		}
		return id, nil
	}
	c, err := h.Request(HandleContact, []string{"bob", "carol", "bob"})
	if err != nil || !slices.Equal(c, []Handle{1, 2, 1}) {
		t.Fatalf("contacts = %v %v", c, err)
	}
	r, _ := h.Request(HandleRoom, []string{"bob"})
	if r[0] != 1 {
		t.Fatalf("room handles are numbered per type: %v", r)
	}
	// All or nothing.
	if _, err := h.Request(HandleContact, []string{"dave", ""}); !tperr.Has(err, tperr.InvalidHandle) {
		t.Fatalf("invalid id: %v", err)
	}
	if got := h.Lookup(HandleContact, "dave"); got != 3 {
		// dave was not created by the failed call, so it gets the next number now.
		t.Fatalf("dave = %d", got)
	}
	ids, err := h.Inspect(HandleContact, []Handle{2, 1})
	if err != nil || !slices.Equal(ids, []string{"carol", "bob"}) {
		t.Fatalf("inspect = %v %v", ids, err)
	}
	if _, err := h.Inspect(HandleRoom, []Handle{2}); !tperr.Has(err, tperr.InvalidHandle) {
		t.Fatalf("room 2: %v", err)
	}
}

func TestInterests(t *testing.T) {
	in := Interests{Known: func(s string) bool { return s != "unknown" }}
	if got := in.Add("c1", []string{"p", "p", "unknown"}); !slices.Equal(got, []string{"p"}) {
		t.Fatalf("started %v", got)
	}
	if got := in.Add("c2", []string{"p"}); got != nil {
		t.Fatalf("second client started %v", got)
	}
	if in.Count("c1", "p") != 2 || in.Count("c1", "unknown") != 0 {
		t.Fatal("counts")
	}
	if got := in.Remove("c1", []string{"p"}); got != nil || !in.Wanted("p") {
		t.Fatalf("one removal of two: %v", got)
	}
	if got := in.Remove("c3", []string{"p"}); got != nil {
		t.Fatalf("removal by a client that never added: %v", got)
	}
	if got := in.DropClient("c1"); got != nil || !in.Wanted("p") {
		t.Fatalf("c1 gone while c2 interested: %v", got)
	}
	if got := in.DropClient("c2"); !slices.Equal(got, []string{"p"}) || in.Wanted("p") {
		t.Fatalf("last client gone: %v", got)
	}
}
