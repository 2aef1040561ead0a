package stack

import (
	"errors"
	"fmt"

	"github.com/tslink/tslink/pkg/nodespec"
	"github.com/tslink/tslink/pkg/statedir"
)

// Sentinel errors a caller can branch on with errors.Is. [NodeError] wraps
// one of the first six.
var (
	// ErrAuthKeyRejected: control refused the auth key (wrong, expired, or
	// revoked).
	ErrAuthKeyRejected = errors.New("auth key rejected by control server")
	// ErrControlUnreachable: no answer from control within the wait.
	ErrControlUnreachable = errors.New("control server unreachable")
	// ErrNeedsApproval: the tailnet requires device approval and this node
	// has not been approved.
	ErrNeedsApproval = errors.New("node needs approval in the admin console")
	// ErrNeedsLogin: control wants an interactive login (no auth key, or a
	// key that cannot log this node in).
	ErrNeedsLogin = errors.New("node needs an interactive login")
	// ErrNotReady: the node reached control but was not Running in time.
	ErrNotReady = errors.New("node not ready")
	// ErrOAuthSecret: the auth key is an OAuth client secret and no auth
	// key could be created with it (the API refused it or the tags, or
	// could not be reached).
	ErrOAuthSecret = errors.New("could not create an auth key with the OAuth client secret")

	// ErrTagsNotGranted: the node asked for ACL tags and control gave it
	// none (the tailnet policy's tagOwners do not allow them for this key).
	ErrTagsNotGranted = errors.New("control did not grant the requested tags")

	// ErrNoHTTPSCert: a ts.serve label asks for TLS (https,
	// tls-terminated-tcp) and control offers this node no certificate: its
	// netmap's DNS CertDomains lack the node's name. Tailscale's client
	// decides the same way (feature/acme refuses a domain not in
	// CertDomains), so no handshake could ever succeed.
	ErrNoHTTPSCert = errors.New("no HTTPS certificate available for this node")

	// ErrStateDirInUse: another node holds this state dir's lock.
	ErrStateDirInUse = statedir.ErrInUse
	// ErrNoTUN: there is no tailscale0 to adopt in the given netns.
	ErrNoTUN = errors.New("no TUN to adopt")
	// ErrClosed: the node was closed.
	ErrClosed = errors.New("node closed")
	// ErrLogsRequired: the tailnet has network flow logs on (node capability
	// data-plane-audit-logs) and log upload is off; the node stopped.
	ErrLogsRequired = errors.New("the tailnet requires client logging (network flow logs are on) and tslink's log upload is off")
)

// logsRequiredDetail says how to allow log upload.
const logsRequiredDetail = "allow it with the plugin setting " + LogUploadSetting + "=1 (docker plugin disable, docker plugin set <plugin> " + LogUploadSetting + "=1, docker plugin enable), or turn network flow logs off for the tailnet"

// NodeError is a failure to bring a node up, phrased for the user who ran
// `docker run`. It never contains the auth key.
type NodeError struct {
	Kind       error  // one of the Err* sentinels
	ControlURL string // control server the node talked to ("" = Tailscale's default)
	Detail     string // what control or the backend said, redacted; may be empty
}

func (e *NodeError) Error() string {
	url := nodespec.ControlDisplay(e.ControlURL)
	if url == "" {
		url = "(Tailscale default)"
	}
	msg := fmt.Sprintf("%v (%s)", e.Kind, url)
	if e.Detail != "" {
		msg += ": " + e.Detail
	}
	return msg
}

func (e *NodeError) Unwrap() error { return e.Kind }
