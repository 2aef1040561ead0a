package devcontrol

import (
	"context"
	"slices"
	"tailscale.com/tsnet"
	"testing"
	"time"
)

// TestRenameNodeReachesTheNode: a rename through control shows in control's
// listing and in the node's own status (its next map response).
func TestRenameNodeReachesTheNode(t *testing.T) {
	s, err := Start(Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	a, err := up(t, s, t.TempDir(), "web", "", 30*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	defer a.Close()
	nodes := s.NodesByHostname("web")
	if len(nodes) != 1 || nodes[0].Name != "web."+DefaultMagicDNSDomain {
		t.Fatalf("before the rename: %+v; want one node named web.%s", nodes, DefaultMagicDNSDomain)
	}
	if err := s.RenameNode(nodes[0].NodeKey, "frontend"); err != nil {
		t.Fatal(err)
	}
	if got := s.NodesByHostname("web")[0].Name; got != "frontend."+DefaultMagicDNSDomain {
		t.Errorf("control lists %q after the rename", got)
	}
	lc, _ := a.LocalClient()
	want := "frontend." + DefaultMagicDNSDomain + "."
	deadline := time.Now().Add(10 * time.Second)
	for {
		st, err := lc.StatusWithoutPeers(context.Background())
		if err == nil && st.Self.DNSName == want {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("node's own name %q (%v) 10 s after the rename; want %q", st.Self.DNSName, err, want)
		}
		time.Sleep(100 * time.Millisecond)
	}
	if err := s.RenameNode(nodes[0].NodeKey, "a.b"); err == nil {
		t.Error("RenameNode accepted a name with a dot")
	}
}

// TestNoHTTPSCertsOffersNoCertDomain: with NoHTTPSCerts a node keeps its
// MagicDNS name but its netmap has no cert domains; without it, its name is
// one.
func TestNoHTTPSCertsOffersNoCertDomain(t *testing.T) {
	for _, noCerts := range []bool{false, true} {
		s, err := Start(Options{NoHTTPSCerts: noCerts})
		if err != nil {
			t.Fatal(err)
		}
		a, err := up(t, s, t.TempDir(), "web", "", 30*time.Second)
		if err != nil {
			s.Close()
			t.Fatal(err)
		}
		lc, _ := a.LocalClient()
		st, err := lc.StatusWithoutPeers(context.Background())
		a.Close()
		s.Close()
		if err != nil {
			t.Fatal(err)
		}
		fqdn := "web." + DefaultMagicDNSDomain
		if st.Self.DNSName != fqdn+"." {
			t.Errorf("NoHTTPSCerts=%v: node named %q; want %s.", noCerts, st.Self.DNSName, fqdn)
		}
		if got := slices.Contains(st.CertDomains, fqdn); got == noCerts {
			t.Errorf("NoHTTPSCerts=%v: cert domains %q", noCerts, st.CertDomains)
		}
	}
}

// TestEphemeralLogoutDeletesAndNamesAreSuffixed: an ephemeral node that logs
// out is gone from the listing and from its peers' netmaps, and its name is
// free; a new node asking for the name of a node that still exists (a
// persistent node, offline) gets "<name>-1", then "<name>-2".
func TestEphemeralLogoutDeletesAndNamesAreSuffixed(t *testing.T) {
	s, err := Start(Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	peer, err := up(t, s, t.TempDir(), "peer", "", 30*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	defer peer.Close()
	peerLC, _ := peer.LocalClient()
	peerSees := func(name string) bool {
		st, err := peerLC.Status(context.Background())
		if err != nil {
			return false
		}
		for _, p := range st.Peer {
			if p.DNSName == name+"." {
				return true
			}
		}
		return false
	}
	waitUntil := func(what string, cond func() bool) {
		t.Helper()
		deadline := time.Now().Add(10 * time.Second)
		for !cond() {
			if time.Now().After(deadline) {
				t.Fatalf("10 s without %s", what)
			}
			time.Sleep(50 * time.Millisecond)
		}
	}
	domain := "." + DefaultMagicDNSDomain

	eph := &tsnet.Server{Dir: t.TempDir(), Hostname: "web", ControlURL: s.URL(), Ephemeral: true, Logf: t.Logf}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if _, err := eph.Up(ctx); err != nil {
		t.Fatal(err)
	}
	waitUntil("the peer seeing web", func() bool { return peerSees("web" + domain) })
	lc, _ := eph.LocalClient()
	if err := lc.Logout(ctx); err != nil {
		t.Fatal(err)
	}
	eph.Close()
	if n := s.NodesByHostname("web"); len(n) != 0 {
		t.Errorf("logged-out ephemeral node still listed: %+v", n)
	}
	waitUntil("the peer dropping the logged-out ephemeral node", func() bool { return !peerSees("web" + domain) })

	var keep []*tsnet.Server
	for _, want := range []string{"web", "web-1", "web-2"} {
		srv, err := up(t, s, t.TempDir(), "web", "", 30*time.Second)
		if err != nil {
			t.Fatal(err)
		}
		keep = append(keep, srv)
		lc, _ := srv.LocalClient()
		st, err := lc.StatusWithoutPeers(context.Background())
		if err != nil || st.Self.DNSName != want+domain+"." {
			t.Errorf("node %d asking for web: named %q (%v); want %s%s.", len(keep), st.Self.DNSName, err, want, domain)
		}
		srv.Close() // offline, not logged out: it keeps its name
	}
	if n := s.NodesByHostname("web"); len(n) != 3 {
		t.Errorf("control lists %d nodes asking for web; want 3", len(n))
	}
}
