package stack

import (
	"context"
	"fmt"
	"net"
	"net/netip"
	"strings"
	"testing"
	"time"

	"github.com/tslink/tslink/test/netnstest"
)

// fakeResolver answers every A query with addr on listen, standing in for
// the host's resolver (Docker's embedded DNS forwards there).
func fakeResolver(t *testing.T, listen string, addr netip.Addr) {
	t.Helper()
	pc, err := net.ListenPacket("udp4", listen)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { pc.Close() })
	go netnstest.ServeDNS(pc, addr, nil)
}

func nslookup(ctr *netnstest.NetNS, name, server string) (string, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	out, err := ctr.Exec(ctx, "busybox", "nslookup", name, server)
	if err != nil {
		return "", fmt.Errorf("%v: %s", err, out)
	}
	return string(out), nil
}

// TestDNSQueriesToAnyResolverKnowTailnetNames: a query the container sends to
// an ordinary resolver (as Docker's embedded DNS forwards) is answered for
// tailnet names by MagicDNS and for other names by that resolver, which the
// tailnet's DNS config does not know.
func TestDNSQueriesToAnyResolverKnowTailnetNames(t *testing.T) {
	l := newLab(t)
	internet := netip.MustParseAddr("10.239.0.99")
	fakeResolver(t, netnstest.LabAddr+":53", internet)
	_, ctr := l.startNode(t, l.config("dnsctr"))
	laptopIP := l.laptop.IPv4(t).String()
	// Like an --internal network: no route out, so nothing is forwarded
	// (tailnet names still resolve, below).
	if out, err := nslookup(ctr, "example.com", netnstest.LabAddr); err == nil && strings.Contains(out, internet.String()) {
		t.Errorf("a container without a route to the resolver got an answer from it:\n%s", out)
	}
	// A default route, as docker_gwbridge gives (packets to port 53 still go
	// through tailscale0 by the DNS rule).
	if out, err := ctr.Exec(context.Background(), "ip", "route", "add", "default", "dev", "lo"); err != nil {
		t.Fatalf("%v: %s", err, out)
	}
	cases := []struct{ name, want string }{
		{l.laptop.Hostname, laptopIP},
		{l.laptop.Hostname + "." + l.control.MagicDNSDomain(), laptopIP},
		{"example.com", internet.String()},
	}
	for _, tc := range cases {
		var out string
		err := waitFor(10*time.Second, func() (err error) {
			out, err = nslookup(ctr, tc.name, netnstest.LabAddr)
			if err == nil && !strings.Contains(out, tc.want) {
				err = fmt.Errorf("answer lacks %s:\n%s", tc.want, out)
			}
			return err
		})
		if err != nil {
			t.Errorf("nslookup %s %s: %v", tc.name, netnstest.LabAddr, err)
		}
	}
}
