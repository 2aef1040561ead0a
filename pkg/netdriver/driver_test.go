package netdriver

import (
	"os"
	"strings"
	"testing"

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
