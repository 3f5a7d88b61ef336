package tube

import (
	"fmt"
	"testing"

	"github.com/tubes-dev/tubes/api"
	"github.com/tubes-dev/tubes/identity"
	"github.com/tubes-dev/tubes/tperr"
)

// An account holds at most MaxExports exports: one more is refused,
// replacing one is not, and once one goes another may come.
func TestExportsBounded(t *testing.T) {
	key, _ := identity.Generate()
	m, err := New(Config{Account: "alice", Key: key, Signaller: &sentRaw{}, Emit: func(api.Event) {}})
	if err != nil {
		t.Fatal(err)
	}
	defer m.Close()
	export := func(i int) error {
		_, err := m.Export("", api.Export{Service: fmt.Sprint("svc", i), TCP: "127.0.0.1:7"})
		return err
	}
	for i := range MaxExports {
		if err := export(i); err != nil {
			t.Fatalf("export %d: %v", i, err)
		}
	}
	if err := export(MaxExports); tperr.Name(err) != tperr.NotAvailable {
		t.Fatalf("one export over the limit: %v", err)
	}
	if err := export(0); err != nil {
		t.Fatalf("replacing an export at the limit: %v", err)
	}
	if err := m.Unexport("svc1"); err != nil {
		t.Fatal(err)
	}
	if err := export(MaxExports); err != nil {
		t.Fatalf("an export once one went: %v", err)
	}
	if n := len(m.Exports()); n != MaxExports {
		t.Fatalf("%d exports", n)
	}
}
