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
	return dropTCP(t, fmt.Sprintf("tslink_drop_%d", port), fmt.Sprintf("tcp dport %d drop", port))
}

// DropLocalTCPPort is DropTCPPort for the lab netns's own processes only
// (the engine's and the plugin's: a Docker host that cannot reach its
// control server, a dead uplink at boot): packets from other namespaces
// (the laptop) pass, so the outage is the host's, not control's. Its table
// hooks input on lo, where a local process's packets to a local address
// arrive.
func DropLocalTCPPort(t testing.TB, port int) (undo func()) {
	t.Helper()
	return dropTCP(t, fmt.Sprintf("tslink_lab_drop_%d", port), fmt.Sprintf("iifname \"lo\" tcp dport %d drop", port))
}

// dropTCP adds an nftables table of its own with rule on the input hook
// and returns undo, which deletes it (also when t ends; idempotent).
func dropTCP(t testing.TB, table, rule string) (undo func()) {
	t.Helper()
	RequireRoot(t)
	rules := fmt.Sprintf("table inet %s {\n chain input {\n  type filter hook input priority filter; policy accept;\n  %s\n }\n}\n", table, rule)
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
