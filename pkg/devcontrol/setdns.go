package devcontrol

import "tailscale.com/tailcfg"

// OnSetDNS calls publish with each DNS record a node asks control to
// publish (/machine/set-dns: Tailscale's client sets the TXT record of an
// ACME DNS-01 challenge, "_acme-challenge.<node FQDN>", this way before it
// asks the ACME server to validate). testcontrol has already refused
// records that are not a challenge for one of the node's certificate
// domains. Call it before the nodes that fetch certificates start.
func (s *Server) OnSetDNS(publish func(name, value string)) {
	s.withControlLocked(func() {
		s.control.OnSetDNS = func(req *tailcfg.SetDNSRequest) error {
			publish(req.Name, req.Value)
			return nil
		}
	})
}
