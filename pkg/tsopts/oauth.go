package tsopts

import (
	"fmt"

	"github.com/tslink/tslink/pkg/oauthsecret"
)

// keySource names where a network's inline key comes from, for errors.
func keySource(opts map[string]string) string {
	if _, ok := opts[OptAuthKey]; ok {
		return "option " + OptAuthKey
	}
	return "the plugin's TS_AUTHKEY"
}

// KeyFileSource names a key file for errors about its content.
func KeyFileSource(name string) string { return "the key in option " + OptAuthKeyFile + "=" + name }

// CheckAuthKey checks key, the auth key of network n found at source (an
// option, the plugin's TS_AUTHKEY or a key file: see [KeyFileSource]),
// when it is a Tailscale OAuth client secret (tskey-client-…, see package
// oauthsecret): its attributes parse, its baseURL obeys the rules of a
// control URL ([ParseControlURL] with ts.insecure-control: the secret goes
// there), and an ephemeral attribute agrees with ts.ephemeral, which decides
// whether nodes are ephemeral. An auth key passes unchecked. Errors name
// source and never show the secret.
func CheckAuthKey(key, source string, n *Network) error {
	if !oauthsecret.Is(key) {
		return nil
	}
	s, err := oauthsecret.Parse(key)
	if err != nil {
		return fmt.Errorf("%s: %w", source, err)
	}
	if _, err := ParseControlURL(s.BaseURL, n.InsecureControl); err != nil {
		return fmt.Errorf("%s: OAuth client secret: attribute %s (the Tailscale API the secret is sent to): %w", source, oauthsecret.AttrBaseURL, err)
	}
	if s.EphemeralGiven && s.Ephemeral != n.Ephemeral {
		return fmt.Errorf("%s: the OAuth client secret's attribute %s=%v contradicts the network's %s=%v, which decides whether its nodes are ephemeral: drop the attribute, or make the two agree", source, oauthsecret.AttrEphemeral, s.Ephemeral, OptEphemeral, n.Ephemeral)
	}
	return nil
}

// CheckOAuthTags refuses a node without tags (ts.tags, from its label or
// the network's option) when its network's key is an OAuth client secret:
// Tailscale's API creates auth keys for an OAuth client only with tags
// (tailscale.com/feature/oauthkey refuses likewise).
func CheckOAuthTags(key string, tags []string) error {
	if !oauthsecret.Is(key) || len(tags) > 0 {
		return nil
	}
	return fmt.Errorf("the network's auth key is an OAuth client secret (%s…), which creates only tagged nodes: give the container --label %s=tag:<name>[,…], or create the network with --opt %s=tag:<name>[,…] (tags the OAuth client may use)", oauthsecret.Prefix, LabelTags, OptTags)
}
