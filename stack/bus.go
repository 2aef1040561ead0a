package stack

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/netip"

	"tailscale.com/client/local"
	"tailscale.com/client/tailscale/apitype"
	"tailscale.com/ipn"
	"tailscale.com/tailcfg"
)

// The running node's IPN bus watcher decodes only the fields it acts on.
// On each full netmap, LocalBackend sends a watcher that asked for peer
// changes every peer as a full tailcfg.Node in Notify.PeersChanged
// (ipn/ipnlocal setControlClientStatusLocked, v1.102.5).
// local.Client.WatchIPNBus would decode each one whole (Hostinfo, keys,
// endpoints, capabilities) in every node of the process; here the JSON
// decoder skips all but the fields named below.

// busNotify is the subset of an [ipn.Notify] that [Node.watch] reads, with
// the same JSON field names.
type busNotify struct {
	State        *ipn.State
	ErrMessage   *string
	BrowseToURL  *string
	NetMap       *busNetMap // only with ipn.NotifyInitialNetMap, in the first message
	SelfChange   *tailcfg.Node
	PeersChanged []busPeer
	PeersRemoved []tailcfg.NodeID
}

// busNetMap is the subset of a netmap.NetworkMap that [Node.watch] reads.
// SelfNode is non-nil when the netmap has a self node (a valid NodeView
// encodes as an object, an invalid one as null).
type busNetMap struct {
	SelfNode *struct{}
	Peers    []busPeer
}

// busPeer is the subset of a peer's [tailcfg.Node] that sets its routes on
// tailscale0 (peers.go).
type busPeer struct {
	ID            tailcfg.NodeID
	Addresses     []netip.Prefix
	PrimaryRoutes []netip.Prefix
}

// busWatcher is one watch of the IPN bus, as [local.Client.WatchIPNBus]
// makes it: a LocalAPI GET /localapi/v0/watch-ipn-bus?mask=... whose
// response body is a stream of JSON ipn.Notify objects.
type busWatcher struct {
	body io.ReadCloser
	dec  *json.Decoder
}

// watchBus starts a watch with mask. It returns an error when the LocalAPI
// cannot be reached or does not answer 200; ctx ends the watch.
func watchBus(ctx context.Context, lc *local.Client, mask ipn.NotifyWatchOpt) (*busWatcher, error) {
	m, err := mask.MarshalText()
	if err != nil {
		return nil, err
	}
	req, err := http.NewRequestWithContext(ctx, "GET", "http://"+apitype.LocalAPIHost+"/localapi/v0/watch-ipn-bus?mask="+string(m), nil)
	if err != nil {
		return nil, err
	}
	res, err := lc.DoLocalRequest(req)
	if err != nil {
		return nil, err
	}
	if res.StatusCode != http.StatusOK {
		res.Body.Close()
		return nil, fmt.Errorf("watch-ipn-bus: %s", res.Status)
	}
	return &busWatcher{body: res.Body, dec: json.NewDecoder(res.Body)}, nil
}

// next returns the next notification; an error ends the watch.
func (w *busWatcher) next() (*busNotify, error) {
	var n busNotify
	if err := w.dec.Decode(&n); err != nil {
		return nil, err
	}
	return &n, nil
}

// Close ends the watch.
func (w *busWatcher) Close() error { return w.body.Close() }
