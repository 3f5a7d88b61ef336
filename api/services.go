package api

import (
	"github.com/tubes-dev/tubes/activation"
	"github.com/tubes-dev/tubes/registry"
)

// The service framework's types are the registry's: a service descriptor,
// an interface implementation, a filter.
type (
	ServiceDescriptor = registry.Descriptor
	Implementation    = registry.Implementation
	DefaultRule       = registry.DefaultRule
	ServiceFilter     = registry.Filter
)

// AddServiceRequest is the body of POST /v1/services: a Qt Service
// Framework XML descriptor, the file it came from (named in errors) and
// the scope, "user" (default) or "system".
type AddServiceRequest struct {
	XML   string `json:"xml"`
	File  string `json:"file,omitempty"`
	Scope string `json:"scope,omitempty"`
}

// FindServicesRequest is the body of POST /v1/services/find.
type FindServicesRequest struct {
	Filter ServiceFilter `json:"filter"`
	Scope  string        `json:"scope,omitempty"`
}

// SetDefaultRequest is the body of PUT /v1/services/defaults/{interface}:
// make service the default (its newest version, or exactly version).
type SetDefaultRequest struct {
	Service string `json:"service"`
	Version string `json:"version,omitempty"`
	Scope   string `json:"scope,omitempty"`
}

// Publication is a service published to a contact or a room.
type Publication struct {
	Service string `json:"service"`
	To      string `json:"to,omitempty"`
	Room    string `json:"room,omitempty"`
	// Pin names the service as it was registered when published (a
	// fingerprint of its scope and first descriptor): the publication is
	// of that service, not of another registered later under its name.
	// The daemon sets and keeps it; the local API leaves it out.
	Pin string `json:"pin,omitempty"`
}

// BrowseRequest is the body of POST /v1/accounts/{name}/browse: what a
// contact, or the members of a room, publish to us, through a filter.
type BrowseRequest struct {
	Contact string        `json:"contact,omitempty"`
	Room    string        `json:"room,omitempty"`
	Filter  ServiceFilter `json:"filter"`
}

// RemoteImplementation is an implementation a contact publishes.
type RemoteImplementation struct {
	Implementation
	Publisher string `json:"publisher"`
	Room      string `json:"room,omitempty"` // published to this room
	// Default: the publisher's default implementation of this interface.
	Default bool `json:"default,omitempty"`
}

// ActivationStatus is what a service started on demand is doing, and
// what went wrong last (GET /v1/services/activations).
type ActivationStatus = activation.Status

// Grant gives a contact capabilities: a published service whose
// interfaces name capabilities is reachable only by contacts holding them
// all (POST /v1/accounts/{name}/grants; .../grants/revoke takes back).
type Grant struct {
	Contact      string   `json:"contact"`
	Capabilities []string `json:"capabilities"`
}
