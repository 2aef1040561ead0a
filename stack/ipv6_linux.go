package stack

import (
	"context"
	"net/netip"
	"time"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
)

// IPv6 upkeep after Attach: how often, and how many times, [Node.KeepIPv6]
// checks tailscale0's IPv6 address (15 s in all, which covers a container's
// start).
const (
	ipv6CheckInterval = 100 * time.Millisecond
	ipv6Checks        = 150
)

// KeepIPv6 re-applies tailscale0's IPv6 address ([Node.ReapplyIPv6])
// whenever it is missing, checking every ipv6CheckInterval for a while after
// Attach, until ctx ends or the node closes. Docker disables IPv6 in the
// sandbox after Join on non-IPv6 networks, which drops the address. Each
// re-apply is logged to the node's log. It returns at once if the node has
// no IPv6 address; call it after [Node.Attach].
func (n *Node) KeepIPv6(ctx context.Context) {
	_, v6 := n.Addrs()
	if !v6.IsValid() {
		return
	}
	for range ipv6Checks {
		select {
		case <-ctx.Done():
			return
		case <-time.After(ipv6CheckInterval):
		}
		n.mu.Lock()
		missing := !n.closed && n.nsPath != "" && !hasAddr(n.nsPath, v6)
		n.mu.Unlock()
		if !missing {
			continue
		}
		if err := n.ReapplyIPv6(); err != nil {
			n.logf("tslink: re-applying IPv6: %v", err)
		} else {
			n.logf("tslink: IPv6 %v re-applied on tailscale0", v6)
		}
	}
}

// hasAddr reports whether tailscale0 in the netns at nsPath carries ip. If it
// cannot tell (netns or link gone) it reports true: nothing to re-apply.
func hasAddr(nsPath string, ip netip.Addr) bool {
	found := true
	withNetNSHandle(nsPath, func(h *netlink.Handle) error {
		l, err := h.LinkByName(TUNName)
		if err != nil {
			return nil
		}
		addrs, err := h.AddrList(l, unix.AF_INET6)
		if err != nil {
			return nil
		}
		found = false
		for _, a := range addrs {
			if p, ok := ipNetToPrefix(a.IPNet); ok && p.Addr() == ip {
				found = true
			}
		}
		return nil
	})
	return found
}
