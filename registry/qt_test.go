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

// Class 3, one service from several locations, with descriptor files
// registered one after another as Qt's registerService takes them: a
// plugin of a registered service at a new location adds its
// implementations; a location registered already, whoever has it (in
// any case: Qt compares locations without case), is ServiceAlreadyExists;
// an interface version the service has at another location is
// ImplementationAlreadyExists. Before, the second plugin was refused and
// a second descriptor at the same location was merged into the first.
func TestQtServiceFromSeveralLocations(t *testing.T) {
	r, _ := newReg(t)
	for _, c := range []struct {
		file string
		code string // "" registers
	}{
		{"media-audio.xml", ""},
		{"media-video.xml", ""},
		{"other-at-audio.xml", ServiceAlreadyExists},
		{"media-audio.xml", ServiceAlreadyExists},
		{"media-player-again.xml", ImplementationAlreadyExists},
	} {
		path := filepath.Join("testdata", "qt", "plugins", c.file)
		f, err := os.Open(path)
		if err != nil {
			t.Fatal(err)
		}
		d, err := Parse(path, f)
		f.Close()
		if err != nil {
			t.Fatal(err)
		}
		if err := r.Add(d, UserScope); CodeOf(err) != c.code {
			t.Fatalf("register %s: %v, want %q", c.file, err, c.code)
		}
	}
	got, _ := r.Find(Filter{Service: "MEDIASERVICE"}, UserScope)
	var impls []string
	for _, i := range got {
		impls = append(impls, i.Service+" "+i.Interface+" "+i.Version.String()+" "+i.FilePath+" "+i.ServiceDescription)
	}
	want := []string{
		"MediaService com.example.media.Audio 2.0 /usr/lib/mediaservice/audioplugin Media playback: the audio plugin",
		"MediaService com.example.media.Player 1.0 /usr/lib/mediaservice/audioplugin Media playback: the audio plugin",
		"mediaservice com.example.media.Player 2.0 /usr/lib/mediaservice/videoplugin Media playback: the video plugin",
		"mediaservice com.example.media.Video 1.0 /usr/lib/mediaservice/videoplugin Media playback: the video plugin",
	}
	if !slices.Equal(impls, want) {
		t.Fatalf("find MediaService:\n%q\nwant\n%q", impls, want)
	}
	if impl, err := r.Default("com.example.media.Player", UserScope); err != nil || impl.Version != (Version{1, 0}) {
		t.Fatalf("Player's default: %+v %v (the first registrant's)", impl, err)
	}
	if err := r.Remove("MediaService", UserScope); err != nil {
		t.Fatal(err)
	}
	if got, _ := r.Find(Filter{}, UserScope); len(got) != 0 {
		t.Fatalf("left after removing MediaService: %q", names(got))
	}
}
