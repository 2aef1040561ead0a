package stack

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/netip"
	"os"
	"regexp"
	"slices"
	"strings"
	"sync"
	"time"

	"tailscale.com/client/local"
	"tailscale.com/ipn"
	"tailscale.com/ipn/ipnstate"
	"tailscale.com/tailcfg"
	"tailscale.com/tsnet"
	"tailscale.com/types/logger"
	"tailscale.com/types/views"
	"tailscale.com/util/dnsname"

	"github.com/tslink/tslink/pkg/execssh"
	"github.com/tslink/tslink/pkg/nodespec"
	"github.com/tslink/tslink/pkg/statedir"
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
	// AuthKey logs a new node in. When StateDir already holds a logged-in
	// node, the node starts without it (see [Start]) and uses it only if
	// control asks that node to log in again. An OAuth client secret
	// (tskey-client-…, package oauthsecret) creates a single-use auth key
	// with Tags and Ephemeral each time a key is needed; Tags are then
	// required.
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
	// Wait is how long [Start] waits for the node to be Running (ts.timeout);
	// Start then keeps a little more time (finishReserve) for its remaining
	// work, all within ctx's deadline. Zero: until near ctx's deadline.
	Wait time.Duration
	// DNSUpstreams, if set, lists the resolvers for names outside the
	// tailnet asked of 100.100.100.100 when control sends no nameservers
	// (the plugin's TS_DNS_UPSTREAMS, else the host's own resolvers). They
	// are asked from the container's netns, like every forwarded query.
	DNSUpstreams func() []netip.AddrPort `json:"-"`
	// Serve is what the node serves on the tailnet (ts.serve.*, ts.service,
	// ts.direct). A Service needs Tags ([nodespec.CheckService]).
	Serve nodespec.Serve
	// SSH is the node's SSH server into the container (ts.ssh); the zero
	// value runs none.
	SSH SSHConfig
	// Egress is how the node routes beyond the tailnet (ts.accept-routes,
	// ts.advertise-routes, ts.advertise-exit-node, ts.exit-node,
	// ts.exit-node-allow-lan; egress.go).
	Egress nodespec.Egress
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
	lock   *statedir.Lock
	logf   logger.Logf
	cancel context.CancelFunc // stops the address watcher
	relays *relays            // Serve backends; nil without ts.serve labels
	sshd   *execssh.Server    // ts.ssh; nil without it
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
	name    string        // the node's MagicDNS name as control has it (no trailing dot), "" until known

	keyless   bool      // started from state without the auth key (see Start)
	keyUsed   bool      // the auth key was sent after control asked for a login
	keyExpiry time.Time // the node key's expiry from the last self node; zero: none

	peers        map[tailcfg.NodeID][]netip.Prefix // peers' routed addresses; nil until the first netmap
	peersKnown   chan struct{}                     // closed once peers is set
	logsRetrying bool                              // resumeWhenLogsNotRequired runs
	routed       map[netip.Prefix]bool             // peer routes in nsPath (true: both routes, false: one); nil: read them from the netns

	loggedIn     bool          // control accepted the node (LoginFinished, or Starting/Running seen)
	loginRefused bool          // control refused the login: no netmap can follow (closing.go)
	selfSeen     chan struct{} // closed once the IPN bus showed the self node: the first netmap was applied
	selfOnce     sync.Once

	control controlProgress // the login's steps, from the backend log
	phases  startPhases     // Start's steps before waitRunning
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

// finishReserve is the part of Start's time kept for the work after the
// node is up (status, serve config): the wait for Running ends this much (at
// most a quarter of the time left) before Start's deadline.
const finishReserve = 3 * time.Second

// Start creates the node's TUN and brings the node up, waiting until it is
// Running, [Config.Wait] has passed or ctx ends (callers pass Docker's Join
// budget as ctx's deadline). A node that control has accepted but that is not Running when
// the wait ends (netmap or DERP connection still pending, e.g. on a starved
// CPU) is returned rather than failed: tailscale0 gets its addresses when the
// netmap arrives and peers reach it once it is connected. On error nothing
// is left behind once [TeardownDone] of the error is closed: no TUN, lock or
// goroutine; the error is a [*NodeError] for failures of the node itself.
// Start waits for the teardown while ctx lasts; it returns before the
// teardown ends when ctx ends first (closing a node waits for a slot among
// the process's closes, closing.go) and when control had accepted the node
// but its first netmap was not applied yet (torn down once it was, at most
// [firstNetmapWait] later).
//
// A node whose state dir holds a logged-in node (a node key, not logged
// out) starts without cfg.AuthKey: tsnet would send the key in the register
// request every start makes, and Tailscale's control refuses a request
// carrying a revoked or expired key even from a node whose node key is valid
// (tailscale/tailscale#16987, #19501), so a persistent node would stop
// coming back once its network's key expired. If control then asks the node
// to log in (it no longer knows the node, or the node key expired and must
// be replaced), the node logs in with cfg.AuthKey once (LocalAPI start, as
// `tailscale up --auth-key` does).
func Start(ctx context.Context, cfg Config) (_ *Node, retErr error) {
	if err := cfg.validate(); err != nil {
		return nil, err
	}
	// tsnet uploads backend logs to log.tailscale.com unless told not to;
	// tslink keeps them local (debug.log) unless the plugin setting allows it.
	applyProcessDefaults()

	if cfg.Wait > 0 {
		var cancel context.CancelFunc
		ctx, cancel = context.WithDeadline(ctx, time.Now().Add(cfg.Wait+finishReserve))
		defer cancel()
	}

	n := &Node{cfg: cfg, state: ipn.NoState, peersKnown: make(chan struct{}), selfSeen: make(chan struct{})}
	n.logf = redactingLogf(cfg.Logf, cfg.AuthKey)

	var err error
	n.lock, err = statedir.TakeLock(cfg.StateDir, cfg.Owner)
	if err != nil {
		return nil, err
	}
	defer func() {
		if retErr == nil {
			return
		}
		// A failed adoption keeps tailscale0 for the next attempt.
		keepTUN := cfg.AdoptNetNS != ""
		if n.srv == nil {
			// No tsnet server: nothing that can take long to stop.
			n.safeTeardown(keepTUN)
			return
		}
		netmapPending := n.firstNetmapPending()
		done := make(chan struct{})
		go func() {
			defer close(done)
			n.safeTeardown(keepTUN)
			n.wg.Wait() // a login with the key (loginWithKey) ends with tsnet
		}()
		if !netmapPending {
			// A close waits for a slot among the process's closes
			// and for the backend's shutdown, seconds on a starved
			// host: wait for it while the caller's budget lasts.
			select {
			case <-done:
				return
			case <-ctx.Done():
			}
		}
		// Logged in with the netmap not applied yet (closing now could
		// race it: closing.go), or out of time: the caller gets the
		// error now; TeardownDone tells it when the node is gone.
		retErr = &pendingTeardown{err: retErr, done: done}
	}()

	authKey := ""
	phaseBegan := time.Now()
	if stateHasNodeKey(cfg.StateDir) {
		n.keyless = true
	} else if authKey, err = n.loginKey(ctx); err != nil {
		return nil, err
	}
	n.phases.authKey = time.Since(phaseBegan)
	phaseBegan = time.Now()

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
	n.dev.logf = n.logf
	n.phases.tun = time.Since(phaseBegan)

	n.srv = &tsnet.Server{
		Dir:           cfg.StateDir,
		Hostname:      cfg.Hostname,
		ControlURL:    cfg.ControlURL,
		AuthKey:       authKey,
		Ephemeral:     cfg.Ephemeral,
		AdvertiseTags: slices.Clone(cfg.Tags),
		Tun:           n.dev,
		Logf:          n.control.tap(n.logf),
		UserLogf:      n.logf,
	}
	_, statErr := os.Stat(statedir.StateFile(cfg.StateDir))
	freshState := errors.Is(statErr, os.ErrNotExist)
	n.phases.memoryRelease = releaseBeforeStart()
	startedAt := time.Now()
	if err := n.srv.Start(); err != nil {
		return nil, fmt.Errorf("starting tsnet: %s", Redact(err.Error(), cfg.AuthKey))
	}
	n.lc, err = n.srv.LocalClient()
	if err != nil {
		return nil, err
	}
	n.phases.tsnetStart = time.Since(startedAt)
	from := ""
	if n.keyless {
		from = " from its state (no auth key sent)"
	}
	n.logf("tslink: tsnet started in %v%s (start steps: %v)", time.Since(startedAt).Round(time.Millisecond), from, n.phases)
	waitCtx := ctx
	if dl, ok := ctx.Deadline(); ok {
		var cancel context.CancelFunc
		waitCtx, cancel = context.WithDeadline(ctx, dl.Add(-min(finishReserve, time.Until(dl)/4)))
		defer cancel()
	}
	if err := n.waitRunning(waitCtx); err != nil {
		return nil, err
	}
	if err := n.applyEgressPrefs(ctx); err != nil {
		return nil, err
	}
	// The self node from the IPN bus gives addresses, tags and name without
	// a LocalAPI call, which waits on the backend's lock and can take
	// seconds when many nodes start at once. Serve config needs the status.
	needStatus := len(cfg.Serve.Endpoints) > 0 || !freshState || n.self == nil
	st := &ipnstate.Status{}
	if needStatus {
		// Bounded by what is left of ctx (finishReserve or more).
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
	if st.Self != nil {
		n.setName(st.Self.DNSName)
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
		if err := n.checkCertAvailable(st); err != nil {
			return nil, err
		}
		if err := n.applyServe(ctx, st); err != nil {
			return nil, err
		}
	}
	if err := n.startSSH(); err != nil {
		return nil, err
	}

	releaseFreedMemorySoon()
	wctx, cancel := context.WithCancel(context.Background())
	n.cancel = cancel
	n.prefetchCert(wctx, st)
	n.wg.Go(func() { n.watch(wctx) })
	n.wg.Go(func() { n.probeBackend(wctx) })
	return n, nil
}

// waitRunning follows the IPN bus until the backend is Running, turning the
// states tsnet.Server.Up would wait on forever into errors.
func (n *Node) waitRunning(ctx context.Context) error {
	start := time.Now()
	w, err := n.lc.WatchIPNBus(ctx, ipn.NotifyInitialState|ipn.NotifyNoNetMap)
	if err != nil {
		if ctx.Err() != nil {
			return n.waitEnded(start, false)
		}
		return fmt.Errorf("watching node state: %w", err)
	}
	defer w.Close()
	loggedIn := false
	for {
		nt, err := w.Next()
		if err != nil {
			if ctx.Err() == nil {
				return fmt.Errorf("watching node state: %w", err)
			}
			return n.waitEnded(start, loggedIn)
		}
		if nt.ErrMessage != nil {
			msg := *nt.ErrMessage
			if looksLikeKeyRejection(msg) {
				n.markLoginRefused()
				return n.nodeError(ErrAuthKeyRejected, msg)
			}
			if requiresLogging(msg) {
				// ipnlocal says so only after applying the netmap
				// that carries the requirement.
				n.markSelfSeen()
				return n.nodeError(ErrLogsRequired, logsRequiredDetail)
			}
			return n.nodeError(ErrNotReady, msg)
		}
		if nt.LoginFinished != nil {
			loggedIn = true
			n.setLoggedIn()
		}
		if nt.SelfChange != nil {
			n.self = nt.SelfChange
			n.markSelfSeen()
		}
		if nt.BrowseToURL != nil && *nt.BrowseToURL != "" {
			if n.loginWithKey() {
				continue
			}
			n.markLoginRefused()
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
				n.setLoggedIn()
			}
		}
	}
}

// waitEnded is [Node.waitRunning]'s answer when its wait (begun at start)
// ended before the node was Running; loggedIn: the IPN bus showed control's
// acceptance.
//
// Control's answers reach the IPN bus only after LocalBackend processed
// them, seconds late on a starved host, so the login's steps in the backend
// log (controlProgress) decide what is reported: a node control accepted
// carries on like one the bus showed logged in; "control server
// unreachable" only when control did not answer at all; a registration
// still pending, or answered without authorizing the node, is "not ready".
// The detail says how long the wait was and what Start did before it.
func (n *Node) waitEnded(start time.Time, loggedIn bool) error {
	now := time.Now()
	waited := fmt.Sprintf("%v (the start steps before the wait took %v: %v)", roundDuration(now.Sub(start)), roundDuration(n.phases.total()), n.phases)
	if !loggedIn && n.control.controlAccepted() {
		n.logf("tslink: control accepted the node; the backend has not reported it yet")
		n.setLoggedIn()
		loggedIn = true
	}
	n.mu.Lock()
	state := n.state
	n.mu.Unlock()
	if loggedIn {
		// Control accepted the node, but the backend is not Running
		// yet: netmap pending, or no DERP connection (ipnlocal waits
		// for a live DERP before Running), as when many nodes start at
		// once on a busy host. The node carries on; its addresses reach
		// tailscale0 when the netmap arrives, and peers reach it once
		// connected.
		n.logf("tslink: node logged in but %v after %s (control or this host is slow); continuing", state, waited)
		return nil
	}
	progress := n.control.describe(now)
	if progress == "" && (state == ipn.NoState || state == ipn.NeedsLogin) {
		return n.nodeError(ErrControlUnreachable, fmt.Sprintf("no answer after %s%s", waited, n.healthDetail()))
	}
	if progress != "" {
		progress = "; " + progress
	}
	return n.nodeError(ErrNotReady, fmt.Sprintf("state %v after %s%s%s", state, waited, progress, n.healthDetail()))
}

// loginWithKey answers control's request for a login of a node started
// from its state without the auth key: it logs in once with the key, in the
// background (LocalBackend.Start, which notifies the IPN bus the caller
// reads). It reports whether it did.
func (n *Node) loginWithKey() bool {
	n.mu.Lock()
	try := n.keyless && !n.keyUsed && n.cfg.AuthKey != "" && !n.closed
	n.keyUsed = n.keyUsed || try
	n.mu.Unlock()
	if !try {
		return false
	}
	n.logf("tslink: control asks this node to log in again (it no longer knows the node, or its node key expired); logging in with the auth key")
	n.wg.Go(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		key, err := n.loginKey(ctx)
		if err != nil {
			return // loginKey logged it
		}
		if err := n.lc.Start(ctx, ipn.Options{AuthKey: key}); err != nil {
			n.logf("tslink: logging in with the auth key: %s", Redact(err.Error(), n.cfg.AuthKey))
		}
	})
	return true
}

// stateHasNodeKey reports whether dir's tsnet state holds a logged-in node:
// the current profile's prefs have a node key and are not logged out. A
// missing or unreadable state is not logged in. It only reads: tsnet's file
// store (a JSON object of base64 values, as ipn/store writes it) rewrites
// a file it opens, which would hide a damaged state from tsnet itself.
func stateHasNodeKey(dir string) bool {
	b, err := os.ReadFile(statedir.StateFile(dir))
	if err != nil {
		return false
	}
	var st map[ipn.StateKey][]byte
	if json.Unmarshal(b, &st) != nil {
		return false
	}
	profile := st[ipn.CurrentProfileStateKey]
	if len(profile) == 0 {
		return false
	}
	var prefs ipn.Prefs
	if err := ipn.PrefsFromBytes(st[ipn.StateKey(profile)], &prefs); err != nil {
		return false
	}
	return !prefs.LoggedOut && prefs.Persist != nil && !prefs.Persist.PrivateNodeKey.IsZero()
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
	if st == ipn.Starting || st == ipn.Running {
		n.loggedIn = true
	}
}

func (n *Node) setLoggedIn() {
	n.mu.Lock()
	n.loggedIn = true
	n.mu.Unlock()
}

// firstNetmapPending reports whether control accepted the node but its
// first netmap has not been seen applied: one may be in flight.
func (n *Node) firstNetmapPending() bool {
	select {
	case <-n.selfSeen:
		return false
	default:
	}
	n.mu.Lock()
	defer n.mu.Unlock()
	return n.srv != nil && n.lc != nil && n.loggedIn && !n.loginRefused
}

// watch follows the IPN bus while the node runs: state for [Node.Status],
// self-node address changes, which it applies to tailscale0, and the peers,
// whose routes it keeps on tailscale0 (peers.go).
func (n *Node) watch(ctx context.Context) {
	for ctx.Err() == nil {
		// NotifyPeerPatches: per-field peer changes (endpoints, online) come
		// as PeerChangedPatch, which the watcher skips, not as full nodes.
		w, err := watchBus(ctx, n.lc, ipn.NotifyInitialState|ipn.NotifyInitialNetMap|ipn.NotifyPeerPatches|ipn.NotifyNoNetMap)
		if err != nil {
			return
		}
		for {
			nt, err := w.next()
			if err != nil {
				break
			}
			if nt.State != nil {
				n.setState(*nt.State)
				if *nt.State == ipn.Running {
					n.mu.Lock()
					if strings.HasPrefix(n.lastErr, ErrLogsRequired.Error()) {
						n.lastErr = ""
					}
					n.mu.Unlock()
				}
			}
			// v1.102.5 delivers the first netmap here (NotifyInitialNetMap) on Linux too; later changes come as PeersChanged/PeersRemoved
			if nm := nt.NetMap; nm != nil {
				if nm.SelfNode != nil {
					n.markSelfSeen()
				}
				n.setPeers(nm.Peers)
				n.markPeersKnown()
			}
			if nt.SelfChange != nil && n.startPeersFromFullNetmap() {
				n.markPeersKnown()
			}
			n.updatePeers(nt.PeersChanged, nt.PeersRemoved)
			if nt.ErrMessage != nil {
				n.mu.Lock()
				n.lastErr = Redact(*nt.ErrMessage, n.cfg.AuthKey)
				stopped := requiresLogging(n.lastErr)
				if stopped {
					n.lastErr = ErrLogsRequired.Error() + ": " + logsRequiredDetail
					n.logf("tslink: %s", n.lastErr)
				}
				n.mu.Unlock()
				if stopped {
					n.resumeWhenLogsNotRequired(ctx)
				}
			}
			if nt.BrowseToURL != nil && *nt.BrowseToURL != "" && !n.loginWithKey() {
				n.mu.Lock()
				n.lastErr = ErrNeedsLogin.Error() + ": control asks this node to log in again; start the container with a valid auth key, or remove its state dir for a new identity"
				n.mu.Unlock()
			}
			if nt.SelfChange != nil {
				n.markSelfSeen()
				if n.setName(nt.SelfChange.Name) {
					n.reapplyServe(ctx)
				}
				n.setKeyExpiry(nt.SelfChange.KeyExpiry)
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

// setName records the node's MagicDNS name from a self node or status
// (dnsName may end in a dot). It logs, once per name, when control's name
// differs from the requested hostname: Tailscale's control gives a node
// "<hostname>-1" (-2, ...) when another node, online or not, holds the name,
// and an admin may rename a node at any time. It reports whether a known
// name changed (a rename while running).
func (n *Node) setName(dnsName string) (renamed bool) {
	name := strings.TrimSuffix(dnsName, ".")
	if name == "" {
		return false
	}
	n.mu.Lock()
	defer n.mu.Unlock()
	if name == n.name {
		return false
	}
	old := n.name
	n.name = name
	label, _, _ := strings.Cut(name, ".")
	switch {
	case old != "":
		n.logf("tslink: control renamed the node %s -> %s", old, name)
	case !strings.EqualFold(label, dnsname.SanitizeHostname(n.cfg.Hostname)):
		n.logf("tslink: hostname %q is taken on the tailnet (another node, possibly offline, holds it); control named this node %s", n.cfg.Hostname, name)
	}
	return old != ""
}

// Name returns the node's MagicDNS name as control has it, without the
// trailing dot ("" until known).
func (n *Node) Name() string {
	n.mu.Lock()
	defer n.mu.Unlock()
	return n.name
}

// keyExpiredError starts the last error of a node whose node key expired.
const keyExpiredError = "node key expired"

// setKeyExpiry records the node key's expiry from a self node. Tailscale's
// client learns of an expired or extended key from its map responses
// (netmap SelfKeyExpiry): on expiry LocalBackend goes to NeedsLogin and
// deconfigures its engine while the map poll goes on; when the admin extends
// the key, the next map response unblocks it and it returns to Running by
// itself, with no new login.
func (n *Node) setKeyExpiry(expiry time.Time) {
	n.mu.Lock()
	defer n.mu.Unlock()
	if expiry.Equal(n.keyExpiry) {
		return
	}
	n.keyExpiry = expiry
	if expiredAt(expiry, time.Now()) {
		n.lastErr = fmt.Sprintf("%s at %s: the node is off the tailnet until an admin extends its key expiry (or disables key expiry) in the admin console; it comes back by itself, no restart needed",
			keyExpiredError, expiry.UTC().Format(time.RFC3339))
		n.logf("tslink: %s", n.lastErr)
		return
	}
	n.logf("tslink: node key expiry %v", expiry.UTC().Format(time.RFC3339))
	if strings.HasPrefix(n.lastErr, keyExpiredError) {
		n.lastErr = ""
	}
}

func expiredAt(expiry, now time.Time) bool { return !expiry.IsZero() && expiry.Before(now) }

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

// peersWait bounds how long Attach waits for the first netmap.
const peersWait = 2 * time.Second

// peerPrefixesLocked lists the known peers' routed prefixes. n.mu held.
func (n *Node) peerPrefixesLocked() []netip.Prefix {
	var out []netip.Prefix
	for _, ps := range n.peers {
		out = append(out, ps...)
	}
	return out
}

// Server returns the node's tsnet.Server, e.g. for Serve config. The Node
// owns it: callers must not Close it.
func (n *Node) Server() *tsnet.Server { return n.srv }

// LocalClient returns the node's in-process LocalAPI client.
func (n *Node) LocalClient() *local.Client { return n.lc }

// Status is a snapshot of a node for status output.
type Status struct {
	Hostname string // as requested (ts.hostname or the container name)
	// Name is the node's MagicDNS name as control has it (FQDN without the
	// trailing dot): "<hostname>-1.<suffix>" when the hostname was taken,
	// or whatever an admin renamed the node to. "" until known.
	Name    string
	State   string // IPN state: Running, NeedsLogin, ...
	Addrs   []netip.Prefix
	NetNS   string // where tailscale0 lives; "" = host netns (not attached)
	LastErr string
	// KeyExpiry is when the node key expires (from control); zero: never,
	// or not known yet.
	KeyExpiry time.Time
	// KeyExpired: KeyExpiry has passed. The node is off the tailnet
	// (State NeedsLogin) until the key is extended.
	KeyExpired bool
	// Tailnet is the tailnet's name, its MagicDNS suffix (e.g.
	// tail1234.ts.net), from the node's netmap; "" until one arrived.
	Tailnet string
}

// Status returns a snapshot of the node.
func (n *Node) Status() Status {
	n.mu.Lock()
	defer n.mu.Unlock()
	st := Status{Hostname: n.cfg.Hostname, Name: n.name, State: n.state.String(), Addrs: slices.Clone(n.addrs), NetNS: n.nsShown, LastErr: n.lastErr, KeyExpiry: n.keyExpiry, Tailnet: n.suffix}
	st.KeyExpired = expiredAt(n.keyExpiry, time.Now())
	if st.KeyExpired && !strings.HasPrefix(st.LastErr, keyExpiredError) {
		// Expired by time passing, with no map response since.
		st.LastErr = keyExpiredError + " at " + n.keyExpiry.UTC().Format(time.RFC3339) + ": waiting for an admin to extend it"
	}
	return st
}

// Attach moves tailscale0 into the netns at nsPath (a path to an nsfs mount
// or /proc/<pid>/ns/net), configures its addresses and routes, and makes it
// persistent. IPv6 failures are logged, not returned (see
// [Node.ReapplyIPv6]). Attaching again to the same netns re-applies the
// configuration.
func (n *Node) Attach(nsPath string) error {
	// The peers' routes go in with the others; the first netmap follows
	// Running at once (tsnet is in this process).
	select {
	case <-n.peersKnown:
	case <-time.After(peersWait):
		n.logf("tslink: attaching before the netmap arrived; peer routes follow it")
	}
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
		fallbacks := append(slices.Clone(tailnetRoutes), n.peerPrefixesLocked()...)
		if n.peers == nil {
			// Until the netmap names the peers (the first sync removes it).
			fallbacks = append(fallbacks, cgnatRange)
		}
		err6, err := installFallbacksFor(nsPath, fallbacks)
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
	if err := configureTUN(n.nsPath, n.addrs); errors.Is(err, errIPv6NotConfigured) {
		n.logf("tslink: %v", err)
	} else if err != nil {
		return err
	}
	n.routed = nil
	n.syncPeerRoutesLocked()
	if err := n.configureEgressLocked(); err != nil {
		return err
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
	return configureTUN(n.nsPath, n.addrs)
}

// Close stops the node: it waits for a first netmap that may be in flight
// (up to [firstNetmapWait], closing.go), an ephemeral node is logged out (so
// control removes it now), then tsnet stops, tailscale0 is deleted wherever
// it lives, and the state-dir lock is released. ctx bounds the logout. Close
// is idempotent and safe on a node whose container never started.
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
	// Before the logout: a node that logs out before its first netmap
	// was applied gets none afterwards, but one in flight still lands.
	_, netmapApplied := n.awaitFirstNetmap()
	var logoutErr error
	// tsnet's LocalBackend.Shutdown also logs ephemeral nodes out, best
	// effort (in a close slot, closeTSNet); logging out first makes it
	// bounded by ctx and reported.
	if n.cfg.Ephemeral && (running || netmapApplied) {
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
	n.teardown()
	n.wg.Wait()
	return logoutErr
}

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

// teardown releases everything Start acquired and deletes the TUN: its
// persistence is cleared first, so closing the last fd deletes the device.
func (n *Node) teardown() {
	if n.dev != nil {
		n.dev.setPersist(false)
	}
	n.teardownKeepingTUN()
}

// teardownKeepingTUN releases everything Start acquired but leaves a
// persistent tailscale0 in place (a failed adoption).
func (n *Node) teardownKeepingTUN() {
	n.closeSSH()
	if n.relays != nil {
		n.relays.close()
	}
	if n.dev != nil {
		if a := n.dev.dns.Swap(nil); a != nil {
			a.stop()
		}
	}
	if n.srv != nil {
		n.closeTSNet()
	}
	if n.dev != nil {
		n.dev.Close() // no-op if wgengine already closed it
	}
	if n.nsFile != nil {
		n.nsFile.Close()
	}
	n.lock.Release()
}

var tskeyPattern = regexp.MustCompile(`(tskey|hskey)-[A-Za-z0-9-]+`)

// Redact removes secret and anything shaped like a Tailscale key
// ("tskey-...") or a Headscale key ("hskey-...") from s.
func Redact(s, secret string) string {
	if secret != "" {
		s = strings.ReplaceAll(s, secret, "[REDACTED]")
	}
	return tskeyPattern.ReplaceAllString(s, "${1}-[REDACTED]")
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
