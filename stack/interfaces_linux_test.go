package stack

import (
	"fmt"
	"net"
	"slices"
	"sync"
	"testing"

	"github.com/tslink/tslink/test/netnstest"
	"tailscale.com/net/netmon"
)

// describeInterfaces renders interfaces and their addresses in a form that
// compares the getter's list with Go's net package.
func describeInterfaces(list []netmon.Interface) ([]string, error) {
	var out []string
	for _, i := range list {
		addrs, err := i.Addrs()
		if err != nil {
			return nil, err
		}
		var as []string
		for _, a := range addrs {
			as = append(as, a.String())
		}
		slices.Sort(as)
		out = append(out, fmt.Sprintf("%d %s mtu=%d flags=%v addrs=%v", i.Index, i.Name, i.MTU, i.Flags, as))
	}
	slices.Sort(out)
	return out, nil
}

// TestSharedInterfaceListMatchesNetPackage: the list every node's netmon
// reads (one link dump, one address dump) says what net.Interfaces and
// net.Interface.Addrs say, point-to-point and address-less links included;
// a link added before a call is in that call's list, also when many callers
// ask at once.
func TestSharedInterfaceListMatchesNetPackage(t *testing.T) {
	netnstest.RequireRoot(t) // in the test binary's own netns (netnstest.Main)
	netnstest.Run(t, "ip", "link", "add", "tslv0", "type", "veth", "peer", "name", "tslv1")
	netnstest.Run(t, "ip", "link", "set", "tslv0", "up")
	netnstest.Run(t, "ip", "addr", "add", "10.77.0.1/24", "dev", "tslv0")
	netnstest.Run(t, "ip", "addr", "add", "fd77::1/64", "dev", "tslv0")
	netnstest.Run(t, "ip", "tuntap", "add", "tslt0", "mode", "tun")
	netnstest.Run(t, "ip", "addr", "add", "10.78.0.1", "peer", "10.78.0.2", "dev", "tslt0")
	t.Cleanup(func() {
		netnstest.Run(t, "ip", "link", "del", "tslv0")
		netnstest.Run(t, "ip", "link", "del", "tslt0")
	})

	ifs, err := net.Interfaces()
	if err != nil {
		t.Fatal(err)
	}
	var fromNet []netmon.Interface
	for i := range ifs {
		fromNet = append(fromNet, netmon.Interface{Interface: &ifs[i]})
	}
	want, err := describeInterfaces(fromNet)
	if err != nil {
		t.Fatal(err)
	}
	list, err := sharedInterfaceList.get()
	if err != nil {
		t.Fatal(err)
	}
	got, err := describeInterfaces(list)
	if err != nil {
		t.Fatal(err)
	}
	if !slices.Equal(got, want) {
		t.Errorf("shared interface list:\n%v\nnet package:\n%v", got, want)
	}

	netnstest.Run(t, "ip", "link", "add", "tslv2", "type", "veth", "peer", "name", "tslv3")
	t.Cleanup(func() { netnstest.Run(t, "ip", "link", "del", "tslv2") })
	var wg sync.WaitGroup
	for range 50 {
		wg.Go(func() {
			list, err := sharedInterfaceList.get()
			if err != nil {
				t.Error(err)
				return
			}
			if !slices.ContainsFunc(list, func(i netmon.Interface) bool { return i.Name == "tslv2" }) {
				t.Error("a link added before the call is missing from its list")
			}
		})
	}
	wg.Wait()
}
