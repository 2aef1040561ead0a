package stack

import (
	"context"
	"strings"

	"github.com/tslink/tslink/pkg/oauthsecret"
)

// loginKey is the auth key a node logs in with: [Config.AuthKey], or, when
// that is an OAuth client secret (tskey-client-…), a single-use auth key
// created with it now, within ctx, for the node's tags and ephemerality
// (package oauthsecret). A node started from its state sends no key and
// creates none until control asks it to log in again.
func (n *Node) loginKey(ctx context.Context) (string, error) {
	if !oauthsecret.Is(n.cfg.AuthKey) {
		return n.cfg.AuthKey, nil
	}
	s, err := oauthsecret.Parse(n.cfg.AuthKey)
	if err != nil {
		return "", n.nodeError(ErrOAuthSecret, err.Error())
	}
	key, err := s.CreateAuthKey(ctx, oauthsecret.KeyRequest{Tags: n.cfg.Tags, Ephemeral: n.cfg.Ephemeral})
	if err != nil {
		return "", n.nodeError(ErrOAuthSecret, err.Error())
	}
	n.logf("tslink: created a single-use auth key with the OAuth client secret (API %s; tags %s, ephemeral=%v, preauthorized=%v)",
		apiHost(s.BaseURL), strings.Join(n.cfg.Tags, ","), n.cfg.Ephemeral, s.Preauthorized)
	return key, nil
}

// apiHost is the scheme://host[:port] of an API base URL, for logs.
func apiHost(base string) string {
	scheme, rest, ok := strings.Cut(base, "://")
	if !ok {
		return "(unparsable URL)"
	}
	host, _, _ := strings.Cut(rest, "/")
	if _, after, ok := strings.Cut(host, "@"); ok {
		host = after
	}
	return scheme + "://" + host
}
