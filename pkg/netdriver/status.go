package netdriver

import (
	"fmt"
	"slices"
	"strings"
	"time"

	"github.com/tslink/tslink/pkg/tsopts"
)

// EndpointStatus is one line of `tslink status`.
type EndpointStatus struct {
	Container string `json:"container"`
	Hostname  string `json:"hostname"` // as requested: ts.hostname or the container name
	// Name is the node's MagicDNS name as control has it (FQDN, no
	// trailing dot): "<hostname>-1.<suffix>" when another node held the
	// hostname, or an admin's rename. Empty until control sent it.
	Name      string   `json:"name,omitempty"`
	Network   string   `json:"network"` // network ID, 12 hex digits
	IPs       []string `json:"ips"`
	State     string   `json:"state"` // IPN state (Running, NeedsLogin, …), Starting while Join runs, NotRecovered while a restarted plugin fails to bring it back (retrying)
	Attached  bool     `json:"attached"`
	LastError string   `json:"lastError,omitempty"`
	// KeyExpired: the node key expired (State is then NeedsLogin) and the
	// node is off the tailnet until an admin extends the key; KeyExpiry is
	// when it expires or expired (RFC 3339), absent if it never does.
	KeyExpired bool   `json:"keyExpired,omitempty"`
	KeyExpiry  string `json:"keyExpiry,omitempty"`
	DebugLog   string `json:"debugLog"`        // as the host sees it
	Serve      string `json:"serve,omitempty"` // ts.serve.*/ts.service labels, short form
}

// Status lists the endpoints this plugin process serves, by hostname.
func (d *Driver) Status() []EndpointStatus {
	eps := d.list()
	out := make([]EndpointStatus, 0, len(eps))
	for _, ep := range eps {
		st := EndpointStatus{
			Container: ep.containerName,
			Hostname:  ep.hostname,
			Network:   short(ep.networkID),
			State:     "Starting",
			DebugLog:  d.dir.HostDebugLog(ep.hostname),
			Serve:     serveSummary(ep.serve),
		}
		node, startErr := d.nodeOf(ep)
		st.LastError = startErr
		if node != nil {
			ns := node.Status()
			st.State, st.LastError, st.Attached = ns.State, ns.LastErr, ns.NetNS != ""
			st.Name = ns.Name
			st.KeyExpired = ns.KeyExpired
			if !ns.KeyExpiry.IsZero() {
				st.KeyExpiry = ns.KeyExpiry.UTC().Format(time.RFC3339)
			}
			for _, p := range ns.Addrs {
				st.IPs = append(st.IPs, p.Addr().String())
			}
		}
		out = append(out, st)
	}
	for _, u := range d.unrecoveredEndpoints() {
		out = append(out, EndpointStatus{
			Container: u.rec.ContainerName,
			Hostname:  u.rec.Hostname,
			Network:   short(u.rec.NetworkID),
			State:     "NotRecovered",
			LastError: u.err,
			DebugLog:  d.dir.HostDebugLog(u.rec.Hostname),
			Serve:     serveSummary(u.rec.Serve),
		})
	}
	slices.SortFunc(out, func(a, b EndpointStatus) int { return strings.Compare(a.Hostname, b.Hostname) })
	return out
}

// serveSummary is the container's serve labels in short form, e.g.
// "443=https:8080,5432=tcp:5432 via svc:db (direct)"; "" without any.
func serveSummary(sv tsopts.Serve) string {
	var parts []string
	for _, ep := range sv.Endpoints {
		p := fmt.Sprintf("%d=%s:%d", ep.Port, ep.Proto, ep.Target)
		if ep.Path != "" && ep.Path != "/" {
			p += ep.Path
		}
		parts = append(parts, p)
	}
	out := strings.Join(parts, ",")
	switch {
	case sv.Service != "" && sv.ServiceOnly:
		out += " via " + sv.Service + " only"
	case sv.Service != "":
		out += " via " + sv.Service + " (direct)"
	}
	return out
}
