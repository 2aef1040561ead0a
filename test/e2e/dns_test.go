package e2e

import (
	"context"
	"fmt"
	"net"
	"net/netip"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/tslink/tslink/test/netnstest"
)

// internetQueries records the names the internet's resolver was asked.
var internetQueries struct {
	sync.Mutex
	names []string
}

// serveInternetDNS runs the internet's resolver on internetAddr:53: every A
// query is answered with internetAddr (dockerd started with --dns
// internetAddr makes it the containers' upstream, as a host's resolver is).
func serveInternetDNS(t *testing.T, ns *netnstest.NetNS) {
	var pc net.PacketConn
	if err := ns.Do(func() (err error) { pc, err = net.ListenPacket("udp4", internetAddr+":53"); return err }); err != nil {
		t.Fatalf("internet DNS: %v", err)
	}
	t.Cleanup(func() { pc.Close() })
	go netnstest.ServeDNS(pc, netip.MustParseAddr(internetAddr), func(name string) {
		internetQueries.Lock()
		internetQueries.names = append(internetQueries.names, name)
		internetQueries.Unlock()
	})
}

// TestMagicDNSInContainers: with no docker flag, a container resolves tailnet
// short names and FQDNs, other containers by name (Docker's DNS), and
// internet names through the host's resolver, while the tailnet's DNS config
// has no upstream resolvers (testcontrol sends none).
func TestMagicDNSInContainers(t *testing.T) {
	l := newLabWith(t, []string{"--dns", internetAddr})
	l.createNetwork("tn")
	l.docker("run", "-d", "--name", "alpha", "--network", "tn", image, "sleep", "3600")
	l.docker("run", "-d", "--name", "beta", "--network", "tn", image, "sleep", "3600")
	betaTS := l.tsIP("beta", "-4")
	betaEth := strings.TrimSpace(l.docker("inspect", "-f", "{{range .NetworkSettings.Networks}}{{.IPAddress}}{{end}}", "beta"))
	laptop := l.laptop.IPv4(t).String()
	domain := l.control.MagicDNSDomain()
	cases := []struct{ name, want string }{
		{l.laptop.Hostname, laptop},
		{l.laptop.Hostname + "." + domain, laptop},
		{"beta." + domain, betaTS},
		{"beta", betaEth},
		{"www.example.test", internetAddr},
	}
	for _, tc := range cases {
		var out string
		err := netnstest.WaitFor(10*time.Second, func() (err error) {
			out, err = l.engine.Docker(context.Background(), "exec", "alpha", "nslookup", tc.name)
			if err == nil && !strings.Contains(out, tc.want) {
				err = fmt.Errorf("answer lacks %s:\n%s", tc.want, out)
			}
			return err
		})
		if err != nil {
			t.Errorf("nslookup %s in a container: %v", tc.name, err)
		} else {
			t.Logf("nslookup %s -> %s", tc.name, tc.want)
		}
	}
	// Tailnet names, in any record type, and reverse lookups of tailnet
	// addresses stay on the tailnet.
	l.docker("exec", "alpha", "nslookup", "-type=AAAA", l.laptop.Hostname)
	l.docker("exec", "alpha", "nslookup", laptop)
	internetQueries.Lock()
	for _, name := range internetQueries.names {
		if strings.HasPrefix(name, l.laptop.Hostname+".") || strings.Contains(name, domain) || strings.HasSuffix(name, ".100.in-addr.arpa.") {
			t.Errorf("the internet's resolver was asked for tailnet name %s", name)
		}
	}
	internetQueries.Unlock()
	l.docker("rm", "-f", "alpha", "beta")
	l.docker("network", "rm", "tn")
	l.noLeftovers()
}

// TestQuad100ResolvesInternetNames: an engine whose containers' resolver is
// 100.100.100.100 (as on a host running Tailscale with MagicDNS) with the
// plugin setting TS_DNS_UPSTREAMS: tailnet names come from the container's
// node, internet names from the upstream (asked from the container's netns,
// through Docker's NAT); on an --internal network internet names do not
// resolve and the upstream is not asked.
func TestQuad100ResolvesInternetNames(t *testing.T) {
	l := newLabWith(t, []string{"--dns", "100.100.100.100"}, "TS_DNS_UPSTREAMS="+internetAddr)
	l.createNetwork("tn")
	l.createNetwork("iso", "--internal")
	l.docker("run", "-d", "--name", "alpha", "--network", "tn", image, "sleep", "3600")
	l.docker("run", "-d", "--name", "inner", "--network", "iso", image, "sleep", "3600")
	laptop := l.laptop.IPv4(t).String()
	for _, tc := range []struct{ ctr, name, want string }{
		{"alpha", l.laptop.Hostname, laptop},
		{"alpha", "quad100.example.test", internetAddr},
		{"inner", l.laptop.Hostname, laptop},
	} {
		err := netnstest.WaitFor(10*time.Second, func() error {
			out, err := l.engine.Docker(context.Background(), "exec", tc.ctr, "nslookup", tc.name)
			if err == nil && !strings.Contains(out, tc.want) {
				err = fmt.Errorf("answer lacks %s:\n%s", tc.want, out)
			}
			return err
		})
		if err != nil {
			t.Errorf("nslookup %s in %s: %v", tc.name, tc.ctr, err)
		}
	}
	if out, err := l.engine.Docker(context.Background(), "exec", "inner", "nslookup", "internal.example.test"); err == nil && strings.Contains(out, internetAddr) {
		t.Errorf("a container on an --internal network resolved an internet name:\n%s", out)
	}
	internetQueries.Lock()
	for _, name := range internetQueries.names {
		if strings.HasPrefix(name, "internal.example.test") {
			t.Errorf("the upstream was asked %s for a container on an --internal network", name)
		}
	}
	internetQueries.Unlock()
	l.docker("rm", "-f", "alpha", "inner")
	l.docker("network", "rm", "tn", "iso")
	l.noLeftovers()
}
