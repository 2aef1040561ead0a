package devcontrol

import (
	"context"
	"slices"
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
