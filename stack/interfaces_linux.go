package stack

import (
	"errors"
	"net"
	"slices"
	"sync"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
	"tailscale.com/net/netmon"
)

// Every node has its own netmon.Monitor, and each one, on every link or
// address change in the plugin's network namespace, reads the interface
// list and every interface's addresses; so does each node's magicsock
// whenever it re-gathers its endpoints. Go's net package does that with one
// netlink dump for the links and one more for the addresses of each link.
// A container start changes links several times (its TUN and its macvlan
// appear and move out), so a burst of starts made every node of the
// process repeat those dumps (docs/bench/notes.md).
//
// sharedInterfaceList answers them all: one link dump and one address dump
// for all links (vishvananda/netlink), shared by every caller that asked
// while no dump had begun yet. A caller never gets a list read before it
// asked, so a monitor woken by a change sees that change, as with its own
// dumps. It is the getter of netmon.RegisterInterfaceGetter, which
// tailscale.com offers for platforms where net.Interfaces does not serve;
// netmon uses Interface.AltAddrs, when not nil, instead of asking the
// kernel for an interface's addresses.
var sharedInterfaceList interfaceDumps

// registerInterfaceGetter makes every netmon of the process read interfaces
// through [sharedInterfaceList]. It is process-wide (netmon's getter is a
// package variable); [applyProcessDefaults] calls it once.
func registerInterfaceGetter() {
	netmon.RegisterInterfaceGetter(sharedInterfaceList.get)
}

// interfaceDumps coalesces interface dumps: at most one runs, and the
// callers that arrive meanwhile share the next one.
type interfaceDumps struct {
	mu      sync.Mutex
	running bool
	next    *interfaceDump // the dump the callers since the running one began wait for
}

// interfaceDump is one dump's result, ready when done is closed. list is
// shared by its callers: neither it nor the net.Interface values and
// address slices it points to may be modified (netmon does not).
type interfaceDump struct {
	done chan struct{}
	list []netmon.Interface
	err  error
}

// get returns the interfaces of this process's network namespace with their
// addresses (AltAddrs never nil), read after get was called. Errors are
// netlink's.
func (d *interfaceDumps) get() ([]netmon.Interface, error) {
	d.mu.Lock()
	w := d.next
	if w == nil {
		w = &interfaceDump{done: make(chan struct{})}
		d.next = w
	}
	if !d.running {
		d.running = true
		go d.run()
	}
	d.mu.Unlock()
	<-w.done
	return slices.Clone(w.list), w.err
}

// run performs the queued dumps one after another until none is queued.
func (d *interfaceDumps) run() {
	for {
		d.mu.Lock()
		w := d.next
		d.next = nil
		if w == nil {
			d.running = false
			d.mu.Unlock()
			return
		}
		d.mu.Unlock()
		w.list, w.err = dumpInterfaces()
		close(w.done)
	}
}

// dumpInterfaces reads every link and every address of the current network
// namespace, in two netlink dumps, in the form net.Interfaces and
// net.Interface.Addrs give them (the address of an IPv4 point-to-point link
// is its local one, as in Go's net package).
//
// A dump that a concurrent change interrupted (netlink.ErrDumpInterrupted)
// is repeated, up to dumpAttempts in all; the last one's result is used even
// so, as Go's net package uses every dump's.
func dumpInterfaces() ([]netmon.Interface, error) {
	var links []netlink.Link
	var addrs []netlink.Addr
	for attempt := 1; ; attempt++ {
		var linkErr, addrErr error
		links, linkErr = netlink.LinkList()
		if linkErr != nil && !errors.Is(linkErr, netlink.ErrDumpInterrupted) {
			return nil, linkErr
		}
		addrs, addrErr = netlink.AddrList(nil, netlink.FAMILY_ALL)
		if addrErr != nil && !errors.Is(addrErr, netlink.ErrDumpInterrupted) {
			return nil, addrErr
		}
		if (linkErr == nil && addrErr == nil) || attempt == dumpAttempts {
			break
		}
	}
	byIndex := make(map[int][]net.Addr, len(links))
	for _, a := range addrs {
		if a.IPNet == nil {
			continue
		}
		byIndex[a.LinkIndex] = append(byIndex[a.LinkIndex], &net.IPNet{IP: a.IP, Mask: a.Mask})
	}
	list := make([]netmon.Interface, 0, len(links))
	for _, l := range links {
		at := l.Attrs()
		addrs := byIndex[at.Index]
		if addrs == nil {
			addrs = []net.Addr{}
		}
		list = append(list, netmon.Interface{
			Interface: &net.Interface{Index: at.Index, MTU: at.MTU, Name: at.Name, HardwareAddr: at.HardwareAddr, Flags: netFlags(at.RawFlags)},
			AltAddrs:  addrs,
		})
	}
	return list, nil
}

// dumpAttempts bounds the dumps of [dumpInterfaces] when changes interrupt
// them.
const dumpAttempts = 3

// netFlags converts a link's IFF_* flags to net.Flags as Go's net package
// does on Linux.
func netFlags(raw uint32) net.Flags {
	var f net.Flags
	for _, m := range []struct {
		iff  uint32
		flag net.Flags
	}{
		{unix.IFF_UP, net.FlagUp},
		{unix.IFF_BROADCAST, net.FlagBroadcast},
		{unix.IFF_LOOPBACK, net.FlagLoopback},
		{unix.IFF_POINTOPOINT, net.FlagPointToPoint},
		{unix.IFF_MULTICAST, net.FlagMulticast},
		{unix.IFF_RUNNING, net.FlagRunning},
	} {
		if raw&m.iff != 0 {
			f |= m.flag
		}
	}
	return f
}
