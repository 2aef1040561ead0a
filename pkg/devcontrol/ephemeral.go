package devcontrol

import (
	"slices"
	"time"

	"tailscale.com/tailcfg"
)

// Tailscale's control deletes an ephemeral node when it logs out; testcontrol
// keeps it (offline) and has no delete. devcontrol deletes it as far as
// anyone can see: [Server.Nodes] leaves it out, its name is free again
// ([Server.nameNode]) and no netmap lists it as a peer. The entry stays in
// testcontrol, which numbers new nodes (and their IPs) by its count of
// entries, so no address is ever handed out twice.
//
// Peers drop it because devcontrol then builds every connected node's netmap
// itself ([Server.pushAll]), as it does for custom packet filters.

// noteEphemeral records an accepted register request: a new ephemeral node,
// or an ephemeral node's logout (a request whose expiry is in the past,
// which is how a client logs out), which deletes it.
func (s *Server) noteEphemeral(req *tailcfg.RegisterRequest) {
	loggedOut := !req.Expiry.IsZero() && req.Expiry.Before(time.Now())
	s.mu.Lock()
	if req.Ephemeral && !loggedOut {
		s.ephemeral[req.NodeKey] = true
	}
	deleted := loggedOut && s.ephemeral[req.NodeKey]
	if deleted {
		s.deleted[req.NodeKey] = true
	}
	s.mu.Unlock()
	if deleted {
		s.schedulePush()
	}
}

// withoutDeletedLocked removes deleted nodes from a map response's peers
// and names them in PeersRemoved: a full peer list replaces the node's, but
// an empty one means "no change" (tailcfg.MapResponse.Peers), so the
// removal must also be said as a delta. s.mu must be held.
func (s *Server) withoutDeletedLocked(res *tailcfg.MapResponse) {
	res.Peers = slices.DeleteFunc(res.Peers, func(p *tailcfg.Node) bool {
		if s.deleted[p.Key] {
			res.PeersRemoved = append(res.PeersRemoved, p.ID)
			return true
		}
		return false
	})
	if len(res.Peers) == 0 {
		res.Peers = nil
	}
}
