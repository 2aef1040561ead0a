package nodespec

import (
	"slices"
	"strings"
)

// SSHPort is the node's tailnet port that ts.ssh takes: the port `ssh
// <user>@<node>` dials. While a container has ts.ssh, the port is the SSH
// server's, whatever the container itself listens on.
const SSHPort = 22

// SSH is who may open an SSH session into the container (the ts.ssh
// label): tailnet users by login name and tailnet nodes by ACL tag. The zero
// SSH allows no one and means the node runs no SSH server.
type SSH struct {
	// Logins are user login names as Tailscale shows them
	// (alice@example.com, alice@github), compared without regard to case.
	Logins []string `json:",omitempty"`
	// Tags are ACL tags ("tag:ops"), compared exactly.
	Tags []string `json:",omitempty"`
}

// Enabled reports whether the allow-list names anyone.
func (s SSH) Enabled() bool { return len(s.Logins) > 0 || len(s.Tags) > 0 }

// Allows reports whether a peer may log in. A tagged peer node (nodeTags
// not empty) is matched by its tags only: Tailscale gives a tagged node no
// human identity (WhoIs answers with the placeholder user
// "tagged-devices"), so a login on the list never lets a tagged node in.
// An untagged node is matched by its user's login name.
func (s SSH) Allows(login string, nodeTags []string) bool {
	if len(nodeTags) > 0 {
		for _, t := range nodeTags {
			if slices.Contains(s.Tags, t) {
				return true
			}
		}
		return false
	}
	if login == "" {
		return false
	}
	return slices.ContainsFunc(s.Logins, func(l string) bool { return strings.EqualFold(l, login) })
}

// String is the allow-list in the label's form ("alice@example.com,tag:ops").
func (s SSH) String() string {
	return strings.Join(append(slices.Clone(s.Logins), s.Tags...), ",")
}
