// Package hostdns names the resolvers that a container's queries to
// MagicDNS's 100.100.100.100 go to for names outside the tailnet when control
// sends no nameservers: the plugin setting TS_DNS_UPSTREAMS, else the host's
// own resolvers.
//
// On a host that runs tailscaled with MagicDNS the host's resolv.conf names
// 100.100.100.100 (Tailscale's MagicDNS address), which inside a tslink
// container is the container's own node; so addresses in Tailscale's ranges
// (100.64.0.0/10, fd7a:115c:a1e0::/48) and loopback addresses (a local stub
// such as systemd-resolved's 127.0.0.53) are never upstreams. Where
// systemd-resolved runs, its upstream list is
// /run/systemd/resolve/resolv.conf, which is read first.
package hostdns

import (
	"bufio"
	"bytes"
	"fmt"
	"net/netip"
	"strings"
)

// ResolvConfPaths are the host files read for the host's resolvers, in
// order: systemd-resolved's upstream list, then the classic resolv.conf.
var ResolvConfPaths = []string{"/run/systemd/resolve/resolv.conf", "/etc/resolv.conf"}

var (
	tailnetV4 = netip.MustParsePrefix("100.64.0.0/10")
	tailnetV6 = netip.MustParsePrefix("fd7a:115c:a1e0::/48")
)

// Usable reports whether a can be an upstream resolver of a container:
// not in Tailscale's ranges, not loopback, link-local, multicast or
// unspecified.
func Usable(a netip.Addr) bool {
	a = a.Unmap()
	return a.IsValid() && !tailnetV4.Contains(a) && !tailnetV6.Contains(a) && !a.IsLoopback() &&
		!a.IsLinkLocalUnicast() && !a.IsMulticast() && !a.IsUnspecified() && a.Zone() == ""
}

// ParseUpstreams parses setting (named name in errors) as a comma- or
// space-separated list of resolvers, each an IP address or IP:port
// ("1.1.1.1, [2606:4700:4700::1111]:53"); port 53 by default. Empty is no
// upstreams. An address that [Usable] refuses is an error.
func ParseUpstreams(name, setting string) ([]netip.AddrPort, error) {
	var out []netip.AddrPort
	for _, f := range strings.FieldsFunc(setting, func(r rune) bool { return r == ',' || r == ' ' || r == '\t' }) {
		ap, err := parseAddrPort(f)
		if err != nil {
			return nil, fmt.Errorf("%s: %q is not an IP address or IP:port (e.g. 1.1.1.1 or [2606:4700:4700::1111]:53)", name, f)
		}
		if !Usable(ap.Addr()) {
			return nil, fmt.Errorf("%s: %s is not usable as an upstream resolver (loopback, link-local, multicast and Tailscale's own ranges are refused)", name, ap.Addr())
		}
		out = append(out, ap)
	}
	return out, nil
}

func parseAddrPort(s string) (netip.AddrPort, error) {
	if a, err := netip.ParseAddr(s); err == nil {
		return netip.AddrPortFrom(a, 53), nil
	}
	return netip.ParseAddrPort(s)
}

// FromResolvConf returns the usable nameservers of a resolv.conf.
func FromResolvConf(data []byte) []netip.AddrPort {
	var out []netip.AddrPort
	sc := bufio.NewScanner(bytes.NewReader(data))
	for sc.Scan() {
		f := strings.Fields(sc.Text())
		if len(f) < 2 || f[0] != "nameserver" {
			continue
		}
		a, err := netip.ParseAddr(f[1])
		if err != nil || !Usable(a) {
			continue
		}
		out = append(out, netip.AddrPortFrom(a.Unmap(), 53))
	}
	return out
}

// HostResolvers returns the usable nameservers of the first of
// [ResolvConfPaths] that read (the host's view of it) returns and that names
// any.
func HostResolvers(read func(path string) ([]byte, error)) []netip.AddrPort {
	for _, p := range ResolvConfPaths {
		if data, err := read(p); err == nil {
			if ups := FromResolvConf(data); len(ups) > 0 {
				return ups
			}
		}
	}
	return nil
}
