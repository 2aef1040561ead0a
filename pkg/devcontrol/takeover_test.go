package devcontrol

import (
	"context"
	"testing"
	"time"

	"tailscale.com/tailcfg"
)

// TestRestartedNodeGetsNetmapWhileControlBuildsNetmaps: while devcontrol
// builds netmaps itself (here: a custom packet filter), a node restarted
// from its state, which testcontrol no longer sends automatic map
// responses, still gets a new netmap on its new poll: it sees a peer that
// joined while it was down.
func TestRestartedNodeGetsNetmapWhileControlBuildsNetmaps(t *testing.T) {
	s, err := Start(Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	s.SetPacketFilter(tailcfg.FilterAllowAll)
	dir := t.TempDir()
	a, err := up(t, s, dir, "keep", "", 30*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	waitOnline(t, s, "keep")
	s.SetPacketFilter(tailcfg.FilterAllowAll) // the node now gets raw map responses only
	a.Close()

	for i, peer := range []string{"peer-a", "peer-b"} {
		p, err := up(t, s, t.TempDir(), peer, "", 30*time.Second)
		if err != nil {
			t.Fatal(err)
		}
		defer p.Close()
		waitOnline(t, s, peer)
		a, err = up(t, s, dir, "keep", "", 30*time.Second)
		if err != nil {
			t.Fatalf("restart %d from state: %v", i+1, err)
		}
		lc, _ := a.LocalClient()
		for deadline := time.Now().Add(10 * time.Second); ; time.Sleep(50 * time.Millisecond) {
			st, err := lc.Status(context.Background())
			if err == nil && len(st.Peer) == i+1 {
				break
			}
			if time.Now().After(deadline) {
				t.Fatalf("restart %d: the node has %d peers 10 s after it came up; want %d (%v)", i+1, len(st.Peer), i+1, err)
			}
		}
		a.Close()
	}
}
