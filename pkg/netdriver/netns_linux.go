package netdriver

import (
	"strings"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"

	"github.com/tslink/tslink/stack"
)

// hasAddr reports whether tailscale0 in the netns at nsPath carries ip.
func hasAddr(nsPath, ip string) bool {
	nsh, err := netns.GetFromPath(nsPath)
	if err != nil {
		return true // netns gone: nothing to re-apply
	}
	defer nsh.Close()
	h, err := netlink.NewHandleAt(nsh)
	if err != nil {
		return true
	}
	defer h.Close()
	l, err := h.LinkByName(stack.TUNName)
	if err != nil {
		return true
	}
	addrs, err := h.AddrList(l, unix.AF_INET6)
	if err != nil {
		return true
	}
	for _, a := range addrs {
		if strings.EqualFold(a.IP.String(), ip) {
			return true
		}
	}
	return false
}
