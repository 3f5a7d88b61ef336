package localapi

import (
	"net/http/httptest"
	"strings"
	"testing"

	"github.com/tubes-dev/tubes/api"
	"github.com/tubes-dev/tubes/tperr"
)

// FuzzDecode: request bodies of the local API. Anything malformed is a
// 400-class InvalidArgument error, never a panic.
func FuzzDecode(f *testing.F) {
	f.Add(`{"name":"alice","server":"127.0.0.1:4222","register":true}`)
	f.Add(`{"name":5}`)
	f.Add(`{"type":1,"identifiers":["bob"]}`)
	f.Add(`{"tokens":["im.telepathy1.Connection.Interface.Presence"]}`)
	f.Add(`{"to":"bob","kind":"x","body":"!!"}`)
	f.Add(`{} {}`)
	f.Add(``)
	f.Fuzz(func(t *testing.T, body string) {
		for _, v := range []any{&api.AddAccountRequest{}, &api.HandlesRequest{}, &api.InspectRequest{}, &api.InterestRequest{}, &api.SendRequest{}} {
			r := httptest.NewRequest("POST", "/v1/x", strings.NewReader(body))
			err := decode(r, v)
			if err != nil && !tperr.Has(err, tperr.InvalidArgument) {
				t.Fatalf("%T: %v is not InvalidArgument", v, err)
			}
			if err != nil && httpStatus(tperr.Name(err)) != 400 {
				t.Fatalf("status %d", httpStatus(tperr.Name(err)))
			}
		}
	})
}
