package tsopts

import (
	"net/netip"
	"reflect"
	"strings"
	"testing"
)

func TestParseEgress(t *testing.T) {
	good := []struct {
		labels map[string]string
		want   Egress
	}{
		{map[string]string{}, Egress{}},
		{map[string]string{"ts.accept-routes": "true"}, Egress{AcceptRoutes: true}},
		{map[string]string{"ts.advertise-routes": "192.168.1.0/24, 10.0.0.0/8,10.0.0.0/8,fd00::/64"},
			Egress{AdvertiseRoutes: []netip.Prefix{netip.MustParsePrefix("10.0.0.0/8"), netip.MustParsePrefix("192.168.1.0/24"), netip.MustParsePrefix("fd00::/64")}}},
		{map[string]string{"ts.advertise-exit-node": "true", "ts.accept-routes": "false"}, Egress{AdvertiseExitNode: true}},
		{map[string]string{"ts.exit-node": "Laptop.tailnet.test."}, Egress{ExitNode: "laptop.tailnet.test"}},
		{map[string]string{"ts.exit-node": "100.64.0.1", "ts.exit-node-allow-lan": "true"}, Egress{ExitNode: "100.64.0.1", ExitNodeAllowLAN: true}},
		{map[string]string{"ts.exit-node": "fd7a:115c:a1e0::1"}, Egress{ExitNode: "fd7a:115c:a1e0::1"}},
	}
	for _, tc := range good {
		c, err := ParseContainer(tc.labels, "c")
		if err != nil {
			t.Errorf("%v: %v", tc.labels, err)
			continue
		}
		if !reflect.DeepEqual(c.Egress, tc.want) {
			t.Errorf("%v: got %+v, want %+v", tc.labels, c.Egress, tc.want)
		}
	}
	bad := []struct {
		labels map[string]string
		want   []string // substrings of the error
	}{
		{map[string]string{"ts.accept-routes": "yes"}, []string{"ts.accept-routes", "true or false"}},
		{map[string]string{"ts.advertise-exit-node": ""}, []string{"ts.advertise-exit-node", "true or false"}},
		{map[string]string{"ts.advertise-routes": ""}, []string{"ts.advertise-routes", "empty", "10.0.0.0/24"}},
		{map[string]string{"ts.advertise-routes": "10.0.0.1/24"}, []string{"ts.advertise-routes", "non-address bits", "10.0.0.0/24"}},
		{map[string]string{"ts.advertise-routes": "10.0.0.1"}, []string{"ts.advertise-routes", `"10.0.0.1" is not a prefix`}},
		{map[string]string{"ts.advertise-routes": "0.0.0.0/0,::/0"}, []string{"ts.advertise-routes", "ts.advertise-exit-node=true"}},
		{map[string]string{"ts.advertise-routes": "100.100.0.0/16"}, []string{"ts.advertise-routes", "Tailscale's own"}},
		{map[string]string{"ts.advertise-routes": "100.0.0.0/8"}, []string{"ts.advertise-routes", "Tailscale's own"}},
		{map[string]string{"ts.advertise-routes": "fd7a:115c:a1e0:ab12::/64"}, []string{"ts.advertise-routes", "Tailscale's own"}},
		{map[string]string{"ts.advertise-routes": "fd7a:115c:a1e0:b1a:0:1::/96"}, []string{"ts.advertise-routes", "4via6"}},
		{map[string]string{"ts.advertise-routes": strings.Repeat("10.0.0.0/8,", MaxRoutes+1)}, []string{"ts.advertise-routes", "at most 64"}},
		{map[string]string{"ts.exit-node": ""}, []string{"ts.exit-node", "Tailscale IP"}},
		{map[string]string{"ts.exit-node": "8.8.8.8"}, []string{"ts.exit-node", "not a Tailscale address"}},
		{map[string]string{"ts.exit-node": "my_laptop"}, []string{"ts.exit-node", "MagicDNS name"}},
		{map[string]string{"ts.exit-node": "a..b"}, []string{"ts.exit-node", "MagicDNS name"}},
		{map[string]string{"ts.exit-node-allow-lan": "true"}, []string{"ts.exit-node-allow-lan=true", "ts.exit-node is not set"}},
		{map[string]string{"ts.exit-node-allow-lan": "1x", "ts.exit-node": "laptop"}, []string{"ts.exit-node-allow-lan", "true or false"}},
		{map[string]string{"ts.exit-node": "laptop", "ts.advertise-exit-node": "true"}, []string{"ts.exit-node", "ts.advertise-exit-node", "at the same time"}},
	}
	for _, tc := range bad {
		_, err := ParseContainer(tc.labels, "c")
		if err == nil {
			t.Errorf("%v: accepted", tc.labels)
			continue
		}
		for _, w := range tc.want {
			if !strings.Contains(err.Error(), w) {
				t.Errorf("%v: error %q does not contain %q", tc.labels, err, w)
			}
		}
	}
}

func FuzzParseEgress(f *testing.F) {
	f.Add("ts.advertise-routes", "10.0.0.0/24,fd00::/64")
	f.Add("ts.exit-node", "laptop.tailnet.test")
	f.Add("ts.exit-node", "100.64.0.1")
	f.Fuzz(func(t *testing.T, k, v string) {
		c, err := ParseContainer(map[string]string{k: v, "ts.exit-node-allow-lan": "false"}, "c")
		if err != nil {
			return
		}
		for _, p := range c.Egress.AdvertiseRoutes {
			if p != p.Masked() || p.Bits() == 0 || p.Overlaps(netip.MustParsePrefix("100.64.0.0/10")) {
				t.Fatalf("accepted route %v", p)
			}
		}
		if e := c.Egress.ExitNode; e != "" && (strings.ContainsAny(e, " \t\n/_") || len(e) > 253) {
			t.Fatalf("accepted exit node %q", e)
		}
	})
}
