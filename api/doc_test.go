package api_test

import (
	"os"
	"reflect"
	"strings"
	"testing"

	"github.com/tubes-dev/tubes/api"
	"github.com/tubes-dev/tubes/registry"
	"github.com/tubes-dev/tubes/rendezvous"
)

// Every field a --json listing prints is named in docs/json.md, the
// contract scripts rely on: a field added to these types without a word
// there fails here.
func TestJSONFieldsDocumented(t *testing.T) {
	doc, err := os.ReadFile("../docs/json.md")
	if err != nil {
		t.Fatal(err)
	}
	for _, v := range []any{
		api.Account{}, api.Contact{}, api.Room{}, api.Member{}, api.Invitation{}, api.SendResponse{}, rendezvous.User{},
		api.Tube{}, api.Connection{}, api.Whois{}, api.Status{},
		api.ServiceDescriptor{}, registry.Interface{}, api.Implementation{}, api.RemoteImplementation{},
		api.Publication{}, api.Grant{}, api.ActivationStatus{},
	} {
		typ := reflect.TypeOf(v)
		for _, name := range jsonNames(typ) {
			if !strings.Contains(string(doc), "`"+name+"`") {
				t.Errorf("docs/json.md does not name the field %q of %s", name, typ)
			}
		}
	}
}

// jsonNames are the JSON names of typ's fields, embedded structs' included.
func jsonNames(typ reflect.Type) []string {
	var names []string
	for f := range typ.Fields() {
		tag := f.Tag.Get("json")
		name, _, _ := strings.Cut(tag, ",")
		switch {
		case name == "-" || !f.IsExported():
		case f.Anonymous && name == "":
			names = append(names, jsonNames(f.Type)...)
		case name == "":
			names = append(names, f.Name)
		default:
			names = append(names, name)
		}
	}
	return names
}
