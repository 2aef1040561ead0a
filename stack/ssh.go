package stack

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"strconv"
	"strings"
	"time"

	gossh "golang.org/x/crypto/ssh"

	"github.com/tslink/tslink/pkg/execssh"
	"github.com/tslink/tslink/pkg/nodespec"
	"github.com/tslink/tslink/pkg/statedir"
)

// SSHConfig is the node's SSH server (the ts.ssh label).
//
// The node listens on its tailnet port 22 ([tsnet.Server.Listen]: with a
// TUN, tsnet's netstack takes that port's packets before they reach
// tailscale0, so the container's own port 22 is out of the tailnet's
// reach). A connecting peer is identified by the node's WhoIs on the
// connection's source address (the tailnet's packet filter has already let
// it through) and let in, without keys or passwords, when its user's login
// name or one of its node's tags is in Allow. The SSH user name is the
// container user the session runs as. The tailnet's own SSH policy
// (control's SSHPolicy, which tailscaled enforces for Tailscale SSH) is
// not consulted: tsnet does not evaluate it; Allow alone decides.
type SSHConfig struct {
	// Allow is who may log in; the zero value runs no SSH server.
	Allow nodespec.SSH
	// Exec starts the sessions' processes in the container. Required
	// when Allow names anyone.
	Exec execssh.Execer `json:"-"`
}

// whoIsTimeout bounds the WhoIs of a connecting peer.
const whoIsTimeout = 5 * time.Second

// startSSH starts the node's SSH server if cfg.SSH asks for one: the host
// key from the node's dir ([statedir.SSHHostKey]), a listener on tailnet
// port 22. [Node.teardownKeepingTUN] stops it.
func (n *Node) startSSH() error {
	if !n.cfg.SSH.Allow.Enabled() {
		return nil
	}
	if n.cfg.SSH.Exec == nil {
		return errors.New("ts.ssh: no Docker API client to run sessions with")
	}
	key, err := statedir.SSHHostKey(n.cfg.StateDir)
	if err != nil {
		return err
	}
	ln, err := n.srv.Listen("tcp", ":"+strconv.Itoa(nodespec.SSHPort))
	if err != nil {
		return fmt.Errorf("ts.ssh: listening on tailnet port %d: %w", nodespec.SSHPort, err)
	}
	n.sshd = &execssh.Server{
		HostKey:   key,
		Authorize: n.authorizeSSH,
		Exec:      n.cfg.SSH.Exec,
		Logf:      func(format string, args ...any) { n.logf("tslink: "+format, args...) },
	}
	n.wg.Go(func() {
		if err := n.sshd.Serve(ln); err != nil {
			n.logf("tslink: ssh: %v", err)
		}
		ln.Close()
	})
	n.logf("tslink: ssh: listening on tailnet port %d for %s (host key %s)", nodespec.SSHPort, n.cfg.SSH.Allow, gossh.FingerprintSHA256(key.PublicKey()))
	return nil
}

// authorizeSSH asks the node who the peer at remote is and checks it
// against the allow-list. It returns the peer as logs show it.
func (n *Node) authorizeSSH(ctx context.Context, remote netip.AddrPort) (string, error) {
	ctx, cancel := context.WithTimeout(ctx, whoIsTimeout)
	defer cancel()
	who, err := n.lc.WhoIs(ctx, remote.String())
	if err != nil {
		return "", fmt.Errorf("no tailnet identity for %v: %w", remote, err)
	}
	var login, node string
	var tags []string
	if who.UserProfile != nil {
		login = who.UserProfile.LoginName
	}
	if who.Node != nil {
		tags = who.Node.Tags
		node = strings.TrimSuffix(who.Node.Name, ".")
	}
	peer := login
	if len(tags) > 0 {
		peer = strings.Join(tags, ",")
	}
	peer += " (" + node + ", " + remote.Addr().String() + ")"
	if !n.cfg.SSH.Allow.Allows(login, tags) {
		return "", fmt.Errorf("%s is not in ts.ssh=%s", peer, n.cfg.SSH.Allow)
	}
	return peer, nil
}

// closeSSH stops the SSH server; sessions' connections are cut.
func (n *Node) closeSSH() {
	if n.sshd != nil {
		n.sshd.Close()
	}
}
