package stack

import (
	"bytes"
	"context"
	"fmt"
	"time"

	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"
)

// Traffic is a node's WireGuard traffic and the paths to its peers, for
// metrics. It holds no per-peer detail.
type Traffic struct {
	// Peers is the number of peers in the node's netmap.
	Peers int
	// PeersByPath counts the peers by how the node reaches them, as
	// `tailscale status` tells them apart (ipnstate.PeerStatus): "direct"
	// (a current UDP address), "peer_relay" (through a peer relay), "derp"
	// (active, through a DERP server) and "idle" (no traffic in the last
	// two minutes).
	PeersByPath map[string]int
	// LastHandshake is the latest WireGuard handshake with any peer; zero
	// if none since the peers were last configured.
	LastHandshake time.Time
	// ReceivedBytes and SentBytes are the node's WireGuard bytes since it
	// started, by path (magicsock's usermetric labels: direct_ipv4,
	// direct_ipv6, derp, peer_relay_ipv4, peer_relay_ipv6). They only grow,
	// unlike the per-peer counters of wgengine, which restart when an idle
	// peer is dropped from the WireGuard configuration.
	ReceivedBytes map[string]float64
	SentBytes     map[string]float64
}

// Peer paths of [Traffic.PeersByPath].
const (
	PathDirect    = "direct"
	PathPeerRelay = "peer_relay"
	PathDERP      = "derp"
	PathIdle      = "idle"
)

// PeerPaths lists the keys [Traffic.PeersByPath] can have.
var PeerPaths = []string{PathDirect, PathPeerRelay, PathDERP, PathIdle}

// Traffic reads the node's figures from its LocalBackend: its status with
// peers (the wireguard engine's per-peer stats merged in) and magicsock's
// byte counters (the user metrics tailscaled serves as
// tailscaled_inbound_bytes_total / tailscaled_outbound_bytes_total). Both go
// through the node's LocalAPI and end when ctx does; the caller bounds it.
func (n *Node) Traffic(ctx context.Context) (Traffic, error) {
	st, err := n.lc.Status(ctx)
	if err != nil {
		return Traffic{}, fmt.Errorf("node status: %w", err)
	}
	t := Traffic{PeersByPath: map[string]int{}}
	for _, p := range st.Peer {
		t.Peers++
		t.PeersByPath[peerPath(p.Active, p.CurAddr, p.PeerRelay)]++
		if p.LastHandshake.After(t.LastHandshake) {
			t.LastHandshake = p.LastHandshake
		}
	}
	um, err := n.lc.UserMetrics(ctx)
	if err != nil {
		return t, fmt.Errorf("node user metrics: %w", err)
	}
	t.ReceivedBytes, t.SentBytes, err = parseByteCounters(um)
	return t, err
}

// peerPath is how the node reaches a peer, as `tailscale status` prints it.
func peerPath(active bool, curAddr, peerRelay string) string {
	switch {
	case curAddr != "":
		return PathDirect
	case peerRelay != "":
		return PathPeerRelay
	case active:
		return PathDERP
	default:
		return PathIdle
	}
}

// parseByteCounters picks magicsock's byte counters, by path, out of a
// node's user metrics (Prometheus text format).
func parseByteCounters(text []byte) (received, sent map[string]float64, err error) {
	p := expfmt.NewTextParser(model.UTF8Validation)
	families, err := p.TextToMetricFamilies(bytes.NewReader(text))
	if err != nil {
		return nil, nil, fmt.Errorf("node user metrics: %w", err)
	}
	byPath := func(name string) map[string]float64 {
		out := map[string]float64{}
		f := families[name]
		if f == nil {
			return out
		}
		for _, m := range f.GetMetric() {
			path := ""
			for _, l := range m.GetLabel() {
				if l.GetName() == "path" {
					path = l.GetValue()
				}
			}
			if path == "" {
				continue
			}
			switch {
			case m.GetCounter() != nil:
				out[path] += m.GetCounter().GetValue()
			case m.GetUntyped() != nil:
				out[path] += m.GetUntyped().GetValue()
			}
		}
		return out
	}
	return byPath("tailscaled_inbound_bytes_total"), byPath("tailscaled_outbound_bytes_total"), nil
}
