package registry

import (
	"bytes"
	"encoding/json"
	"errors"
	"flag"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

var update = flag.Bool("update", false, "rewrite the golden files")

func parseFile(t *testing.T, path string) (*Descriptor, error) {
	t.Helper()
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	return Parse(filepath.Base(path), f)
}

// Valid descriptors, SFW 1.0 and 1.1, parse to the JSON in golden files.
func TestParseGolden(t *testing.T) {
	files, _ := filepath.Glob("testdata/descriptors/*.xml")
	if len(files) == 0 {
		t.Fatal("no descriptors")
	}
	for _, file := range files {
		d, err := parseFile(t, file)
		if err != nil {
			t.Fatalf("%s: %v", file, err)
		}
		got, _ := json.MarshalIndent(d, "", "  ")
		golden := filepath.Join("testdata/golden", strings.TrimSuffix(filepath.Base(file), ".xml")+".json")
		if *update {
			os.WriteFile(golden, append(got, '\n'), 0o644)
			continue
		}
		want, err := os.ReadFile(golden)
		if err != nil {
			t.Fatalf("%v (run go test -update)", err)
		}
		if !bytes.Equal(bytes.TrimSpace(got), bytes.TrimSpace(want)) {
			t.Errorf("%s parsed to\n%s\nwant\n%s", file, got, want)
		}
		// The JSON form reads back to the same descriptor.
		var back Descriptor
		if err := json.Unmarshal(got, &back); err != nil {
			t.Fatal(err)
		}
		again, _ := json.MarshalIndent(&back, "", "  ")
		if !bytes.Equal(again, got) {
			t.Errorf("%s: JSON round trip changed it:\n%s", file, again)
		}
	}
}

// Every malformed class is refused with the rule it breaks and the line.
func TestParseRefused(t *testing.T) {
	for file, want := range map[string]struct {
		rule string
		line int
	}{
		"version-zero-major.xml":   {RuleVersion, 7},
		"version-leading-zero.xml": {RuleVersion, 7},
		"duplicate-interface.xml":  {RuleDuplicateIface, 9},
		"duplicate-property.xml":   {RuleDuplicateProperty, 9},
		"sfw-version.xml":          {RuleSFWVersion, 1},
		"unclosed.xml":             {RuleMalformedXML, 10},
		"both-locations.xml":       {RuleTwoLocations, 2},
		"no-location.xml":          {RuleLocation, 2},
		"no-interface.xml":         {RuleNoInterface, 2},
		"no-service-name.xml":      {RuleServiceName, 2},
		"capabilities-space.xml":   {RuleCapabilities, 8},
		"unknown-element.xml":      {RuleUnexpected, 8},
	} {
		_, err := parseFile(t, filepath.Join("testdata/bad", file))
		var pe *ParseError
		if !errors.As(err, &pe) {
			t.Errorf("%s: %v, want a ParseError", file, err)
			continue
		}
		if pe.Rule != want.rule || pe.Line != want.line || pe.File != file {
			t.Errorf("%s: %v; want rule %s at line %d", file, err, want.rule, want.line)
		}
	}
}

func TestParseSmallCases(t *testing.T) {
	for name, c := range map[string]struct {
		xml  string
		rule string
	}{
		"empty":            {"", RuleMalformedXML},
		"not SFW":          {`<services/>`, RuleUnexpected},
		"two services":     {`<SFW version="1.1"><service><name>a</name><ipcaddress>a</ipcaddress><interface><name>x</name><version>1.0</version></interface></service><service/></SFW>`, RuleUnexpected},
		"text at the top":  {`<SFW version="1.1">hello</SFW>`, RuleUnexpected},
		"element in name":  {`<SFW version="1.1"><service><name><b>a</b></name></service></SFW>`, RuleUnexpected},
		"no version":       {`<SFW version="1.1"><service><name>a</name><ipcaddress>a</ipcaddress><interface><name>x</name></interface></service></SFW>`, RuleVersion},
		"no iface name":    {`<SFW version="1.1"><service><name>a</name><ipcaddress>a</ipcaddress><interface><version>1.0</version></interface></service></SFW>`, RuleInterfaceName},
		"second name":      {`<SFW version="1.1"><service><name>a</name><name>b</name></service></SFW>`, RuleDuplicateElement},
		"spaced cap item":  {`<SFW version="1.1"><service><name>a</name><ipcaddress>a</ipcaddress><interface><name>x</name><version>1.0</version><capabilities>A, B</capabilities></interface></service></SFW>`, RuleCapabilities},
		"property no key":  {`<SFW version="1.1"><service><name>a</name><ipcaddress>a</ipcaddress><interface><name>x</name><version>1.0</version><customproperty>v</customproperty></interface></service></SFW>`, RulePropertyKey},
		"after the root":   {`<SFW version="1.1"><service><name>a</name><ipcaddress>a</ipcaddress><interface><name>x</name><version>1.0</version></interface></service></SFW><x/>`, RuleUnexpected},
		"mismatched close": {`<SFW version="1.1"><service></SFW>`, RuleMalformedXML},
	} {
		_, err := Parse("case.xml", strings.NewReader(c.xml))
		var pe *ParseError
		if !errors.As(err, &pe) || pe.Rule != c.rule {
			t.Errorf("%s: %v, want rule %s", name, err, c.rule)
		}
	}
	// Empty capabilities are allowed; comments and an XML declaration too.
	d, err := Parse("ok.xml", strings.NewReader(`<?xml version="1.0"?><!-- c --><SFW version="1.1"><service><name>a</name><ipcaddress>a</ipcaddress><interface><name>x</name><version>10.20</version><capabilities></capabilities></interface></service></SFW>`))
	if err != nil || d.Interfaces[0].Version != (Version{10, 20}) || d.Interfaces[0].Capabilities != nil {
		t.Fatalf("%+v %v", d, err)
	}
}

func FuzzParse(f *testing.F) {
	files, _ := filepath.Glob("testdata/*/*.xml")
	plugins, _ := filepath.Glob("testdata/*/*/*.xml")
	files = append(files, plugins...)
	for _, file := range files {
		b, _ := os.ReadFile(file)
		f.Add(b)
	}
	f.Fuzz(func(t *testing.T, b []byte) {
		d, err := Parse("fuzz.xml", bytes.NewReader(b))
		if err != nil {
			var pe *ParseError
			if !errors.As(err, &pe) || pe.Rule == "" || pe.Line < 0 {
				t.Fatalf("an error that is not a ParseError with a rule: %v", err)
			}
			return
		}
		if d.Name == "" || (d.FilePath == "") == (d.IPCAddress == "") || len(d.Interfaces) == 0 {
			t.Fatalf("an invalid descriptor was accepted: %+v", d)
		}
		for _, in := range d.Interfaces {
			if in.Version.Major < 1 || in.Name == "" {
				t.Fatalf("an invalid interface was accepted: %+v", in)
			}
		}
		js, err := json.Marshal(d)
		if err != nil {
			t.Fatal(err)
		}
		var back Descriptor
		if err := json.Unmarshal(js, &back); err != nil {
			t.Fatalf("JSON round trip: %v", err)
		}
	})
}

// Descriptors that arrive as JSON (published by a contact) obey the same
// rules; every parsed descriptor passes.
func TestValidate(t *testing.T) {
	files, _ := filepath.Glob("testdata/descriptors/*.xml")
	for _, file := range files {
		d, err := parseFile(t, file)
		if err != nil || Validate(d) != nil {
			t.Fatalf("%s: %v %v", file, err, Validate(d))
		}
	}
	ok := func() *Descriptor {
		return &Descriptor{SFWVersion: "1.1", Name: "S", IPCAddress: "s", Interfaces: []Interface{{Name: "a.b", Version: Version{1, 0}}}}
	}
	for rule, mutate := range map[string]func(d *Descriptor){
		RuleSFWVersion:    func(d *Descriptor) { d.SFWVersion = "3" },
		RuleServiceName:   func(d *Descriptor) { d.Name = " " },
		RuleTwoLocations:  func(d *Descriptor) { d.FilePath = "/bin/s" },
		RuleLocation:      func(d *Descriptor) { d.IPCAddress = "" },
		RuleNoInterface:   func(d *Descriptor) { d.Interfaces = nil },
		RuleInterfaceName: func(d *Descriptor) { d.Interfaces[0].Name = "" },
		RuleVersion:       func(d *Descriptor) { d.Interfaces[0].Version = Version{0, 9} },
		RuleDuplicateIface: func(d *Descriptor) {
			d.Interfaces = append(d.Interfaces, Interface{Name: "A.B", Version: Version{1, 0}})
		},
		RuleCapabilities:     func(d *Descriptor) { d.Interfaces[0].Capabilities = []string{"a,b"} },
		RulePropertyKey:      func(d *Descriptor) { d.Interfaces[0].Properties = map[string]string{"": "v"} },
		RuleReservedFilepath: func(d *Descriptor) { d.IPCAddress, d.FilePath = "", "_q_ipc_addr:x" },
	} {
		d := ok()
		mutate(d)
		var pe *ParseError
		if err := Validate(d); !errors.As(err, &pe) || pe.Rule != rule {
			t.Errorf("%s: %v", rule, err)
		}
	}
}

// FuzzDescriptorJSON: descriptors contacts publish arrive as JSON; any
// bytes decode or fail cleanly, and what Validate accepts is usable.
func FuzzDescriptorJSON(f *testing.F) {
	files, _ := filepath.Glob("testdata/golden/*.json")
	for _, file := range files {
		b, _ := os.ReadFile(file)
		f.Add(b)
	}
	f.Add([]byte(`{"sfw_version":"1.1","name":"S","ipcaddress":"s","interfaces":[{"name":"a","version":"0.1"}]}`))
	f.Add([]byte(`{"sfw_version":"1.1","name":"S","interfaces":[{"name":"a","version":"1.0"}]}`))
	f.Fuzz(func(t *testing.T, b []byte) {
		var d Descriptor
		if json.Unmarshal(b, &d) != nil {
			return
		}
		if ValidatePublished(&d) == nil {
			if d.Location() != "" {
				t.Fatal("a published descriptor validated with a location")
			}
			if _, err := Select(Filter{Interface: d.Interfaces[0].Name}, []*Descriptor{&d}, RemoteScope); err != nil {
				t.Fatal(err)
			}
		}
		if Validate(&d) != nil {
			return
		}
		if _, err := Select(Filter{Interface: d.Interfaces[0].Name}, []*Descriptor{&d}, RemoteScope); err != nil {
			t.Fatal(err)
		}
		if d.Location() == "" {
			t.Fatal("validated without a location")
		}
	})
}

// What a contact sees of a published service has no location, and a
// descriptor received with one is refused: paths and addresses on the
// publisher's machine are not theirs to know.
func TestPublishedHasNoLocation(t *testing.T) {
	f, err := os.Open("testdata/descriptors/testservice.xml")
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	d, err := Parse("testservice.xml", f)
	if err != nil {
		t.Fatal(err)
	}
	p := d.Published()
	if p.FilePath != "" || p.IPCAddress != "" || d.Location() == "" || len(p.Interfaces) != len(d.Interfaces) {
		t.Fatalf("published form %+v of %+v", p, d)
	}
	if err := ValidatePublished(p); err != nil {
		t.Fatalf("published form refused: %v", err)
	}
	if err := ValidatePublished(d); err == nil || !strings.Contains(err.Error(), "location") {
		t.Fatalf("a received descriptor with a location: %v", err)
	}
	if err := Validate(p); err == nil {
		t.Fatal("Validate accepted a descriptor without a location")
	}
}
