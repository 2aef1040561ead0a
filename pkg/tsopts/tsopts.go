// Package tsopts parses tslink's user input: the network options given to
// `docker network create --opt` and the container labels given to
// `docker run --label`. Every rejection names the option or label and the
// form it accepts, because the message reaches the user verbatim through the
// Docker CLI. Secrets never appear in an error.
package tsopts

import (
	"errors"
	"fmt"
	"net/netip"
	"net/url"
	"path"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"time"
	"unicode"

	"github.com/tslink/tslink/pkg/nodespec"
)

// Network option keys (`docker network create --opt KEY=VALUE`).
const (
	OptAuthKey     = "ts.authkey"
	OptAuthKeyFile = "ts.authkey-file"
	OptControlURL  = "ts.controlurl"
	// OptInsecureControl allows a plain http:// control URL to a host that
	// is not loopback (test setups): the auth key then crosses the network
	// in the clear.
	OptInsecureControl = "ts.insecure-control"
	// OptImageLabels obeys ts.* labels that a container gets from its
	// image (see [CheckImageLabels]).
	OptImageLabels = "ts.image-labels"
	OptEphemeral   = "ts.ephemeral"
	OptTags        = "ts.tags"
	OptTimeout     = "ts.timeout"
)

// Container label keys (`docker run --label KEY=VALUE`).
const (
	LabelHostname    = "ts.hostname"
	LabelTags        = "ts.tags"
	LabelServePrefix = "ts.serve."
	LabelService     = "ts.service"
	LabelDirect      = "ts.direct"
)

// DefaultTimeout is how long Join waits for a node to come up unless
// ts.timeout says otherwise. dockerd gives a plugin call 30 s unless the
// plugin was enabled with a longer --timeout.
const DefaultTimeout = 20 * time.Second

// MaxTimeout bounds ts.timeout: dockerd abandons a plugin call after 30 s
// and rolls the endpoint back, so a longer wait could only fail later and
// worse.
const MaxTimeout = 25 * time.Second

// Caps on list-valued input: every serve endpoint costs the shared plugin a
// listener, a goroutine and a file descriptor, and the tag list is recorded
// and logged at every Join, so one container (or image) must not be able to
// ask for thousands.
const (
	// MaxServe bounds the ts.serve.<port> labels of one container.
	MaxServe = 64
	// MaxTags bounds the tags of a ts.tags label or option.
	MaxTags = 32
)

// Network is a tslink network's parsed options, plugin env defaults applied.
type Network struct {
	// AuthKey is an auth key or an OAuth client secret (tskey-client-…,
	// checked by [CheckAuthKey]); secret. "" if AuthKeyFile is used.
	AuthKey     string
	AuthKeyFile string // file name under the state dir's keys/ holding the key
	ControlURL  string // "" = Tailscale's default; else normalized by [ParseControlURL]
	// InsecureControl (ts.insecure-control=true) allows plain http to a
	// control server that is not on loopback.
	InsecureControl bool
	// ImageLabels (ts.image-labels=true) obeys ts.* labels that come from
	// a container's image.
	ImageLabels bool
	Ephemeral   bool
	Tags        []string
	Timeout     time.Duration
}

// Env is the plugin's environment (`docker plugin set`), the fallback for
// network options.
type Env struct {
	AuthKey    string // TS_AUTHKEY
	ControlURL string // TS_CONTROL_URL
}

// HasAuthKey reports whether some form of auth key is configured.
func (n *Network) HasAuthKey() bool { return n.AuthKey != "" || n.AuthKeyFile != "" }

// ParseNetwork parses driver options. Keys outside the ts. namespace are
// Docker's or another tool's and are ignored; unknown ts.* keys are errors.
func ParseNetwork(opts map[string]string, env Env) (*Network, error) {
	n := &Network{
		AuthKey:    env.AuthKey,
		ControlURL: env.ControlURL,
		Ephemeral:  true,
		Timeout:    DefaultTimeout,
	}
	var errs []error
	for _, k := range sortedKeys(opts) {
		v := opts[k]
		if !strings.HasPrefix(k, "ts.") {
			continue
		}
		switch k {
		case OptAuthKey:
			if v == "" || strings.ContainsAny(v, " \t\r\n") {
				errs = append(errs, fmt.Errorf("option %s: want a Tailscale auth key (tskey-auth-…) or OAuth client secret (tskey-client-…), got an empty or blank-containing value", k))
				continue
			}
			n.AuthKey = v
		case OptAuthKeyFile:
			if !validFileName(v) {
				errs = append(errs, fmt.Errorf("option %s=%q: want a file name (letters, digits, . _ -) under the plugin's state dir keys/ folder, e.g. /var/lib/docker-plugins/tailscale/keys/<name>", k, v))
				continue
			}
			n.AuthKeyFile = v
			n.AuthKey = ""
		case OptControlURL:
			n.ControlURL = v // checked below, with the plugin's TS_CONTROL_URL
		case OptInsecureControl:
			b, err := strconv.ParseBool(v)
			if err != nil {
				errs = append(errs, fmt.Errorf("option %s=%q: want true or false", k, v))
				continue
			}
			n.InsecureControl = b
		case OptImageLabels:
			b, err := strconv.ParseBool(v)
			if err != nil {
				errs = append(errs, fmt.Errorf("option %s=%q: want true or false", k, v))
				continue
			}
			n.ImageLabels = b
		case OptEphemeral:
			b, err := strconv.ParseBool(v)
			if err != nil {
				errs = append(errs, fmt.Errorf("option %s=%q: want true or false", k, v))
				continue
			}
			n.Ephemeral = b
		case OptTags:
			tags, err := ParseTags(v)
			if err != nil {
				errs = append(errs, fmt.Errorf("option %s: %w", k, err))
				continue
			}
			n.Tags = tags
		case OptTimeout:
			d, err := time.ParseDuration(v)
			if err != nil || d < time.Second || d > MaxTimeout {
				errs = append(errs, fmt.Errorf("option %s=%q: want a duration from 1s to %v (dockerd gives a plugin call 30s), e.g. 20s", k, v, MaxTimeout))
				continue
			}
			n.Timeout = d
		default:
			errs = append(errs, fmt.Errorf("unknown option %s: tslink accepts %s", k, strings.Join(networkKeys, ", ")))
		}
	}
	if n.ControlURL != "" {
		source := "option " + OptControlURL
		if _, ok := opts[OptControlURL]; !ok {
			source = "the plugin's TS_CONTROL_URL"
		}
		u, err := ParseControlURL(n.ControlURL, n.InsecureControl)
		if err != nil {
			errs = append(errs, fmt.Errorf("%s: %w", source, err))
		}
		n.ControlURL = u
	}
	if n.AuthKey != "" && len(errs) == 0 {
		if err := CheckAuthKey(n.AuthKey, keySource(opts), n); err != nil {
			errs = append(errs, err)
		}
	}
	if _, hasKey := opts[OptAuthKey]; hasKey {
		if _, hasFile := opts[OptAuthKeyFile]; hasFile {
			errs = append(errs, fmt.Errorf("options %s and %s: give one, not both", OptAuthKey, OptAuthKeyFile))
		}
	}
	if err := errors.Join(errs...); err != nil {
		return nil, err
	}
	return n, nil
}

var networkKeys = []string{OptAuthKey, OptAuthKeyFile, OptControlURL, OptEphemeral, OptImageLabels, OptInsecureControl, OptTags, OptTimeout}

// controlForm is the accepted form of a control URL, for error messages.
const controlForm = "https://host[:port][/path] (http:// only to localhost or a loopback address, or with --opt " + OptInsecureControl + "=true)"

// ParseControlURL checks a control server URL and returns it normalized
// (lowercase scheme, no trailing "/"). The scheme must be http or https and
// a host is required; user info (user:password@), a query, a fragment,
// whitespace and control characters are refused, so the URL is safe to
// record and its scheme://host[:port] safe to log
// ([nodespec.ControlDisplay]). Plain http is accepted for a loopback host
// (localhost, 127.0.0.0/8, ::1), else only if insecure is set: over plain
// http the auth key goes to whoever answers. Errors never echo the URL: it
// may hold a password.
func ParseControlURL(raw string, insecure bool) (string, error) {
	if strings.IndexFunc(raw, func(r rune) bool { return unicode.IsSpace(r) || unicode.IsControl(r) }) >= 0 {
		return "", fmt.Errorf("the URL contains whitespace or control characters: want %s", controlForm)
	}
	u, err := url.Parse(raw)
	if err != nil {
		return "", fmt.Errorf("not a URL: want %s", controlForm)
	}
	scheme := strings.ToLower(u.Scheme)
	switch {
	case scheme != "http" && scheme != "https":
		return "", fmt.Errorf("scheme %q: want %s", u.Scheme, controlForm)
	case u.Opaque != "" || u.Host == "" || u.Hostname() == "":
		return "", fmt.Errorf("no host: want %s", controlForm)
	case u.User != nil:
		return "", fmt.Errorf("user info (user:password@) is not accepted in a control URL, and would be logged: want %s", controlForm)
	case u.RawQuery != "" || u.ForceQuery || u.Fragment != "":
		return "", fmt.Errorf("a ?query or #fragment is not accepted: want %s", controlForm)
	}
	if p := u.Port(); p != "" {
		if _, ok := parsePort(p); !ok {
			return "", fmt.Errorf("port %q is not a number 1-65535: want %s", p, controlForm)
		}
	}
	if scheme == "http" && !insecure && !isLoopbackHost(u.Hostname()) {
		return "", fmt.Errorf("plain http to %s, which is not loopback, sends the auth key unprotected: use https://, or add --opt %s=true (test setups)", u.Host, OptInsecureControl)
	}
	return scheme + "://" + u.Host + strings.TrimRight(u.EscapedPath(), "/"), nil
}

func isLoopbackHost(h string) bool {
	if strings.EqualFold(h, "localhost") {
		return true
	}
	a, err := netip.ParseAddr(h)
	return err == nil && a.Unmap().IsLoopback()
}

func validFileName(s string) bool {
	return s != "" && s != "." && s != ".." && len(s) <= 255 && fileNameRE.MatchString(s)
}

var fileNameRE = regexp.MustCompile(`^[A-Za-z0-9._-]+$`)

var tagRE = regexp.MustCompile(`^tag:[a-zA-Z][a-zA-Z0-9-]*$`)

// ParseTags parses a comma-separated ACL tag list ("tag:a,tag:b"), as
// Tailscale's `--advertise-tags` accepts it.
func ParseTags(v string) ([]string, error) {
	var tags []string
	for _, t := range strings.Split(v, ",") {
		t = strings.TrimSpace(t)
		if t == "" {
			continue
		}
		if !tagRE.MatchString(t) || len(t) > 128 {
			return nil, fmt.Errorf("%q is not a tag: want comma-separated tags of the form tag:name (a letter, then letters, digits or -), e.g. tag:server,tag:prod", t)
		}
		if !slices.Contains(tags, t) {
			tags = append(tags, t)
		}
		if len(tags) > MaxTags {
			return nil, fmt.Errorf("more than %d tags: tslink accepts at most %d tags per node (comma-separated tag:name)", MaxTags, MaxTags)
		}
	}
	if len(tags) == 0 {
		return nil, fmt.Errorf("empty tag list: want comma-separated tags of the form tag:name, e.g. tag:server")
	}
	return tags, nil
}

// Container is a container's parsed labels.
type Container struct {
	Hostname string   // valid DNS label
	Tags     []string // nil: the network's default tags
	Serve    Serve
	SSH      SSH // ts.ssh; the zero SSH: no SSH server
	Egress   Egress
}

// Serve protocols and types: package nodespec has them (package stack uses
// them too, and must not depend on label parsing).
const (
	ProtoHTTP             = nodespec.ProtoHTTP
	ProtoHTTPS            = nodespec.ProtoHTTPS
	ProtoTCP              = nodespec.ProtoTCP
	ProtoTLSTerminatedTCP = nodespec.ProtoTLSTerminatedTCP
)

type (
	ServeEndpoint = nodespec.ServeEndpoint
	Serve         = nodespec.Serve
)

// ParseContainer parses a container's labels. containerName (without the
// leading "/") gives the default hostname. Unknown ts.* labels are errors.
func ParseContainer(labels map[string]string, containerName string) (*Container, error) {
	c := &Container{}
	var errs []error
	if n := countPrefix(labels, LabelServePrefix); n > MaxServe {
		return nil, fmt.Errorf("labels %s<port>: %d given, tslink serves at most %d ports per container", LabelServePrefix, n, MaxServe)
	}
	for _, k := range sortedKeys(labels) {
		v := labels[k]
		if !strings.HasPrefix(k, "ts.") {
			continue
		}
		switch {
		case k == LabelHostname:
			if !ValidHostname(v) {
				errs = append(errs, fmt.Errorf("label %s=%q: want a hostname of 1-63 letters, digits and -, not starting or ending with -, e.g. my-api", k, v))
				continue
			}
			c.Hostname = strings.ToLower(v)
		case k == LabelTags:
			tags, err := ParseTags(v)
			if err != nil {
				errs = append(errs, fmt.Errorf("label %s: %w", k, err))
				continue
			}
			c.Tags = tags
		case strings.HasPrefix(k, LabelServePrefix):
			ep, err := ParseServe(k, v)
			if err != nil {
				errs = append(errs, err)
				continue
			}
			if i := slices.IndexFunc(c.Serve.Endpoints, func(o ServeEndpoint) bool { return o.Port == ep.Port }); i >= 0 {
				errs = append(errs, fmt.Errorf("label %s: port %d is already served by another ts.serve label; give each port one label", k, ep.Port))
				continue
			}
			c.Serve.Endpoints = append(c.Serve.Endpoints, ep)
		case k == LabelService:
			if !serviceRE.MatchString(v) {
				errs = append(errs, fmt.Errorf("label %s=%q: want svc:<name>, the name a DNS label (letters, digits and -), e.g. svc:my-api", k, v))
				continue
			}
			c.Serve.Service = strings.ToLower(v)
		case k == LabelSSH:
			ssh, err := ParseSSH(v)
			if err != nil {
				errs = append(errs, err)
				continue
			}
			c.SSH = ssh
		case k == LabelDirect:
			switch strings.ToLower(v) {
			case "true":
				c.Serve.ServiceOnly = false
			case "false":
				c.Serve.ServiceOnly = true
			default:
				errs = append(errs, fmt.Errorf("label %s=%q: want true or false", k, v))
			}
		default:
			if handled, err := parseEgressLabel(k, v, &c.Egress); handled {
				if err != nil {
					errs = append(errs, err)
				}
				continue
			}
			errs = append(errs, fmt.Errorf("unknown label %s: tslink accepts %s, %s, %s<port>, %s, %s, %s, %s", k, LabelHostname, LabelTags, LabelServePrefix, LabelService, LabelDirect, LabelSSH, strings.Join(egressLabels, ", ")))
		}
	}
	if len(errs) == 0 {
		slices.SortFunc(c.Serve.Endpoints, func(a, b ServeEndpoint) int { return int(a.Port) - int(b.Port) })
		switch {
		case c.Serve.Service != "" && len(c.Serve.Endpoints) == 0:
			errs = append(errs, fmt.Errorf("label %s=%s needs at least one %s<port> label: the service's endpoints are the node's serve endpoints, e.g. %s443=https:8080", LabelService, c.Serve.Service, LabelServePrefix, LabelServePrefix))
		case c.Serve.ServiceOnly && c.Serve.Service == "":
			errs = append(errs, fmt.Errorf("label %s=false serves only through %s, which is not set: add %s=svc:<name> or drop %s", LabelDirect, LabelService, LabelService, LabelDirect))
		}
		if err := checkSSHPort(c); err != nil {
			errs = append(errs, err)
		}
		if err := checkEgress(c.Egress); err != nil {
			errs = append(errs, err)
		}
	}
	if err := errors.Join(errs...); err != nil {
		return nil, err
	}
	if c.Hostname == "" {
		c.Hostname = HostnameFromName(containerName)
		if c.Hostname == "" {
			return nil, fmt.Errorf("container name %q gives no valid hostname: set label %s", containerName, LabelHostname)
		}
	}
	return c, nil
}

// ImageOnlyLabels returns the ts.* labels of a container that come from
// its image, sorted: labels holds the container's labels as Docker merged
// them (the image's, then the container's own over them), image the
// image's own. Docker keeps no record of which were given to `docker run`,
// so a label the image has with the same value counts as the image's.
func ImageOnlyLabels(labels, image map[string]string) []string {
	var out []string
	for k, v := range labels {
		if iv, ok := image[k]; ok && iv == v && strings.HasPrefix(k, "ts.") {
			out = append(out, k)
		}
	}
	slices.Sort(out)
	return out
}

// CheckImageLabels refuses a container whose ts.* labels come from its
// image (an image must not choose a node's hostname, serve ports, tags or
// service: it could take over a persistent identity or open ports on the
// tailnet from a plain `docker run`), unless its network has
// ts.image-labels=true. imageErr is why the image's labels could not be
// read: then a container with any ts.* label is refused, since nothing
// tells its own labels from the image's. The error names the labels (up
// to five) and the option.
func CheckImageLabels(labels, image map[string]string, imageErr error) error {
	if imageErr != nil {
		if countPrefix(labels, "ts.") == 0 {
			return nil
		}
		return fmt.Errorf("the container has ts.* labels and its image's labels cannot be read from the engine's state (%v), so tslink cannot tell the container's own labels from its image's: create the network with --opt %s=true to obey the image's", imageErr, OptImageLabels)
	}
	keys := ImageOnlyLabels(labels, image)
	if len(keys) == 0 {
		return nil
	}
	shown := strings.Join(keys[:min(len(keys), 5)], ", ")
	if len(keys) > 5 {
		shown += fmt.Sprintf(" and %d more", len(keys)-5)
	}
	return fmt.Errorf("label %s comes from the container's image, and tslink obeys the ts.* labels of images only on networks created with --opt %s=true (a docker run --label with the image's own value counts as the image's): use an image without ts.* labels, or create the network with that option", shown, OptImageLabels)
}

var (
	serviceRE   = regexp.MustCompile(`^svc:[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?$`)
	servePathRE = regexp.MustCompile(`^/[A-Za-z0-9._~!$&'()*+,;=:@%/-]*$`)
)

// serveForm is the accepted form of a ts.serve label, for error messages.
const serveForm = "<proto>:<port>[/<path>], proto http, https, tcp or tls-terminated-tcp, port 1-65535, e.g. https:8080 or http:3000/api"

// ParseServe parses one ts.serve.<port>=<proto>:<target>[/<path>] label.
// The error names the label and the accepted form.
func ParseServe(key, value string) (ServeEndpoint, error) {
	var ep ServeEndpoint
	port, ok := parsePort(strings.TrimPrefix(key, LabelServePrefix))
	if !ok {
		return ep, fmt.Errorf("label %s: the part after %s must be the tailnet port, a number 1-65535, e.g. %s443=https:8080", key, LabelServePrefix, LabelServePrefix)
	}
	ep.Port = port
	proto, rest, ok := strings.Cut(value, ":")
	if !ok {
		return ep, fmt.Errorf("label %s=%q: want %s", key, value, serveForm)
	}
	switch proto {
	case ProtoHTTP, ProtoHTTPS, ProtoTCP, ProtoTLSTerminatedTCP:
		ep.Proto = proto
	default:
		return ep, fmt.Errorf("label %s=%q: unknown protocol %q: want %s", key, value, proto, serveForm)
	}
	target, mount, hasPath := strings.Cut(rest, "/")
	if ep.Target, ok = parsePort(target); !ok {
		return ep, fmt.Errorf("label %s=%q: target port %q is not a number 1-65535: want %s", key, value, target, serveForm)
	}
	switch {
	case hasPath && !ep.L7():
		return ep, fmt.Errorf("label %s=%q: a /path applies to http and https only: want %s:<port>", key, value, proto)
	case !ep.L7():
	case !hasPath:
		ep.Path = "/"
	default:
		mount = "/" + mount
		if !servePathRE.MatchString(mount) || slices.Contains(strings.Split(mount, "/"), "..") {
			return ep, fmt.Errorf("label %s=%q: path %q: want a URL path such as /api (letters, digits and -._~!$&'()*+,;=:@%%/, no ..)", key, value, mount)
		}
		ep.Path = path.Clean(mount)
	}
	return ep, nil
}

// parsePort parses a decimal port 1-65535.
func parsePort(s string) (uint16, bool) {
	if s == "" || strings.TrimLeft(s, "0123456789") != "" {
		return 0, false
	}
	n, err := strconv.ParseUint(s, 10, 16)
	if err != nil || n == 0 {
		return 0, false
	}
	return uint16(n), true
}

var hostnameRE = regexp.MustCompile(`^[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?$`)

// ValidHostname reports whether s is a valid DNS label (RFC 1123), which is
// what Tailscale uses as a node's MagicDNS name.
func ValidHostname(s string) bool { return hostnameRE.MatchString(s) }

// HostnameFromName turns a container name into a hostname: lowercase, runs
// of other characters become "-", trimmed to 63 bytes. It returns "" if
// nothing is left.
func HostnameFromName(name string) string {
	name = strings.TrimPrefix(name, "/")
	var b strings.Builder
	dash := false
	for _, r := range strings.ToLower(name) {
		if r >= 'a' && r <= 'z' || r >= '0' && r <= '9' {
			b.WriteRune(r)
			dash = false
		} else if !dash && b.Len() > 0 {
			b.WriteByte('-')
			dash = true
		}
	}
	s := b.String()
	if len(s) > 63 {
		s = s[:63]
	}
	return strings.Trim(s, "-")
}

func countPrefix(m map[string]string, prefix string) int {
	n := 0
	for k := range m {
		if strings.HasPrefix(k, prefix) {
			n++
		}
	}
	return n
}

func sortedKeys(m map[string]string) []string {
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	slices.Sort(keys)
	return keys
}
