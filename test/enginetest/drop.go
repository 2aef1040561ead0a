package enginetest

import (
	"fmt"
	"os/exec"
	"strings"
	"sync"
	"testing"
)

// DropTCPPortFromLab makes the lab netns (the engine's and the plugin's)
// silently drop the TCP packets its own processes send to port on a local
// address, so their connects hang instead of being refused: a Docker host
// that cannot reach its control server (a dead uplink at boot, a dropping
// firewall). Packets from other namespaces (the laptop) pass: the outage is
// the host's, not control's (netnstest.DropTCPPort drops them for every
// client, the laptop's control connection included). It returns undo, which also runs when t ends
// and may be called more than once.
//
// The rule is an nftables table of its own (hook input, interface lo: a
// local process's packets to a local address arrive on lo), so it touches
// no other rule.
func DropTCPPortFromLab(t testing.TB, port int) (undo func()) {
	t.Helper()
	table := fmt.Sprintf("tslink_lab_drop_%d", port)
	rules := fmt.Sprintf("table inet %s {\n chain input {\n  type filter hook input priority filter; policy accept;\n  iifname \"lo\" tcp dport %d drop\n }\n}\n", table, port)
	cmd := exec.Command("nft", "-f", "-")
	cmd.Stdin = strings.NewReader(rules)
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("nft: adding table %s: %v\n%s", table, err, out)
	}
	var once sync.Once
	undo = func() {
		once.Do(func() {
			if out, err := exec.Command("nft", "delete", "table", "inet", table).CombinedOutput(); err != nil {
				t.Errorf("nft: deleting table %s: %v\n%s", table, err, out)
			}
		})
	}
	t.Cleanup(undo)
	return undo
}
