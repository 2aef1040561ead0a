// Package oauthsecret turns a Tailscale OAuth client secret given where an
// auth key goes (ts.authkey, a ts.authkey-file, the plugin's TS_AUTHKEY)
// into a new auth key for one node, as `tailscale up --auth-key` and tsnet
// do with tailscale.com/feature/oauthkey in tailscale.com v1.102.5:
//
//	tskey-client-<secret>[?ephemeral=<bool>&preauthorized=<bool>&baseURL=<url>]
//
// The secret goes to the Tailscale API's OAuth token endpoint
// (<baseURL>/api/v2/oauth/token, client-credentials grant), and the token
// creates a single-use auth key with the node's tags
// (<baseURL>/api/v2/tailnet/-/keys). The attributes and their defaults are
// feature/oauthkey's: ephemeral true, preauthorized false, baseURL
// https://api.tailscale.com (the API, never the control URL). Tags are
// required: a key an OAuth client creates must carry tags.
//
// tslink resolves the secret itself rather than through tsnet.Server.Start
// (which calls feature/oauthkey): tsnet's call has no deadline (it runs under
// the server's lifetime context, and dockerd gives a plugin call 30 s), and
// a node that control asks to log in again logs in through LocalAPI, which
// does not resolve secrets. The requests are the same, made with the same
// libraries (golang.org/x/oauth2/clientcredentials,
// tailscale.com/client/tailscale).
//
// Nothing this package returns contains the secret: errors name the API's
// host and what it answered, redacted.
package oauthsecret

import (
	"context"
	"errors"
	"fmt"
	"net/url"
	"regexp"
	"strconv"
	"strings"

	"golang.org/x/oauth2"
	"golang.org/x/oauth2/clientcredentials"

	//lint:ignore SA1019 tailscale.com/feature/oauthkey creates the key with this client too (through internal/client/tailscale, which aliases it)
	"tailscale.com/client/tailscale"
)

func init() {
	// feature/oauthkey's internal/client/tailscale sets it too, in every
	// binary that links tsnet.
	tailscale.I_Acknowledge_This_API_Is_Unstable = true
}

// Prefix starts every Tailscale OAuth client secret.
const Prefix = "tskey-client-"

// DefaultBaseURL is the Tailscale API used when the secret has no baseURL
// attribute.
const DefaultBaseURL = "https://api.tailscale.com"

// Attribute names a secret may carry after "?".
const (
	AttrEphemeral     = "ephemeral"
	AttrPreauthorized = "preauthorized"
	AttrBaseURL       = "baseURL"
)

// Is reports whether key is an OAuth client secret rather than an auth key.
func Is(key string) bool { return strings.HasPrefix(key, Prefix) }

// Secret is a parsed OAuth client secret. Its String and GoString never
// show the secret.
type Secret struct {
	clientSecret string // "tskey-client-…", without the attributes
	// Ephemeral is the ephemeral attribute (default true); EphemeralGiven
	// says whether the secret has one.
	Ephemeral      bool
	EphemeralGiven bool
	// Preauthorized is the preauthorized attribute (default false): the
	// nodes need no approval on a tailnet with device approval.
	Preauthorized bool
	// BaseURL is the API's base URL, as given (default [DefaultBaseURL]);
	// the caller checks its form.
	BaseURL string
}

func (s *Secret) String() string   { return Prefix + "[REDACTED]" }
func (s *Secret) GoString() string { return s.String() }

// Parse parses an OAuth client secret with its optional attributes. Errors
// name the attribute and the accepted form, never the secret.
func Parse(key string) (*Secret, error) {
	if !Is(key) {
		return nil, fmt.Errorf("not an OAuth client secret (want %s…)", Prefix)
	}
	secret, rawAttrs, _ := strings.Cut(key, "?")
	if secret == Prefix || strings.ContainsAny(secret, " \t\r\n") {
		return nil, fmt.Errorf("OAuth client secret: nothing after %s, or blanks in it", Prefix)
	}
	attrs, err := url.ParseQuery(rawAttrs)
	if err != nil {
		return nil, fmt.Errorf("OAuth client secret: the attributes after ? are not of the form name=value&name=value (%s, %s, %s)", AttrEphemeral, AttrPreauthorized, AttrBaseURL)
	}
	s := &Secret{clientSecret: secret, Ephemeral: true, BaseURL: DefaultBaseURL}
	for name, vs := range attrs {
		if len(vs) != 1 {
			return nil, fmt.Errorf("OAuth client secret: attribute %s given %d times", shownName(name), len(vs))
		}
		v := vs[0]
		switch name {
		case AttrEphemeral, AttrPreauthorized:
			b, err := strconv.ParseBool(v)
			if err != nil {
				return nil, fmt.Errorf("OAuth client secret: attribute %s=%q: want true or false", name, v)
			}
			if name == AttrEphemeral {
				s.Ephemeral, s.EphemeralGiven = b, true
			} else {
				s.Preauthorized = b
			}
		case AttrBaseURL:
			if v == "" {
				return nil, fmt.Errorf("OAuth client secret: attribute %s is empty: want the Tailscale API's URL, e.g. %s", name, DefaultBaseURL)
			}
			s.BaseURL = v
		default:
			return nil, fmt.Errorf("OAuth client secret: unknown attribute %s: want %s, %s or %s", shownName(name), AttrEphemeral, AttrPreauthorized, AttrBaseURL)
		}
	}
	return s, nil
}

// shownName is an attribute name fit for an error: user input that might
// hold a key is not repeated.
func shownName(name string) string {
	if len(name) <= 32 && attrNameRE.MatchString(name) {
		return strconv.Quote(name)
	}
	return "(name not shown)"
}

var attrNameRE = regexp.MustCompile(`^[A-Za-z][A-Za-z0-9_]*$`)

// KeyRequest is what the auth key is for.
type KeyRequest struct {
	// Tags are the node's ACL tags ("tag:name"); required.
	Tags []string
	// Ephemeral makes the key create ephemeral nodes.
	Ephemeral bool
}

// ErrRefused wraps the errors of a request the API answered with a refusal
// (as opposed to an API that could not be reached).
var ErrRefused = errors.New("refused by the Tailscale API")

// CreateAuthKey exchanges the secret for an access token and creates a
// single-use auth key with req's tags and ephemerality and the secret's
// preauthorized attribute, within ctx. The error says which step failed and
// what the API at BaseURL's host answered; it never contains the secret or
// a key.
func (s *Secret) CreateAuthKey(ctx context.Context, req KeyRequest) (string, error) {
	if len(req.Tags) == 0 {
		return "", errors.New("an OAuth client secret creates only tagged nodes, and no tags were given")
	}
	base := strings.TrimRight(s.BaseURL, "/")
	host := base
	if u, err := url.Parse(base); err == nil && u.Host != "" {
		host = u.Host
	}
	cc := clientcredentials.Config{
		ClientID:     "tslink", // the API identifies the client by its secret
		ClientSecret: s.clientSecret,
		TokenURL:     base + "/api/v2/oauth/token",
	}
	//lint:ignore SA1019 the client feature/oauthkey uses in v1.102.5 (see the import)
	c := tailscale.NewClient("-", nil)
	c.BaseURL = base
	c.UserAgent = "tslink"
	c.HTTPClient = oauth2.NewClient(ctx, cc.TokenSource(ctx))
	key, _, err := c.CreateKey(ctx, tailscale.KeyCapabilities{Devices: tailscale.KeyDeviceCapabilities{
		Create: tailscale.KeyDeviceCreateCapabilities{
			Ephemeral:     req.Ephemeral,
			Preauthorized: s.Preauthorized,
			Tags:          req.Tags,
		},
	}})
	if err != nil {
		return "", s.explain(err, host, req.Tags)
	}
	if key == "" {
		return "", fmt.Errorf("creating an auth key with the OAuth client secret: the Tailscale API at %s answered without a key", host)
	}
	return key, nil
}

// explain turns an error of the token or key request into a message for
// the user, redacted.
func (s *Secret) explain(err error, host string, tags []string) error {
	var re *oauth2.RetrieveError
	var er tailscale.ErrResponse
	switch {
	case errors.As(err, &re):
		status := 0
		if re.Response != nil {
			status = re.Response.StatusCode
		}
		what := strings.TrimSpace(strings.Join([]string{re.ErrorCode, re.ErrorDescription}, " "))
		if what == "" {
			what = strings.TrimSpace(string(re.Body))
		}
		if len(what) > 200 {
			what = what[:200] + "…"
		}
		return fmt.Errorf("%w: the API at %s refused the OAuth client secret (HTTP %d %s): check that the secret is right and its OAuth client still exists", ErrRefused, host, status, s.redact(what))
	case errors.As(err, &er):
		return fmt.Errorf("%w: creating an auth key with tags %s through the API at %s: HTTP %d %s: the OAuth client needs the auth_keys scope and these tags", ErrRefused, strings.Join(tags, ","), host, er.Status, s.redact(er.Message))
	}
	var ue *url.Error
	if errors.As(err, &ue) {
		err = ue.Err
	}
	return fmt.Errorf("reaching the Tailscale API at %s for the OAuth client secret: %s", host, s.redact(err.Error()))
}

var keyPattern = regexp.MustCompile(`(tskey|hskey)-[A-Za-z0-9-]+`)

func (s *Secret) redact(msg string) string {
	msg = strings.ReplaceAll(msg, s.clientSecret, "[REDACTED]")
	if bare := strings.TrimPrefix(s.clientSecret, Prefix); len(bare) >= 8 {
		msg = strings.ReplaceAll(msg, bare, "[REDACTED]")
	}
	return keyPattern.ReplaceAllString(msg, "${1}-[REDACTED]")
}
