package netnstest

import (
	"fmt"
	"os/exec"
	"strings"
	"sync"
	"testing"
)

// DropTCPPort makes the lab netns (the test process's) silently drop every
// incoming TCP packet to port, as a control server behind a dead link or a
// dropping firewall looks to its clients: new connections hang in SYN-SENT
// and open ones stall, instead of being refused as after
// devcontrol.Server.StopControl. Pass the port of devcontrol's URL. It
// returns undo, which restores the port; undo also runs when t ends and may
// be called more than once.
//
// The rule is an nftables table of its own (tslink_drop_<port>, hook input),
// so it touches no other rule; the hook sees packets from other namespaces
// (the laptop, an engine's plugin) and local ones (tsnet nodes of the test
// process, over lo) alike.
func DropTCPPort(t testing.TB, port int) (undo func()) {
	t.Helper()
	RequireRoot(t)
	table := fmt.Sprintf("tslink_drop_%d", port)
	rules := fmt.Sprintf("table inet %s {\n chain input {\n  type filter hook input priority filter; policy accept;\n  tcp dport %d drop\n }\n}\n", table, port)
	cmd := exec.Command("nft", "-f", "-")
	cmd.Stdin = strings.NewReader(rules)
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("nft: adding %s: %v\n%s", table, err, out)
	}
	var once sync.Once
	undo = func() {
		once.Do(func() {
			if out, err := exec.Command("nft", "delete", "table", "inet", table).CombinedOutput(); err != nil {
				t.Errorf("nft: deleting %s: %v\n%s", table, err, out)
			}
		})
	}
	t.Cleanup(undo)
	return undo
}
