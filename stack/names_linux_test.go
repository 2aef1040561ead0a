package stack

import (
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/tslink/tslink/pkg/nodespec"
)

// TestServeFollowsRename: the node's status shows the MagicDNS name control
// gave it, and after an admin's rename both the status and the serve config
// (keyed by the node's FQDN) follow within 10 s: a request for the new name
// is served, one for the old name no longer is.
func TestServeFollowsRename(t *testing.T) {
	l := newLab(t)
	cfg := l.config("named")
	cfg.Serve = nodespec.Serve{Endpoints: []nodespec.ServeEndpoint{{Port: 80, Proto: nodespec.ProtoHTTP, Target: 8080, Path: "/"}}}
	n, ctr := l.startNode(t, cfg)
	loopbackApp(t, ctr)
	domain := l.control.MagicDNSDomain()
	if st := n.Status(); st.Name != "named."+domain || st.Hostname != "named" {
		t.Fatalf("status: hostname %q, name %q; want named, named.%s", st.Hostname, st.Name, domain)
	}
	v4, _ := n.Addrs()
	url := fmt.Sprintf("http://%s/x", v4)
	if err := waitFor(10*time.Second, func() error { _, err := l.laptopGET(url, "named."+domain); return err }); err != nil {
		t.Fatalf("GET as named.%s before the rename: %v", domain, err)
	}
	if strings.Contains(l.logs.String(), "is taken") {
		t.Errorf("debug log says the name was taken, though control gave the one asked for:\n%s", l.logs)
	}

	nodes := l.control.NodesByHostname("named")
	if len(nodes) != 1 {
		t.Fatalf("control lists %d nodes named named", len(nodes))
	}
	if err := l.control.RenameNode(nodes[0].NodeKey, "renamed"); err != nil {
		t.Fatal(err)
	}
	renamedAt := time.Now()
	err := waitFor(10*time.Second, func() error {
		if got := n.Status().Name; got != "renamed."+domain {
			return fmt.Errorf("status name %q", got)
		}
		_, err := l.laptopGET(url, "renamed."+domain)
		return err
	})
	if err != nil {
		t.Fatalf("10 s after the rename: %v\n%s", err, l.logs)
	}
	t.Logf("serving as renamed.%s %v after the rename", domain, time.Since(renamedAt).Round(time.Millisecond))
	if body, err := l.laptopGET(url, "named."+domain); err == nil {
		t.Errorf("the old name is still served: %q", body)
	}
	if got := strings.Count(l.logs.String(), "control renamed the node named."+domain+" -> renamed."+domain); got != 1 {
		t.Errorf("debug log tells of the rename %d times; want once:\n%s", got, l.logs)
	}
}
