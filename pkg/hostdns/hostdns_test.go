package hostdns

import (
	"errors"
	"fmt"
	"net/netip"
	"slices"
	"strings"
	"testing"
)

func TestParseUpstreams(t *testing.T) {
	got, err := ParseUpstreams("TS_DNS_UPSTREAMS", " 1.1.1.1, [2606:4700:4700::1111]:5353 9.9.9.9:53")
	if err != nil {
		t.Fatal(err)
	}
	want := []netip.AddrPort{netip.MustParseAddrPort("1.1.1.1:53"), netip.MustParseAddrPort("[2606:4700:4700::1111]:5353"), netip.MustParseAddrPort("9.9.9.9:53")}
	if !slices.Equal(got, want) {
		t.Errorf("got %v, want %v", got, want)
	}
	if got, err := ParseUpstreams("TS_DNS_UPSTREAMS", ""); err != nil || got != nil {
		t.Errorf("empty: %v, %v", got, err)
	}
	for _, bad := range []string{"dns.google", "1.1.1.1:x", "100.100.100.100", "127.0.0.53", "169.254.169.254", "fd7a:115c:a1e0::53", "224.0.0.251"} {
		if _, err := ParseUpstreams("TS_DNS_UPSTREAMS", bad); err == nil || !strings.Contains(err.Error(), "TS_DNS_UPSTREAMS") {
			t.Errorf("%q: err %v, want one naming TS_DNS_UPSTREAMS", bad, err)
		}
	}
}

// On a host running tailscaled with MagicDNS, resolv.conf names only
// 100.100.100.100: the systemd-resolved upstream list is used when it names
// others, and Tailscale's and loopback addresses never are.
func TestHostResolvers(t *testing.T) {
	files := map[string]string{
		"/etc/resolv.conf":                 "nameserver 127.0.0.53\noptions edns0\n",
		"/run/systemd/resolve/resolv.conf": "# resolved\nnameserver 100.100.100.100\nnameserver 192.0.2.53\nnameserver fe80::1\nnameserver 2001:db8::53\nsearch example\n",
	}
	read := func(p string) ([]byte, error) {
		if s, ok := files[p]; ok {
			return []byte(s), nil
		}
		return nil, fmt.Errorf("%s: %w", p, errors.ErrUnsupported)
	}
	want := []netip.AddrPort{netip.MustParseAddrPort("192.0.2.53:53"), netip.MustParseAddrPort("[2001:db8::53]:53")}
	if got := HostResolvers(read); !slices.Equal(got, want) {
		t.Errorf("got %v, want %v", got, want)
	}
	files["/run/systemd/resolve/resolv.conf"] = "nameserver 100.100.100.100\n"
	files["/etc/resolv.conf"] = "nameserver 100.100.100.100\nnameserver 198.51.100.1\n"
	if got := HostResolvers(read); !slices.Equal(got, []netip.AddrPort{netip.MustParseAddrPort("198.51.100.1:53")}) {
		t.Errorf("fallback to /etc/resolv.conf: got %v", got)
	}
	delete(files, "/etc/resolv.conf")
	if got := HostResolvers(read); got != nil {
		t.Errorf("only Tailscale's address: got %v, want none", got)
	}
}
