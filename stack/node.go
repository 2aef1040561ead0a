package stack

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"sync"
	"time"

	"tailscale.com/client/local"
	"tailscale.com/envknob"
	"tailscale.com/ipn"
	"tailscale.com/ipn/ipnstate"
	"tailscale.com/tailcfg"
	"tailscale.com/tsnet"
	"tailscale.com/types/logger"
	"tailscale.com/types/views"

	"github.com/tslink/tslink/pkg/tsopts"
)

// Config describes one container's node. AuthKey is secret: it goes to tsnet
// and nowhere else (no log, no error).
type Config struct {
	// EndpointID is Docker's endpoint ID; the host-side TUN name derives from
	// it ([HostTUNName]). Required.
	EndpointID string
	// Hostname is the node's name on the tailnet. Required.
	Hostname string
	// StateDir holds the node's tsnet state (its identity) and lock. Required;
	// created 0700 if missing. Using the same dir again is the same node.
	StateDir string
	// Owner names who holds the state dir (e.g. the container's name); it is
	// shown to whoever finds the dir locked.
	Owner string
	// ControlURL is the coordination server; empty means Tailscale's.
	ControlURL string
	// AuthKey logs a new node in. Ignored when StateDir already holds a
	// logged-in node.
	AuthKey string
	// Ephemeral registers the node as ephemeral; [Node.Close] then logs it
	// out so control removes it at once.
	Ephemeral bool
	// Tags are the ACL tags the node advertises ("tag:name").
	Tags []string
	// Logf receives the node's backend log (debug.log); nil discards it.
	// Lines pass through [Redact] first.
	Logf logger.Logf `json:"-"`
	// AdoptNetNS, if set, is the path of a netns that already holds this
	// node's persistent tailscale0 (left by a previous plugin process):
	// [Start] re-opens it there instead of creating a TUN.
	AdoptNetNS string
	// Serve is what the node serves on the tailnet (ts.serve.*, ts.service,
	// ts.direct). A Service needs Tags.
	Serve tsopts.Serve
}

func (c *Config) validate() error {
	switch {
	case c.EndpointID == "":
		return errors.New("stack: Config.EndpointID is empty")
	case c.Hostname == "":
		return errors.New("stack: Config.Hostname is empty")
	case c.StateDir == "":
		return errors.New("stack: Config.StateDir is empty")
	}
	return nil
}

// Node is one container's tailnet node. Its methods are safe for concurrent
// use; Close may be called at any time after Start returned.
type Node struct {
	cfg    Config
	srv    *tsnet.Server
	lc     *local.Client
	dev    *device
	lock   *stateLock
	logf   logger.Logf
	cancel context.CancelFunc // stops the address watcher
	relays *relays            // Serve backends; nil without ts.serve labels
	wg     sync.WaitGroup

	mu      sync.Mutex // guards the fields below and serialises Attach/Close
	closed  bool
	nsPath  string         // netns holding tailscale0 (via nsFile); "" while in the host netns
	nsFile  *os.File       // the netns, held from attach to Close
	nsShown string         // the path the netns was given by, for status
	addrs   []netip.Prefix // the node's Tailscale addresses, host prefixes
	state   ipn.State
	lastErr string
	self    *tailcfg.Node // the self node as last seen on the IPN bus while starting
	suffix  string        // the tailnet's MagicDNS suffix, "" until known
}

func (n *Node) setDNSSuffix(st *ipnstate.Status) {
	if st.CurrentTailnet == nil || st.CurrentTailnet.MagicDNSSuffix == "" {
		return
	}
	n.mu.Lock()
	n.suffix = st.CurrentTailnet.MagicDNSSuffix
	n.mu.Unlock()
}

func (n *Node) dnsSuffix() string {
	n.mu.Lock()
	defer n.mu.Unlock()
	return n.suffix
}

var disableLogUploadOnce sync.Once

// FinishReserve is the part of Start's ctx kept for the work after the node
// is up (status, serve config): the wait for Running ends this much (at most
// a quarter of the time left) before ctx's deadline.
const FinishReserve = 3 * time.Second

// Start creates the node's TUN and brings the node up, waiting until it is
// Running or ctx ends (callers pass Docker's remaining Join budget, 20 s by
// default). A node that control has accepted but that is not Running when
// the wait ends (netmap or DERP connection still pending, e.g. on a starved
// CPU) is returned rather than failed: tailscale0 gets its addresses when the
// netmap arrives and peers reach it once it is connected. On error nothing is left behind: no TUN, lock or goroutine; the
// error is a [*NodeError] for failures of the node itself.
func Start(ctx context.Context, cfg Config) (_ *Node, retErr error) {
	if err := cfg.validate(); err != nil {
		return nil, err
	}
	// tsnet uploads backend logs to log.tailscale.com unless told not to;
	// tslink keeps them local (debug.log).
	disableLogUploadOnce.Do(envknob.SetNoLogsNoSupport)

	n := &Node{cfg: cfg, state: ipn.NoState}
	n.logf = redactingLogf(cfg.Logf, cfg.AuthKey)

	var err error
	n.lock, err = lockStateDir(cfg.StateDir, cfg.Owner)
	if err != nil {
		return nil, err
	}
	defer func() {
		if retErr != nil {
			// A failed adoption keeps tailscale0 for the next attempt.
			n.teardown(cfg.AdoptNetNS != "")
		}
	}()

	if cfg.AdoptNetNS != "" {
		// Opening the TUN gives it carrier, which makes its DNS route
		// count again; until this node answers DNS (answerDNS, then
		// routeDNS), the container's DNS keeps its normal path.
		if err := unrouteDNS(cfg.AdoptNetNS); err != nil {
			n.logf("tslink: %v", err)
		}
		n.dev, err = openTUNIn(cfg.AdoptNetNS, TUNName)
		if err == nil {
			err = n.holdNetNS(cfg.AdoptNetNS)
		}
	} else {
		n.dev, err = createTUN(HostTUNName(cfg.EndpointID))
	}
	if err != nil {
		return nil, err
	}

	n.srv = &tsnet.Server{
		Dir:           cfg.StateDir,
		Hostname:      cfg.Hostname,
		ControlURL:    cfg.ControlURL,
		AuthKey:       cfg.AuthKey,
		Ephemeral:     cfg.Ephemeral,
		AdvertiseTags: slices.Clone(cfg.Tags),
		Tun:           n.dev,
		Logf:          n.logf,
		UserLogf:      n.logf,
	}
	_, statErr := os.Stat(filepath.Join(cfg.StateDir, "tailscaled.state"))
	freshState := errors.Is(statErr, os.ErrNotExist)
	startedAt := time.Now()
	if err := n.srv.Start(); err != nil {
		return nil, fmt.Errorf("starting tsnet: %s", Redact(err.Error(), cfg.AuthKey))
	}
	n.lc, err = n.srv.LocalClient()
	if err != nil {
		return nil, err
	}
	n.logf("tslink: tsnet started in %v", time.Since(startedAt).Round(time.Millisecond))
	waitCtx := ctx
	if dl, ok := ctx.Deadline(); ok {
		var cancel context.CancelFunc
		waitCtx, cancel = context.WithDeadline(ctx, dl.Add(-min(FinishReserve, time.Until(dl)/4)))
		defer cancel()
	}
	if err := n.waitRunning(waitCtx); err != nil {
		return nil, err
	}
	// The self node from the IPN bus gives addresses, tags and name without
	// a LocalAPI call, which waits on the backend's lock and can take
	// seconds when many nodes start at once. Serve config needs the status.
	needStatus := len(cfg.Serve.Endpoints) > 0 || !freshState || n.self == nil
	st := &ipnstate.Status{}
	if needStatus {
		// Bounded by what is left of ctx (FinishReserve or more).
		sctx, scancel := context.WithTimeout(ctx, 2*time.Second)
		defer scancel()
		if st, err = n.lc.StatusWithoutPeers(sctx); err != nil {
			if len(cfg.Serve.Endpoints) > 0 || !freshState {
				return nil, fmt.Errorf("reading node status: %w", err)
			}
			n.logf("tslink: reading node status: %v; continuing", err)
			st = &ipnstate.Status{}
		}
	} else {
		st = statusFromSelf(n.self)
	}
	for _, ip := range st.TailscaleIPs {
		n.addrs = append(n.addrs, netip.PrefixFrom(ip, ip.BitLen()))
	}
	if len(n.addrs) == 0 && len(cfg.Serve.Endpoints) > 0 {
		return nil, n.nodeError(ErrNotReady, fmt.Sprintf("state %v with no Tailscale address from control yet%s", n.state, n.healthDetail()))
	}
	if len(n.addrs) == 0 {
		n.logf("tslink: no Tailscale address yet; tailscale0 gets it when the netmap arrives")
	}
	n.answerDNS(st)
	if n.nsPath != "" {
		if err := n.configureLocked(); err != nil {
			return nil, err
		}
		if err := n.dev.setPersist(true); err != nil {
			return nil, err
		}
	}

	if len(cfg.Tags) > 0 && st.Self != nil && (st.Self.Tags == nil || st.Self.Tags.Len() == 0) {
		n.lastErr = fmt.Sprintf("%v: asked for %s; the node is untagged (check the tailnet policy's tagOwners)", ErrTagsNotGranted, strings.Join(cfg.Tags, ","))
		n.logf("tslink: %s", n.lastErr)
	}
	// A new identity has no serve config or service advertisement to
	// replace: only nodes with serve labels, or reused state, need the calls.
	if needStatus && (len(cfg.Serve.Endpoints) > 0 || !freshState) {
		if err := n.applyServe(ctx, st); err != nil {
			return nil, err
		}
	}

	wctx, cancel := context.WithCancel(context.Background())
	n.cancel = cancel
	n.wg.Go(func() { n.watch(wctx) })
	return n, nil
}

// waitRunning follows the IPN bus until the backend is Running, turning the
// states tsnet.Server.Up would wait on forever into errors.
func (n *Node) waitRunning(ctx context.Context) error {
	start := time.Now()
	w, err := n.lc.WatchIPNBus(ctx, ipn.NotifyInitialState|ipn.NotifyNoNetMap)
	if err != nil {
		return n.nodeError(ErrControlUnreachable, err.Error())
	}
	defer w.Close()
	loggedIn := false
	for {
		nt, err := w.Next()
		if err != nil {
			if ctx.Err() == nil {
				return fmt.Errorf("watching node state: %w", err)
			}
			waited := time.Since(start).Round(100 * time.Millisecond)
			if loggedIn {
				// Control accepted the node, but the backend is not
				// Running yet: netmap pending, or no DERP connection
				// (ipnlocal waits for a live DERP before Running), as
				// when many nodes start at once on a busy host. The
				// node carries on; its addresses reach tailscale0 when
				// the netmap arrives, and peers reach it once connected.
				n.logf("tslink: node logged in but %v after %v (control or this host is slow); continuing", n.state, waited)
				return nil
			}
			if !loggedIn && (n.state == ipn.NoState || n.state == ipn.NeedsLogin) {
				return n.nodeError(ErrControlUnreachable, fmt.Sprintf("no answer after %v%s", waited, n.healthDetail()))
			}
			return n.nodeError(ErrNotReady, fmt.Sprintf("state %v after %v%s", n.state, waited, n.healthDetail()))
		}
		if nt.ErrMessage != nil {
			msg := *nt.ErrMessage
			if looksLikeKeyRejection(msg) {
				return n.nodeError(ErrAuthKeyRejected, msg)
			}
			return n.nodeError(ErrNotReady, msg)
		}
		if nt.LoginFinished != nil {
			loggedIn = true
		}
		if nt.SelfChange != nil {
			n.self = nt.SelfChange
		}
		if nt.BrowseToURL != nil && *nt.BrowseToURL != "" {
			if n.cfg.AuthKey == "" {
				return n.nodeError(ErrNeedsLogin, "no auth key was given")
			}
			return n.nodeError(ErrAuthKeyRejected, "control asked for an interactive login instead")
		}
		if nt.State != nil {
			n.setState(*nt.State)
			switch *nt.State {
			case ipn.Running:
				return nil
			case ipn.NeedsMachineAuth:
				return n.nodeError(ErrNeedsApproval, "approve "+n.cfg.Hostname+", then start the container again")
			case ipn.Starting:
				loggedIn = true
			}
		}
	}
}

func looksLikeKeyRejection(msg string) bool {
	m := strings.ToLower(msg)
	return strings.Contains(m, "authkey") || strings.Contains(m, "auth key") || strings.Contains(m, "invalid key") || strings.Contains(m, "key expired")
}

func (n *Node) healthDetail() string {
	ctx, cancel := context.WithTimeout(context.Background(), time.Second)
	defer cancel()
	st, err := n.lc.StatusWithoutPeers(ctx)
	if err != nil || len(st.Health) == 0 {
		return ""
	}
	return "; health: " + strings.Join(st.Health, "; ")
}

func (n *Node) nodeError(kind error, detail string) *NodeError {
	e := &NodeError{Kind: kind, ControlURL: n.cfg.ControlURL, Detail: Redact(detail, n.cfg.AuthKey)}
	n.mu.Lock()
	n.lastErr = e.Error()
	n.mu.Unlock()
	n.logf("tslink: %v", e)
	return e
}

func (n *Node) setState(st ipn.State) {
	n.mu.Lock()
	defer n.mu.Unlock()
	if n.state != st {
		n.logf("tslink: node state %v -> %v", n.state, st)
	}
	n.state = st
}

// watch follows the IPN bus while the node runs: state for [Node.Status], and
// self-node address changes, which it applies to tailscale0.
func (n *Node) watch(ctx context.Context) {
	for ctx.Err() == nil {
		w, err := n.lc.WatchIPNBus(ctx, ipn.NotifyInitialState|ipn.NotifyNoNetMap)
		if err != nil {
			return
		}
		for {
			nt, err := w.Next()
			if err != nil {
				break
			}
			if nt.State != nil {
				n.setState(*nt.State)
			}
			if nt.ErrMessage != nil {
				n.mu.Lock()
				n.lastErr = Redact(*nt.ErrMessage, n.cfg.AuthKey)
				n.mu.Unlock()
			}
			if nt.SelfChange != nil {
				n.setDNSSuffix(statusFromSelf(nt.SelfChange))
				var addrs []netip.Prefix
				for _, p := range nt.SelfChange.Addresses {
					if p.IsSingleIP() {
						addrs = append(addrs, p)
					}
				}
				n.setAddrs(addrs)
			}
		}
		w.Close()
		select {
		case <-ctx.Done():
		case <-time.After(time.Second):
		}
	}
}

func (n *Node) setAddrs(addrs []netip.Prefix) {
	n.mu.Lock()
	defer n.mu.Unlock()
	if len(addrs) == 0 || slices.Equal(addrs, n.addrs) || n.closed {
		return
	}
	n.logf("tslink: node addresses %v -> %v", n.addrs, addrs)
	n.addrs = addrs
	if n.nsPath != "" {
		if err := n.configureLocked(); err != nil {
			n.lastErr = err.Error()
			n.logf("tslink: applying addresses: %v", err)
		}
	}
}

// Addrs returns the node's Tailscale IPv4 and IPv6 addresses (invalid if
// absent).
func (n *Node) Addrs() (v4, v6 netip.Addr) {
	n.mu.Lock()
	defer n.mu.Unlock()
	for _, p := range n.addrs {
		if p.Addr().Is4() {
			v4 = p.Addr()
		} else {
			v6 = p.Addr()
		}
	}
	return v4, v6
}

// Server returns the node's tsnet.Server, e.g. for Serve config. The Node
// owns it: callers must not Close it.
func (n *Node) Server() *tsnet.Server { return n.srv }

// LocalClient returns the node's in-process LocalAPI client.
func (n *Node) LocalClient() *local.Client { return n.lc }

// Status is a snapshot of a node for status output.
type Status struct {
	Hostname string
	State    string // IPN state: Running, NeedsLogin, ...
	Addrs    []netip.Prefix
	NetNS    string // where tailscale0 lives; "" = host netns (not attached)
	LastErr  string
}

// Status returns a snapshot of the node.
func (n *Node) Status() Status {
	n.mu.Lock()
	defer n.mu.Unlock()
	return Status{Hostname: n.cfg.Hostname, State: n.state.String(), Addrs: slices.Clone(n.addrs), NetNS: n.nsShown, LastErr: n.lastErr}
}

// Attach moves tailscale0 into the netns at nsPath (a path to an nsfs mount
// or /proc/<pid>/ns/net), configures its addresses and routes, and makes it
// persistent. IPv6 failures are logged, not returned (see
// [Node.ReapplyIPv6]). Attaching again to the same netns re-applies the
// configuration.
func (n *Node) Attach(nsPath string) error {
	n.mu.Lock()
	defer n.mu.Unlock()
	if n.closed {
		return ErrClosed
	}
	if n.nsPath != "" && !sameFile(n.nsPath, nsPath) {
		return fmt.Errorf("%s is already attached to netns %s", TUNName, n.nsShown)
	}
	if n.nsPath == "" {
		// Before tailscale0 is there: whatever fails from here on, the
		// tailnet stays unreachable in the container rather than routed
		// to Docker's NAT.
		err6, err := installFallbacks(nsPath)
		if err != nil {
			return err
		}
		if err6 != nil {
			n.logf("tslink: IPv6 fallback route not installed yet: %v", err6)
		}
		if err := moveTUN(HostTUNName(n.cfg.EndpointID), nsPath); err != nil {
			return err
		}
		if err := n.holdNetNS(nsPath); err != nil {
			return err
		}
	}
	if err := n.configureLocked(); err != nil {
		return err
	}
	return n.dev.setPersist(true)
}

func (n *Node) configureLocked() error {
	err6, err := configureTUN(n.nsPath, n.addrs)
	if err != nil {
		return err
	}
	if err6 != nil {
		n.logf("tslink: IPv6 on %s not configured yet: %v", TUNName, err6)
	}
	for _, p := range n.addrs {
		if p.Addr().Is4() {
			if err := routeDNS(n.nsPath, p.Addr()); err != nil {
				n.logf("tslink: MagicDNS for Docker's DNS: %v", err)
			}
		}
	}
	return nil
}

// ReapplyIPv6 enables IPv6 on tailscale0 and re-adds its IPv6 address and
// route, which Docker's IPv6 disabling removes after Attach. Call it after the
// container has started.
func (n *Node) ReapplyIPv6() error {
	n.mu.Lock()
	defer n.mu.Unlock()
	if n.closed {
		return ErrClosed
	}
	if n.nsPath == "" {
		return errors.New("node is not attached to a netns")
	}
	if err := enableIPv6(n.nsPath); err != nil {
		return err
	}
	err6, err := configureTUN(n.nsPath, n.addrs)
	return errors.Join(err, err6)
}

// Close stops the node: an ephemeral node is logged out first (so control
// removes it now), then tsnet stops, tailscale0 is deleted wherever it lives,
// and the state-dir lock is released. ctx bounds the logout. Close is
// idempotent and safe on a node whose container never started.
func (n *Node) Close(ctx context.Context) error {
	n.mu.Lock()
	if n.closed {
		n.mu.Unlock()
		return nil
	}
	n.closed = true
	running := n.state == ipn.Running
	n.mu.Unlock()

	if running {
		n.withdrawService(ctx)
	}
	var logoutErr error
	// tsnet's LocalBackend.Shutdown also logs ephemeral nodes out, best
	// effort; logging out first makes it bounded by ctx and reported.
	if n.cfg.Ephemeral && running {
		lctx, cancel := context.WithTimeout(ctx, 5*time.Second)
		if err := n.lc.Logout(lctx); err != nil {
			logoutErr = fmt.Errorf("logging out ephemeral node %s: %w", n.cfg.Hostname, err)
		} else {
			n.logf("tslink: logged out of control")
		}
		cancel()
	}
	if n.cancel != nil {
		n.cancel()
	}
	n.teardown(false)
	n.wg.Wait()
	return logoutErr
}

// teardown releases everything Start acquired. keepTUN leaves a persistent
// tailscale0 in place (a failed adoption); otherwise persistence is cleared
// first so closing the last fd deletes the device.
// holdNetNS opens the netns at nsPath and keeps it open until Close: later
// work in the netns goes through /proc/self/fd, so it does not depend on the
// path staying valid (a /proc/<dockerd pid>/root/... path dies with that
// dockerd process, e.g. on a live-restore restart).
func (n *Node) holdNetNS(nsPath string) error {
	f, err := os.Open(nsPath)
	if err != nil {
		return fmt.Errorf("opening netns %s: %w", nsPath, err)
	}
	n.nsFile = f
	n.nsShown = nsPath
	n.nsPath = fmt.Sprintf("/proc/self/fd/%d", f.Fd())
	return nil
}

// sameFile reports whether paths a and b name the same file (netns).
func sameFile(a, b string) bool {
	fa, err1 := os.Stat(a)
	fb, err2 := os.Stat(b)
	return err1 == nil && err2 == nil && os.SameFile(fa, fb)
}

func (n *Node) teardown(keepTUN bool) {
	if n.relays != nil {
		n.relays.close()
	}
	if n.dev != nil {
		if a := n.dev.dns.Swap(nil); a != nil {
			a.stop()
		}
	}
	if n.dev != nil && !keepTUN {
		n.dev.setPersist(false)
	}
	if n.srv != nil {
		n.srv.Close() // closes the TUN through wgengine
	}
	if n.dev != nil {
		n.dev.Close() // no-op if wgengine already closed it
	}
	if n.nsFile != nil {
		n.nsFile.Close()
	}
	n.lock.release()
}

var tskeyPattern = regexp.MustCompile(`tskey-[A-Za-z0-9-]+`)

// Redact removes secret and anything shaped like a Tailscale key
// ("tskey-...") from s.
func Redact(s, secret string) string {
	if secret != "" {
		s = strings.ReplaceAll(s, secret, "[REDACTED]")
	}
	return tskeyPattern.ReplaceAllString(s, "tskey-[REDACTED]")
}

func redactingLogf(logf logger.Logf, secret string) logger.Logf {
	if logf == nil {
		return logger.Discard
	}
	return func(format string, args ...any) {
		logf("%s", Redact(fmt.Sprintf(format, args...), secret))
	}
}

// statusFromSelf is the part of a status Start uses (addresses, tags, DNS
// name, MagicDNS suffix), built from the self node of a netmap.
func statusFromSelf(self *tailcfg.Node) *ipnstate.Status {
	st := &ipnstate.Status{Self: &ipnstate.PeerStatus{DNSName: self.Name}}
	for _, p := range self.Addresses {
		if p.IsSingleIP() {
			st.TailscaleIPs = append(st.TailscaleIPs, p.Addr())
		}
	}
	if len(self.Tags) > 0 {
		tags := views.SliceOf(self.Tags)
		st.Self.Tags = &tags
	}
	// A node's MagicDNS name is <hostname>.<suffix>.
	if _, suffix, ok := strings.Cut(strings.TrimSuffix(self.Name, "."), "."); ok {
		st.CurrentTailnet = &ipnstate.TailnetStatus{MagicDNSSuffix: suffix}
	}
	return st
}
