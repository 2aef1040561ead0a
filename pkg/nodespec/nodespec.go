// Package nodespec decides a node's effective settings from a container's
// labels and its network's options, for both the driver (package netdriver,
// at Join) and the node (package stack): what it serves, which tags it asks
// for, and the rules between them. It depends on nothing in tslink.
package nodespec

import (
	"errors"
	"fmt"
	"net/url"
)

// Serve protocols of ts.serve.<port>=<proto>:<target>[/<path>], named as
// `tailscale serve` names them.
const (
	ProtoHTTP             = "http"               // L7 reverse proxy, plain HTTP on the tailnet
	ProtoHTTPS            = "https"              // L7 reverse proxy, TLS with the node's certificate
	ProtoTCP              = "tcp"                // L4 forward
	ProtoTLSTerminatedTCP = "tls-terminated-tcp" // TLS ends on the node, plain TCP to the target
)

// ServeEndpoint is one ts.serve.<port> label.
type ServeEndpoint struct {
	Port   uint16 // tailnet port of the node (and of the service)
	Proto  string // one of the Proto* constants
	Target uint16 // container port, dialled at localhost in the container's netns
	Path   string // HTTP mount point, "/" unless given; always "" for L4
}

// L7 reports whether the endpoint is an HTTP reverse proxy.
func (e ServeEndpoint) L7() bool { return e.Proto == ProtoHTTP || e.Proto == ProtoHTTPS }

// TLS reports whether TLS ends on the node (needs its certificate).
func (e ServeEndpoint) TLS() bool { return e.Proto == ProtoHTTPS || e.Proto == ProtoTLSTerminatedTCP }

// Serve is what a container serves on the tailnet: the ts.serve.*,
// ts.service and ts.direct labels.
type Serve struct {
	Endpoints []ServeEndpoint // sorted by Port
	// Service ("svc:name"): the node is a backend of this Tailscale Service
	// for Endpoints.
	Service string
	// ServiceOnly (ts.direct=false): Endpoints answer only through Service,
	// not on the node's own name and addresses.
	ServiceOnly bool
}

// Tags returns the ACL tags a node asks for: the container's ts.tags label
// if it has one (non-nil), else the network's ts.tags option.
func Tags(container, network []string) []string {
	if container != nil {
		return container
	}
	return network
}

// ErrUntaggedService: a Tailscale Service backend must be a tagged node
// (tailscale.com/kb/1552: "service hosts must be tagged nodes").
var ErrUntaggedService = errors.New("a Tailscale Service backend must be a tagged node: set label ts.tags (or network option ts.tags), e.g. ts.tags=tag:web")

// CheckService returns an error wrapping [ErrUntaggedService] if s makes the
// node a Service backend and tags is empty.
func CheckService(s Serve, tags []string) error {
	if s.Service != "" && len(tags) == 0 {
		return fmt.Errorf("label ts.service=%s: %w", s.Service, ErrUntaggedService)
	}
	return nil
}

// ControlDisplay is a control URL as logs and messages show it:
// scheme://host[:port], without any path; "" for "" (Tailscale's default
// control). Package tsopts has refused URLs with user info, a query or a
// fragment already; this is the second guard.
func ControlDisplay(controlURL string) string {
	if controlURL == "" {
		return ""
	}
	u, err := url.Parse(controlURL)
	if err != nil || u.Host == "" {
		return "(unparsable control URL)"
	}
	return u.Scheme + "://" + u.Host
}
