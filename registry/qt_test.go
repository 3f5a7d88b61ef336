package registry

import (
	"errors"
	"os"
	"path/filepath"
	"slices"
	"testing"
)

// Descriptor files as Qt's own tree and Qt's parser have them
// (testdata/qt), one class of behaviour per row: what Tubes does with
// each, Qt's behaviour or a documented difference (README, "Differences
// from Qt"). Every row but property-twice changed behaviour: bare
// <service> roots, a service's <version>, "1.00" and empty capability
// parts were refused; versions with spaces, reserved filepaths and an
// <ipcaddress> in SFW 1.0 were taken; a missing key was reported as a
// duplicate.
func TestQtDescriptorClasses(t *testing.T) {
	for _, c := range []struct {
		file  string
		rule  string // "" loads
		check func(t *testing.T, d *Descriptor)
	}{
		{"bare-service.xml", "", func(t *testing.T, d *Descriptor) {
			if d.SFWVersion != "1.0" || d.Name != "VoipService" || d.FilePath != "/usr/lib/voipservice/plugin" || len(d.Interfaces) != 1 {
				t.Errorf("parsed as %+v", d)
			}
		}},
		{"bare-service-ipcaddress.xml", RuleIPCAddressSFW10, nil},
		{"service-version.xml", "", func(t *testing.T, d *Descriptor) {
			if d.Name != "FileManager" || d.Interfaces[0].Version != (Version{1, 0}) {
				t.Errorf("parsed as %+v", d)
			}
		}},
		{"version-leading-space.xml", RuleVersion, nil},
		{"version-trailing-space.xml", RuleVersion, nil},
		{"capabilities-empty-part.xml", "", func(t *testing.T, d *Descriptor) {
			if got := d.Interfaces[0].Capabilities; !slices.Equal(got, []string{"A", "B"}) {
				t.Errorf("capabilities %q, want A and B", got)
			}
		}},
		{"capabilities-space.xml", RuleCapabilities, nil},
		{"filepath-reserved.xml", RuleReservedFilepath, nil},
		{"sfw-version-1.00.xml", "", func(t *testing.T, d *Descriptor) {
			if d.SFWVersion != "1.0" {
				t.Errorf("SFW version %q, want 1.0", d.SFWVersion)
			}
		}},
		{"sfw-version-1.10.xml", "", func(t *testing.T, d *Descriptor) {
			if d.SFWVersion != "1.1" || d.IPCAddress != "hundredths" {
				t.Errorf("parsed as %+v", d)
			}
		}},
		{"sfw-version-1.2.xml", RuleSFWVersion, nil},
		{"sfw-1.0-ipcaddress.xml", RuleIPCAddressSFW10, nil},
		{"property-no-key.xml", RulePropertyKey, nil},
		{"property-empty-key.xml", RulePropertyKey, nil},
		{"property-twice.xml", RuleDuplicateProperty, nil},
	} {
		t.Run(c.file, func(t *testing.T) {
			path := filepath.Join("testdata", "qt", c.file)
			f, err := os.Open(path)
			if err != nil {
				t.Fatal(err)
			}
			defer f.Close()
			d, err := Parse(path, f)
			if c.rule == "" {
				if err != nil {
					t.Fatalf("refused: %v", err)
				}
				c.check(t, d)
				return
			}
			var pe *ParseError
			if !errors.As(err, &pe) || pe.Rule != c.rule {
				t.Fatalf("got %v, want the rule %s", err, c.rule)
			}
			if pe.File != path || pe.Line == 0 {
				t.Errorf("the error does not name the file and line: %v", err)
			}
		})
	}
}
