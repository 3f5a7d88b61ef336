package tube

import "testing"

// Tube ids go on command lines (tube accept ID): none may look like a flag.
func TestIDsAreNotFlags(t *testing.T) {
	for range 5000 {
		if id := newID(); id[0] == '-' || id[0] == '_' || len(id) != 16 {
			t.Fatalf("id %q", id)
		}
	}
}
