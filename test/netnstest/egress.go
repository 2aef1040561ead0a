package netnstest

import (
	"os"
	"testing"

	"github.com/google/nftables"
	"github.com/google/nftables/expr"
	"golang.org/x/sys/unix"
)

// LinkTo wires the laptop to the netns inet with a veth (laptop eth1
// laptopAddr/24, inet's end lap0 inetAddr/24), routes dsts (host
// addresses of inet) through it, and makes the laptop forward and
// masquerade out of eth1, as a Tailscale subnet router or exit node does
// (tailscaled here runs with --netfilter-mode=off, so the lab does it).
func (l *Laptop) LinkTo(t testing.TB, inet *NetNS, laptopAddr, inetAddr string, dsts ...string) {
	t.Helper()
	Run(t, "ip", "-n", l.NS.Name, "link", "add", "eth1", "type", "veth", "peer", "name", "lap0", "netns", inet.Name)
	Run(t, "ip", "-n", l.NS.Name, "addr", "add", laptopAddr+"/24", "dev", "eth1")
	Run(t, "ip", "-n", l.NS.Name, "link", "set", "eth1", "up")
	for _, d := range dsts {
		Run(t, "ip", "-n", l.NS.Name, "route", "add", d+"/32", "via", inetAddr)
	}
	Run(t, "ip", "netns", "exec", l.NS.Name, "sysctl", "-qw", "net.ipv4.ip_forward=1")
	Run(t, "ip", "-n", inet.Name, "addr", "add", inetAddr+"/24", "dev", "lap0")
	Run(t, "ip", "-n", inet.Name, "link", "set", "lap0", "up")
	f, err := os.Open(l.NS.Path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	c, err := nftables.New(nftables.WithNetNSFd(int(f.Fd())))
	if err != nil {
		t.Fatal(err)
	}
	tb := c.AddTable(&nftables.Table{Family: nftables.TableFamilyIPv4, Name: "labnat"})
	ch := c.AddChain(&nftables.Chain{Name: "post", Table: tb, Type: nftables.ChainTypeNAT,
		Hooknum: nftables.ChainHookPostrouting, Priority: nftables.ChainPriorityNATSource})
	eth1 := make([]byte, unix.IFNAMSIZ)
	copy(eth1, "eth1")
	c.AddRule(&nftables.Rule{Table: tb, Chain: ch, Exprs: []expr.Any{
		&expr.Meta{Key: expr.MetaKeyOIFNAME, Register: 1},
		&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: eth1},
		&expr.Masq{},
	}})
	if err := c.Flush(); err != nil {
		t.Fatalf("laptop masquerade: %v", err)
	}
}

// LogTail returns the last n lines of the laptop's tailscaled log.
func (l *Laptop) LogTail(n int) string {
	b, _ := os.ReadFile(l.dir + "/tailscaled.log")
	return tail(b, n)
}
