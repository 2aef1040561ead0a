package netdriver

import (
	"os"
	"strings"
	"testing"

	"github.com/docker/go-plugins-helpers/network"
	"github.com/tslink/tslink/pkg/statedir"
	"github.com/tslink/tslink/pkg/tsopts"
)

func TestCheckTailnet(t *testing.T) {
	root := t.TempDir()
	d := New(Config{StateRoot: root, HostStateRoot: "/host/state"})
	ep := &endpoint{hostname: "db", stateDir: d.dir.Node("db")}
	os.MkdirAll(ep.stateDir, 0o700)
	persistent := &tsopts.Network{ControlURL: "http://c:1", Ephemeral: false}
	statedir.WriteTailnet(ep.stateDir, statedir.Tailnet{ControlURL: persistent.ControlURL, Tags: []string{"tag:a"}})

	if err := d.checkTailnet(ep, persistent, []string{"tag:a"}); err != nil {
		t.Errorf("same tailnet and tags: %v", err)
	}
	for name, tc := range map[string]struct {
		nw   *tsopts.Network
		tags []string
		want string
	}{
		"other control": {&tsopts.Network{ControlURL: "http://other:1"}, []string{"tag:a"}, "tailnet at http://c:1"},
		"ephemeral":     {&tsopts.Network{ControlURL: "http://c:1", Ephemeral: true}, []string{"tag:a"}, "wants a ephemeral node"},
		"other tags":    {persistent, []string{"tag:b"}, "registered with tags: tag:a and this container asks for tags: tag:b"},
	} {
		err := d.checkTailnet(ep, tc.nw, tc.tags)
		if err == nil || !strings.Contains(err.Error(), tc.want) || !strings.Contains(err.Error(), "/host/state/by-hostname/db") {
			t.Errorf("%s: %v; want an error with %q and the host path", name, err, tc.want)
		}
	}

	// A stale ephemeral identity is swept, not refused.
	statedir.WriteTailnet(ep.stateDir, statedir.Tailnet{ControlURL: "http://old:1", Ephemeral: true})
	if err := d.checkTailnet(ep, persistent, nil); err != nil {
		t.Errorf("stale ephemeral dir: %v", err)
	}
	if _, err := os.Stat(ep.stateDir); !os.IsNotExist(err) {
		t.Errorf("stale ephemeral dir not removed: %v", err)
	}
}

func TestCreateNetworkRefusesTailnetSubnets(t *testing.T) {
	for _, tc := range []struct {
		v4, v6 string
		bad    string // "" : accepted
	}{
		{"172.30.0.0/16", "", ""},
		{"100.100.0.0/24", "", "100.64.0.0/10"},
		{"100.0.0.0/8", "", "100.64.0.0/10"},
		{"100.128.0.0/16", "", ""},
		{"172.30.0.0/16", "fd7a:115c:a1e0:1::/64", "fd7a:115c:a1e0::/48"},
	} {
		req := &network.CreateNetworkRequest{IPv4Data: []*network.IPAMData{{Pool: tc.v4}}}
		if tc.v6 != "" {
			req.IPv6Data = []*network.IPAMData{{Pool: tc.v6}}
		}
		err := checkSubnets(req)
		switch {
		case tc.bad == "" && err != nil:
			t.Errorf("%s %s: %v", tc.v4, tc.v6, err)
		case tc.bad != "" && (err == nil || !strings.Contains(err.Error(), tc.bad) || !strings.Contains(err.Error(), "--subnet")):
			t.Errorf("%s %s: %v, want an error naming --subnet and %s", tc.v4, tc.v6, err, tc.bad)
		}
	}
}
