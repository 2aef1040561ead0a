package stack

import (
	"expvar"
	"net/http/httptest"
	"testing"

	"tailscale.com/util/usermetric"
)

// The byte counters come out of the user metrics as tailscale.com writes
// them (usermetric's registry and handler, labels as magicsock's).
func TestParseByteCounters(t *testing.T) {
	type pathLabel struct {
		Path string
	}
	var reg usermetric.Registry
	in := usermetric.NewMultiLabelMapWithRegistry[pathLabel](&reg, "tailscaled_inbound_bytes_total", "counter", "Counts the number of bytes received from other peers")
	out := usermetric.NewMultiLabelMapWithRegistry[pathLabel](&reg, "tailscaled_outbound_bytes_total", "counter", "Counts the number of bytes sent to other peers")
	other := usermetric.NewMultiLabelMapWithRegistry[pathLabel](&reg, "tailscaled_inbound_packets_total", "counter", "packets")
	var v4, derp, sent expvar.Int
	v4.Set(1500)
	derp.Set(300)
	sent.Set(4200)
	in.Set(pathLabel{"direct_ipv4"}, &v4)
	in.Set(pathLabel{"derp"}, &derp)
	out.Set(pathLabel{"direct_ipv4"}, &sent)
	other.Set(pathLabel{"direct_ipv4"}, &sent)
	reg.NewGauge("tailscaled_home_derp_region_id", "home DERP").Set(1)

	rec := httptest.NewRecorder()
	reg.Handler(rec, httptest.NewRequest("GET", "/metrics", nil))
	rx, tx, err := parseByteCounters(rec.Body.Bytes())
	if err != nil {
		t.Fatalf("parse %q: %v", rec.Body.String(), err)
	}
	if len(rx) != 2 || rx["direct_ipv4"] != 1500 || rx["derp"] != 300 || len(tx) != 1 || tx["direct_ipv4"] != 4200 {
		t.Errorf("received %v sent %v from\n%s", rx, tx, rec.Body.String())
	}
}

func TestPeerPath(t *testing.T) {
	for _, tc := range []struct {
		active         bool
		curAddr, relay string
		want           string
	}{
		{true, "10.0.0.2:41641", "", PathDirect},
		{false, "10.0.0.2:41641", "", PathDirect},
		{true, "", "10.0.0.9:7777:12", PathPeerRelay},
		{true, "", "", PathDERP},
		{false, "", "", PathIdle},
	} {
		if got := peerPath(tc.active, tc.curAddr, tc.relay); got != tc.want {
			t.Errorf("peerPath(%v, %q, %q) = %s; want %s", tc.active, tc.curAddr, tc.relay, got, tc.want)
		}
	}
}
