package tsopts

import (
	"fmt"
	"slices"
	"strings"
	"unicode"

	"github.com/tslink/tslink/pkg/nodespec"
)

// LabelSSH lets the listed tailnet users and tagged nodes open SSH sessions
// into the container on the node's port 22 ([nodespec.SSH]).
const LabelSSH = "ts.ssh"

// MaxSSH bounds the entries of a ts.ssh label.
const MaxSSH = 64

// SSH is a container's parsed ts.ssh label.
type SSH = nodespec.SSH

// sshForm is the accepted form of ts.ssh, for error messages.
const sshForm = "comma-separated tailnet user login names and ACL tags, e.g. alice@example.com,tag:ops"

// ParseSSH parses a ts.ssh allow-list: entries separated by commas, each a
// user login name (name@domain, as Tailscale shows a user: an email, or
// e.g. alice@github) or an ACL tag (tag:name). Blanks around entries are
// dropped, duplicates kept once. The error names the label and the form.
func ParseSSH(v string) (SSH, error) {
	var s SSH
	n := 0
	for _, e := range strings.Split(v, ",") {
		e = strings.TrimSpace(e)
		if e == "" {
			continue
		}
		switch {
		case strings.HasPrefix(e, "tag:"):
			if !tagRE.MatchString(e) || len(e) > 128 {
				return SSH{}, fmt.Errorf("label %s: %q is not a tag (tag:name, a letter, then letters, digits or -): want %s", LabelSSH, e, sshForm)
			}
			if !slices.Contains(s.Tags, e) {
				s.Tags = append(s.Tags, e)
				n++
			}
		case validLogin(e):
			if !slices.ContainsFunc(s.Logins, func(l string) bool { return strings.EqualFold(l, e) }) {
				s.Logins = append(s.Logins, e)
				n++
			}
		default:
			return SSH{}, fmt.Errorf("label %s: %q is neither a user login name (name@domain) nor a tag (tag:name): want %s", LabelSSH, e, sshForm)
		}
		if n > MaxSSH {
			return SSH{}, fmt.Errorf("label %s: more than %d entries: want at most %d, %s", LabelSSH, MaxSSH, MaxSSH, sshForm)
		}
	}
	if !s.Enabled() {
		return SSH{}, fmt.Errorf("label %s: empty: want %s", LabelSSH, sshForm)
	}
	return s, nil
}

// validLogin reports whether e has the shape of a Tailscale login name:
// one "@" with something on both sides, no blanks, control characters,
// commas or quotes, at most 254 bytes.
func validLogin(e string) bool {
	local, domain, ok := strings.Cut(e, "@")
	if !ok || local == "" || domain == "" || strings.Contains(domain, "@") || len(e) > 254 {
		return false
	}
	return strings.IndexFunc(e, func(r rune) bool {
		return unicode.IsSpace(r) || unicode.IsControl(r) || r == ',' || r == '"' || r == '\''
	}) < 0
}

// checkSSHPort refuses a ts.serve label on the port ts.ssh takes.
func checkSSHPort(c *Container) error {
	if !c.SSH.Enabled() {
		return nil
	}
	for _, ep := range c.Serve.Endpoints {
		if ep.Port == nodespec.SSHPort {
			return fmt.Errorf("labels %s%d and %s: tailnet port %d of the node belongs to %s; serve on another port, or drop %s", LabelServePrefix, ep.Port, LabelSSH, nodespec.SSHPort, LabelSSH, LabelSSH)
		}
	}
	return nil
}
