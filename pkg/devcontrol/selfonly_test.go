package devcontrol

import (
	"net/netip"
	"testing"

	"tailscale.com/tailcfg"
	"tailscale.com/types/key"
)

// TestSelfOnlyUpdate: a lite map update that differs from the stored node
// only in NetInfo fields other than PreferredDERP changes nothing peers
// see; any other difference does.
func TestSelfOnlyUpdate(t *testing.T) {
	s, err := Start(Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	s.control.AddFakeNode()
	stored := s.control.AllNodes()[0]
	stored.Cap = tailcfg.CurrentCapabilityVersion
	stored.Endpoints = []netip.AddrPort{netip.MustParseAddrPort("10.0.0.1:41641")}
	stored.Hostinfo = (&tailcfg.Hostinfo{Hostname: "a", NetInfo: &tailcfg.NetInfo{PreferredDERP: 1, MappingVariesByDestIP: "false", DERPLatency: map[string]float64{"1-v4": 0.001}}}).View()
	s.control.UpdateNode(stored)

	update := func(change func(*tailcfg.MapRequest)) *tailcfg.MapRequest {
		req := &tailcfg.MapRequest{
			Version:   stored.Cap,
			NodeKey:   stored.Key,
			DiscoKey:  stored.DiscoKey,
			Endpoints: []netip.AddrPort{netip.MustParseAddrPort("10.0.0.1:41641")},
			Hostinfo:  &tailcfg.Hostinfo{Hostname: "a", NetInfo: &tailcfg.NetInfo{PreferredDERP: 1, DERPLatency: map[string]float64{"1-v4": 0.002}}},
		}
		change(req)
		return req
	}
	for _, tc := range []struct {
		name   string
		change func(*tailcfg.MapRequest)
		want   bool
	}{
		{"netcheck findings and latencies", func(*tailcfg.MapRequest) {}, true},
		{"DERP home", func(r *tailcfg.MapRequest) { r.Hostinfo.NetInfo.PreferredDERP = 2 }, false},
		{"endpoints", func(r *tailcfg.MapRequest) { r.Endpoints[0] = netip.MustParseAddrPort("10.0.0.1:41642") }, false},
		{"disco key", func(r *tailcfg.MapRequest) { r.DiscoKey = key.NewDisco().Public() }, false},
		{"hostname", func(r *tailcfg.MapRequest) { r.Hostinfo.Hostname = "b" }, false},
		{"requested tags", func(r *tailcfg.MapRequest) { r.Hostinfo.RequestTags = []string{"tag:x"} }, false},
		{"no NetInfo", func(r *tailcfg.MapRequest) { r.Hostinfo.NetInfo = nil }, false},
		{"unknown node", func(r *tailcfg.MapRequest) { r.NodeKey = key.NewNode().Public() }, false},
	} {
		if got := s.selfOnlyUpdate(update(tc.change)); got != tc.want {
			t.Errorf("%s: selfOnlyUpdate = %v, want %v", tc.name, got, tc.want)
		}
	}
}
