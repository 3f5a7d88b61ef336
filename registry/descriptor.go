// Package registry is the service framework's registry: Qt Service
// Framework XML descriptors, accepted unchanged, and the registry of the
// services they describe, with Qt's filter, default and scope rules
// (see ../spec/service-framework.md of the design documents).
package registry

import (
	"encoding/json"
	"encoding/xml"
	"errors"
	"fmt"
	"io"
	"os"
	"regexp"
	"slices"
	"strconv"
	"strings"
)

// Descriptor is a parsed service descriptor: one service and the
// interfaces it implements.
type Descriptor struct {
	SFWVersion  string      `json:"sfw_version"`
	Name        string      `json:"name"`
	Description string      `json:"description,omitempty"`
	FilePath    string      `json:"filepath,omitempty"`   // executable started on demand
	IPCAddress  string      `json:"ipcaddress,omitempty"` // where the service serves
	Interfaces  []Interface `json:"interfaces"`
}

// Location is where the service lives: its filepath or ipcaddress.
func (d *Descriptor) Location() string {
	if d.FilePath != "" {
		return d.FilePath
	}
	return d.IPCAddress
}

// Interface is one interface implementation of a service.
type Interface struct {
	Name         string            `json:"name"`
	Version      Version           `json:"version"`
	Description  string            `json:"description,omitempty"`
	Capabilities []string          `json:"capabilities,omitempty"`
	Properties   map[string]string `json:"properties,omitempty"`
}

// Version is an interface version, major.minor: the major number is the
// interface's, the minor the implementation's.
type Version struct{ Major, Minor int }

func (v Version) String() string { return strconv.Itoa(v.Major) + "." + strconv.Itoa(v.Minor) }

// Less orders versions by major, then minor.
func (v Version) Less(w Version) bool {
	return v.Major < w.Major || (v.Major == w.Major && v.Minor < w.Minor)
}

// MarshalJSON writes "M.m".
func (v Version) MarshalJSON() ([]byte, error) { return json.Marshal(v.String()) }

// UnmarshalJSON reads "M.m".
func (v *Version) UnmarshalJSON(b []byte) error {
	var s string
	if err := json.Unmarshal(b, &s); err != nil {
		return err
	}
	w, err := ParseVersion(s)
	if err != nil {
		return err
	}
	*v = w
	return nil
}

var (
	// Descriptor versions: major ≥ 1 (Qt: "must be greater than 1.0").
	descVersion = regexp.MustCompile(`^([1-9][0-9]*)\.(0+|[1-9][0-9]*)$`)
	// Filter versions may have major 0.
	filterVersion = regexp.MustCompile(`^(0+|[1-9][0-9]*)\.(0+|[1-9][0-9]*)$`)
)

// ParseVersion parses a filter version ("0.9" is valid in a filter).
func ParseVersion(s string) (Version, error) {
	return parseVersion(filterVersion, s)
}

func parseVersion(re *regexp.Regexp, s string) (Version, error) {
	m := re.FindStringSubmatch(s)
	if m == nil {
		return Version{}, fmt.Errorf("version %q is not major.minor", s)
	}
	maj, err1 := strconv.Atoi(m[1])
	mn, err2 := strconv.Atoi(m[2])
	if err1 != nil || err2 != nil {
		return Version{}, fmt.Errorf("version %q is out of range", s)
	}
	return Version{maj, mn}, nil
}

// Rules a descriptor can break; a ParseError names one.
const (
	RuleMalformedXML      = "MalformedXML"
	RuleSFWVersion        = "UnknownSFWVersion"
	RuleUnexpected        = "UnexpectedElement"
	RuleServiceName       = "ServiceNameMissing"
	RuleLocation          = "LocationMissing"
	RuleTwoLocations      = "FilepathAndIPCAddress"
	RuleNoInterface       = "NoInterface"
	RuleInterfaceName     = "InterfaceNameMissing"
	RuleVersion           = "InvalidVersion"
	RuleDuplicateIface    = "DuplicateInterface"
	RuleDuplicateProperty = "DuplicateCustomProperty"
	RuleCapabilities      = "InvalidCapabilities"
	RuleDuplicateElement  = "DuplicateElement"
	RulePropertyKey       = "CustomPropertyKeyMissing"
	RuleReservedFilepath  = "ReservedFilepath"
	RuleIPCAddressSFW10   = "IPCAddressNeedsSFW11"
)

// ipcPrefix is what Qt reserves at the start of a location for its IPC
// addresses: a <filepath> may not start with it.
const ipcPrefix = "_q_ipc_addr:"

// ParseError is a descriptor that breaks a rule, at a line of its file.
type ParseError struct {
	File string
	Line int
	Rule string
	Msg  string
}

func (e *ParseError) Error() string {
	return fmt.Sprintf("%s:%d: %s (%s)", e.File, e.Line, e.Msg, e.Rule)
}

// maxDescriptor bounds the size of a descriptor file.
const maxDescriptor = 1 << 20

// Parse reads a Qt Service Framework descriptor (SFW 1.0 or 1.1); file
// names it in errors.
func Parse(file string, r io.Reader) (*Descriptor, error) {
	p := &parser{file: file, dec: xml.NewDecoder(io.LimitReader(r, maxDescriptor+1))}
	p.dec.Strict = true
	d, err := p.parse()
	if err != nil {
		return nil, err
	}
	return d, nil
}

type parser struct {
	file string
	dec  *xml.Decoder
}

func (p *parser) errf(line int, rule, format string, a ...any) error {
	return &ParseError{File: p.file, Line: line, Rule: rule, Msg: fmt.Sprintf(format, a...)}
}

func (p *parser) line() int {
	l, _ := p.dec.InputPos()
	return l
}

// next returns the next start or end element, skipping comments,
// processing instructions and whitespace; other text is an error.
func (p *parser) next() (xml.Token, int, error) {
	for {
		line := p.line()
		tok, err := p.dec.Token()
		if err == io.EOF {
			return nil, line, io.EOF
		}
		if err != nil {
			var se *xml.SyntaxError
			if errors.As(err, &se) {
				return nil, se.Line, p.errf(se.Line, RuleMalformedXML, "malformed XML: %s", se.Msg)
			}
			return nil, line, p.errf(line, RuleMalformedXML, "malformed XML: %v", err)
		}
		switch t := tok.(type) {
		case xml.StartElement, xml.EndElement:
			return xml.CopyToken(t), p.line(), nil
		case xml.CharData:
			if strings.TrimSpace(string(t)) != "" {
				return nil, p.line(), p.errf(p.line(), RuleUnexpected, "text %q outside any element", clip(strings.TrimSpace(string(t))))
			}
		}
	}
}

// text reads an element's text up to its end (no child elements),
// without the space around it.
func (p *parser) text(name string) (string, error) {
	s, err := p.rawText(name)
	return strings.TrimSpace(s), err
}

// rawText reads an element's text up to its end, as written.
func (p *parser) rawText(name string) (string, error) {
	var sb strings.Builder
	for {
		tok, err := p.dec.Token()
		if err != nil {
			var se *xml.SyntaxError
			if errors.As(err, &se) {
				return "", p.errf(se.Line, RuleMalformedXML, "malformed XML: %s", se.Msg)
			}
			return "", p.errf(p.line(), RuleMalformedXML, "malformed XML in <%s>: %v", name, err)
		}
		switch t := tok.(type) {
		case xml.CharData:
			sb.Write(t)
		case xml.StartElement:
			return "", p.errf(p.line(), RuleUnexpected, "<%s> inside <%s>, which holds text only", t.Name.Local, name)
		case xml.EndElement:
			return sb.String(), nil
		}
	}
}

func (p *parser) parse() (*Descriptor, error) {
	tok, line, err := p.next()
	if err == io.EOF {
		return nil, p.errf(line, RuleMalformedXML, "the file holds no XML element")
	}
	if err != nil {
		return nil, err
	}
	root, ok := tok.(xml.StartElement)
	if ok && root.Name.Local == "service" {
		// A bare <service>, as most of Qt's own descriptors are: SFW 1.0.
		d := &Descriptor{SFWVersion: "1.0"}
		if err := p.service(d, line); err != nil {
			return nil, err
		}
		if err := p.trailing("</service>"); err != nil {
			return nil, err
		}
		return d, nil
	}
	if !ok || root.Name.Local != "SFW" {
		return nil, p.errf(line, RuleUnexpected, "the root element must be <SFW version=\"1.0|1.1\"> or a bare <service>")
	}
	d := &Descriptor{}
	attr := ""
	for _, a := range root.Attr {
		if a.Name.Local == "version" {
			attr = a.Value
		}
	}
	// Qt reads the attribute as a number: "1.00" is 1.0.
	switch f, err := strconv.ParseFloat(attr, 64); {
	case err == nil && f == 1.0 && strings.TrimSpace(attr) == attr:
		d.SFWVersion = "1.0"
	case err == nil && f == 1.1 && strings.TrimSpace(attr) == attr:
		d.SFWVersion = "1.1"
	default:
		return nil, p.errf(line, RuleSFWVersion, "SFW version %q is not supported (1.0 or 1.1)", clip(attr))
	}
	sawService := false
	for {
		tok, line, err := p.next()
		if err == io.EOF {
			return nil, p.errf(line, RuleMalformedXML, "the file ends inside <SFW>")
		}
		if err != nil {
			return nil, err
		}
		switch t := tok.(type) {
		case xml.EndElement: // </SFW>
			if !sawService {
				return nil, p.errf(line, RuleServiceName, "<SFW> holds no <service>")
			}
			if err := p.trailing("</SFW>"); err != nil {
				return nil, err
			}
			return d, nil
		case xml.StartElement:
			if t.Name.Local != "service" || sawService {
				return nil, p.errf(line, RuleUnexpected, "<SFW> holds exactly one <service>, not <%s>", t.Name.Local)
			}
			sawService = true
			if err := p.service(d, line); err != nil {
				return nil, err
			}
		}
	}
}

// trailing checks nothing but comments and space follow the root, which
// ended with end.
func (p *parser) trailing(end string) error {
	tok, line, err := p.next()
	if err == io.EOF {
		return nil
	}
	if err != nil {
		return err
	}
	return p.errf(line, RuleUnexpected, "unexpected %v after %s", tok, end)
}

func (p *parser) service(d *Descriptor, start int) error {
	seen := map[string]bool{}
	ifaces := map[string]int{} // name+version → line
	for {
		tok, line, err := p.next()
		if err != nil {
			if err == io.EOF {
				return p.errf(line, RuleMalformedXML, "the file ends inside <service>")
			}
			return err
		}
		if _, end := tok.(xml.EndElement); end {
			break
		}
		el := tok.(xml.StartElement).Name.Local
		if el != "interface" && seen[el] {
			return p.errf(line, RuleDuplicateElement, "<service> has a second <%s>", el)
		}
		seen[el] = true
		switch el {
		case "version": // Qt's parser ignores a service's own version
			if _, err := p.text(el); err != nil {
				return err
			}
		case "name", "description", "filepath", "ipcaddress":
			v, err := p.text(el)
			if err != nil {
				return err
			}
			switch el {
			case "name":
				d.Name = v
			case "description":
				d.Description = v
			case "filepath":
				d.FilePath = v
			case "ipcaddress":
				d.IPCAddress = v
				if d.SFWVersion == "1.0" {
					return p.errf(line, RuleIPCAddressSFW10, "<ipcaddress> is SFW 1.1: this file is SFW 1.0 (a bare <service>, or <SFW version=\"1.0\">)")
				}
			}
		case "interface":
			in, err := p.iface(line)
			if err != nil {
				return err
			}
			key := foldKey(in.Name) + "\x00" + in.Version.String()
			if first, dup := ifaces[key]; dup {
				return p.errf(line, RuleDuplicateIface, "interface %s %s is declared twice (first on line %d)", in.Name, in.Version, first)
			}
			ifaces[key] = line
			d.Interfaces = append(d.Interfaces, in)
		default:
			return p.errf(line, RuleUnexpected, "<service> cannot hold <%s>", el)
		}
	}
	switch {
	case d.Name == "":
		return p.errf(start, RuleServiceName, "the service has no <name>")
	case d.FilePath != "" && d.IPCAddress != "":
		return p.errf(start, RuleTwoLocations, "service %s has both <filepath> and <ipcaddress>; it needs exactly one", d.Name)
	case d.FilePath == "" && d.IPCAddress == "":
		return p.errf(start, RuleLocation, "service %s has neither <filepath> nor <ipcaddress>; it needs exactly one", d.Name)
	case strings.HasPrefix(d.FilePath, ipcPrefix):
		return p.errf(start, RuleReservedFilepath, "service %s: a <filepath> may not start with %s, which Qt reserves for IPC addresses", d.Name, ipcPrefix)
	case len(d.Interfaces) == 0:
		return p.errf(start, RuleNoInterface, "service %s declares no <interface>", d.Name)
	}
	return nil
}

func (p *parser) iface(start int) (Interface, error) {
	in := Interface{}
	seen := map[string]bool{}
	var version string
	versionLine := start
	for {
		tok, line, err := p.next()
		if err != nil {
			if err == io.EOF {
				return in, p.errf(line, RuleMalformedXML, "the file ends inside <interface>")
			}
			return in, err
		}
		if _, end := tok.(xml.EndElement); end {
			break
		}
		se := tok.(xml.StartElement)
		el := se.Name.Local
		if el != "customproperty" && seen[el] {
			return in, p.errf(line, RuleDuplicateElement, "<interface> has a second <%s>", el)
		}
		seen[el] = true
		switch el {
		case "name", "version", "description", "capabilities":
			raw, err := p.rawText(el)
			if err != nil {
				return in, err
			}
			v := strings.TrimSpace(raw)
			if el == "version" {
				v = raw // as written: Qt refuses " 1.5"
			}
			switch el {
			case "name":
				in.Name = v
			case "version":
				version, versionLine = v, line
			case "description":
				in.Description = v
			case "capabilities":
				// Split on commas, empty parts skipped, as Qt does; a
				// part with spaces around it is refused (Qt would keep
				// " B", which no filter for B matches).
				for _, c := range strings.Split(v, ",") {
					if c == "" {
						continue
					}
					if strings.TrimSpace(c) != c {
						return in, p.errf(line, RuleCapabilities, "capabilities %q: capability %q has spaces around it (write A,B)", clip(v), clip(c))
					}
					in.Capabilities = append(in.Capabilities, c)
				}
			}
		case "customproperty":
			key := ""
			for _, a := range se.Attr {
				if a.Name.Local == "key" {
					key = a.Value
				}
			}
			if key == "" {
				return in, p.errf(line, RulePropertyKey, "<customproperty> needs a non-empty key attribute")
			}
			v, err := p.text(el)
			if err != nil {
				return in, err
			}
			if in.Properties == nil {
				in.Properties = map[string]string{}
			}
			if _, dup := in.Properties[key]; dup {
				return in, p.errf(line, RuleDuplicateProperty, "custom property %q is set twice", key)
			}
			in.Properties[key] = v
		default:
			return in, p.errf(line, RuleUnexpected, "<interface> cannot hold <%s>", el)
		}
	}
	if in.Name == "" {
		return in, p.errf(start, RuleInterfaceName, "an <interface> has no <name>")
	}
	v, err := parseVersion(descVersion, version)
	if err != nil {
		return in, p.errf(versionLine, RuleVersion, "interface %s: version %q must be major.minor with major at least 1", in.Name, clip(version))
	}
	in.Version = v
	slices.Sort(in.Capabilities)
	in.Capabilities = slices.Compact(in.Capabilities)
	return in, nil
}

// StartWarning says why d's <filepath> cannot be started as it stands
// (missing, or not an executable file), "" when it can or d has none.
// A service is registered anyway, as in Qt's registry: the file may be
// installed after its descriptor; starting it fails until it is.
func StartWarning(d *Descriptor) string {
	if d == nil || d.FilePath == "" {
		return ""
	}
	fi, err := os.Stat(d.FilePath)
	switch {
	case err != nil:
		return fmt.Sprintf("service %s: %s does not exist yet; it cannot be started until it does", d.Name, d.FilePath)
	case !fi.Mode().IsRegular() || fi.Mode().Perm()&0o111 == 0:
		return fmt.Sprintf("service %s: %s is not an executable file; it cannot be started until it is", d.Name, d.FilePath)
	}
	return ""
}

func clip(s string) string {
	if len(s) > 64 {
		return s[:64] + "…"
	}
	return s
}

// Validate checks a descriptor that did not come from XML (its JSON form)
// against the rules Parse applies.
func Validate(d *Descriptor) error { return validate(d, false) }

// Published is d as the contacts and rooms it is published to see it:
// without its location (an executable or a socket on the publisher's
// machine, which they reach through a tube, never directly).
func (d *Descriptor) Published() *Descriptor {
	c := *d
	c.FilePath, c.IPCAddress = "", ""
	return &c
}

// PublishedService is the one descriptor that contacts and rooms see of
// a service registered at several locations (ds, in the order they were
// registered): the first's name, description and SFW version, the
// interfaces of every location, and no location.
func PublishedService(ds []*Descriptor) *Descriptor {
	if len(ds) == 0 {
		return nil
	}
	p := ds[0].Published()
	p.Interfaces = nil
	for _, d := range ds {
		p.Interfaces = append(p.Interfaces, d.Interfaces...)
	}
	sortInterfaces(p.Interfaces)
	return p
}

// ValidatePublished checks a descriptor a publisher sent: the rules of
// Validate, except that it has no location.
func ValidatePublished(d *Descriptor) error { return validate(d, true) }

func validate(d *Descriptor, published bool) error {
	bad := func(rule, format string, a ...any) error {
		return &ParseError{File: "descriptor", Rule: rule, Msg: fmt.Sprintf(format, a...)}
	}
	switch {
	case d == nil:
		return bad(RuleMalformedXML, "no descriptor")
	case d.SFWVersion != "1.0" && d.SFWVersion != "1.1":
		return bad(RuleSFWVersion, "SFW version %q is not supported (1.0 or 1.1)", clip(d.SFWVersion))
	case strings.TrimSpace(d.Name) == "" || len(d.Name) > 255:
		return bad(RuleServiceName, "the service has no name, or one longer than 255 bytes")
	case published && (d.FilePath != "" || d.IPCAddress != ""):
		return bad(RuleLocation, "published service %s names a location on its publisher's machine", clip(d.Name))
	case !published && d.FilePath != "" && d.IPCAddress != "":
		return bad(RuleTwoLocations, "service %s has both a filepath and an ipcaddress", clip(d.Name))
	case !published && d.FilePath == "" && d.IPCAddress == "":
		return bad(RuleLocation, "service %s has neither a filepath nor an ipcaddress", clip(d.Name))
	case strings.HasPrefix(d.FilePath, ipcPrefix):
		return bad(RuleReservedFilepath, "service %s: a filepath may not start with %s, which Qt reserves for IPC addresses", clip(d.Name), ipcPrefix)
	case len(d.Interfaces) == 0 || len(d.Interfaces) > 1024:
		return bad(RuleNoInterface, "service %s declares %d interfaces (1 to 1024)", clip(d.Name), len(d.Interfaces))
	}
	seen := map[string]bool{}
	for _, in := range d.Interfaces {
		key := foldKey(in.Name) + "\x00" + in.Version.String()
		switch {
		case strings.TrimSpace(in.Name) == "":
			return bad(RuleInterfaceName, "an interface of %s has no name", clip(d.Name))
		case in.Version.Major < 1 || in.Version.Minor < 0:
			return bad(RuleVersion, "interface %s: version %s must have major at least 1", clip(in.Name), in.Version)
		case seen[key]:
			return bad(RuleDuplicateIface, "interface %s %s is declared twice", clip(in.Name), in.Version)
		}
		seen[key] = true
		for _, c := range in.Capabilities {
			if c == "" || strings.ContainsAny(c, ", \t\n") {
				return bad(RuleCapabilities, "interface %s: capability %q", clip(in.Name), clip(c))
			}
		}
		for k := range in.Properties {
			if k == "" {
				return bad(RulePropertyKey, "interface %s: a custom property without a key", clip(in.Name))
			}
		}
	}
	return nil
}
