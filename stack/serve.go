package stack

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"tailscale.com/ipn"
	"tailscale.com/ipn/ipnstate"
	"tailscale.com/tailcfg"

	"github.com/tslink/tslink/pkg/nodespec"
)

// ErrUntaggedService is [nodespec.ErrUntaggedService].
var ErrUntaggedService = nodespec.ErrUntaggedService

// relays forwards the Serve backends' connections into the container.
//
// tailscale's serve proxy (ipnlocal) dials its backends from this process's
// netns, where the container's localhost is out of reach, and tsnet's
// LocalAPI refuses unix-socket backends (its actor is not a local admin). So
// each target port gets a listener on 127.0.0.1 of the plugin's netns, used as
// the serve backend; it accepts connections from this process's own sockets
// only ([fromThisProcess]: the peer socket's inode, from sock_diag, among
// /proc/self/fd) and relays each to localhost:<port> dialled inside the
// container's netns.
//
// Plain tcp endpoints served on the node itself (not only through a Service)
// skip tailscale's serve code: its TCP forwarder (ipnlocal) returns when the
// first direction ends and closes both connections, which cuts a server's
// answer to a client that half-closed at once (`printf 'stats\n' | nc`).
// Each such port gets a listener on the node's tailnet addresses
// ([tsnet.Server.Listen]; with a TUN, tsnet listens in its netstack and
// takes that port's packets before they reach tailscale0) whose connections
// are relayed with half-close ([pipe]).
type relays struct {
	netns func() string // the container's netns path; "" until attached
	logf  func(format string, args ...any)

	mu    sync.Mutex
	lns   map[uint16]net.Listener // by target port
	tcp   []net.Listener          // tailnet listeners of plain tcp endpoints
	conns map[net.Conn]struct{}
	done  bool
	wg    sync.WaitGroup
}

func startRelays(targets []uint16, netns func() string, logf func(string, ...any)) (*relays, error) {
	r := &relays{netns: netns, logf: logf, lns: map[uint16]net.Listener{}, conns: map[net.Conn]struct{}{}}
	for _, port := range targets {
		ln, err := net.Listen("tcp4", "127.0.0.1:0")
		if err != nil {
			r.close()
			return nil, fmt.Errorf("serve relay for port %d: %w", port, err)
		}
		r.lns[port] = ln
		r.wg.Go(func() { r.accept(ln, port) })
	}
	return r, nil
}

// listenTailnet accepts connections to the node's tailnet port on ln and
// relays each to the container's port target, with half-close both ways.
// ln is closed by [relays.close].
func (r *relays) listenTailnet(ln net.Listener, target uint16) {
	r.mu.Lock()
	r.tcp = append(r.tcp, ln)
	r.mu.Unlock()
	r.wg.Go(func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			if !r.track(c, true) {
				c.Close()
				return
			}
			r.wg.Go(func() {
				defer r.track(c, false)
				r.relay(c, target)
			})
		}
	})
}

// backend is the serve backend address relaying to the container's port.
func (r *relays) backend(port uint16) string {
	return r.lns[port].Addr().String()
}

func (r *relays) accept(ln net.Listener, port uint16) {
	for {
		c, err := ln.Accept()
		if err != nil {
			return
		}
		if err := fromThisProcess(c); err != nil {
			r.logf("tslink: serve: relay for port %d refused a connection from %v: %v", port, c.RemoteAddr(), err)
			c.Close()
			continue
		}
		if !r.track(c, true) {
			c.Close()
			return
		}
		r.wg.Go(func() {
			defer r.track(c, false)
			r.relay(c, port)
		})
	}
}

// track adds or removes a connection; it reports false once closed.
func (r *relays) track(c net.Conn, add bool) bool {
	r.mu.Lock()
	defer r.mu.Unlock()
	if !add {
		delete(r.conns, c)
		return true
	}
	if r.done {
		return false
	}
	r.conns[c] = struct{}{}
	return true
}

func (r *relays) relay(front net.Conn, port uint16) {
	defer front.Close()
	nsPath := r.netns()
	if nsPath == "" {
		r.logf("tslink: serve: connection for port %d before the container's netns exists; dropped", port)
		return
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	back, err := dialLocalhostIn(ctx, nsPath, port)
	cancel()
	if err != nil {
		r.logf("tslink: serve: %v", err)
		return
	}
	if !r.track(back, true) {
		back.Close()
		return
	}
	defer r.track(back, false)
	defer back.Close()
	var wg sync.WaitGroup
	wg.Go(func() { pipe(back, front) })
	pipe(front, back)
	wg.Wait()
}

// pipe copies src to dst, then half-closes dst so EOF propagates.
func pipe(dst, src net.Conn) {
	io.Copy(dst, src)
	if cw, ok := dst.(interface{ CloseWrite() error }); ok {
		cw.CloseWrite()
	} else {
		dst.Close()
	}
}

// close stops accepting, cuts every relayed connection and waits for the
// goroutines.
func (r *relays) close() {
	r.mu.Lock()
	r.done = true
	for _, ln := range r.lns {
		ln.Close()
	}
	for _, ln := range r.tcp {
		ln.Close()
	}
	for c := range r.conns {
		c.Close()
	}
	r.mu.Unlock()
	r.wg.Wait()
}

// dialLocalhostIn connects to localhost:port inside the netns at nsPath,
// IPv4 first, then IPv6 (an app may listen on either loopback only).
func dialLocalhostIn(ctx context.Context, nsPath string, port uint16) (net.Conn, error) {
	var errs []error
	for _, ip := range []string{"127.0.0.1", "::1"} {
		addr := net.JoinHostPort(ip, strconv.Itoa(int(port)))
		c, err := dialIn(ctx, nsPath, addr)
		if err == nil {
			return c, nil
		}
		errs = append(errs, err)
	}
	return nil, fmt.Errorf("dialling container port %d: %w", port, errors.Join(errs...))
}

// serveConfig builds the node's ipn.ServeConfig from cfg.Serve: node
// endpoints under its FQDN (unless ServiceOnly) and service endpoints under
// the service's name. Plain tcp endpoints on the node are left out: they
// have their own listeners ([directTCP]). A Service's plain tcp endpoint
// stays here: traffic to a Service VIP reaches the node's netstack only
// for ports in the serve config, and ipnlocal then takes it before any tsnet
// listener (tsnet's own ListenService forwards through the serve config
// too), so through a Service a half-close still closes both directions. Plain-HTTP endpoints also answer requests addressed to
// the node's IPs: ipnlocal looks a plain-HTTP request up by its Host header
// plus the MagicDNS suffix, so "<ip>.<suffix>:<port>" entries are added.
func serveConfig(cfg *Config, st *ipnstate.Status, backend func(port uint16) string) *ipn.ServeConfig {
	sc := new(ipn.ServeConfig)
	if st.Self == nil {
		return sc
	}
	suffix := ""
	if st.CurrentTailnet != nil {
		suffix = st.CurrentTailnet.MagicDNSSuffix
	}
	fqdn := strings.TrimSuffix(st.Self.DNSName, ".")
	svc := tailcfg.ServiceName(cfg.Serve.Service)
	for _, ep := range cfg.Serve.Endpoints {
		to := backend(ep.Target)
		if ep.L7() {
			if !cfg.Serve.ServiceOnly {
				sc.SetWebHandler(&ipn.HTTPHandler{Proxy: to}, fqdn, ep.Port, ep.Path, ep.TLS(), suffix)
				if !ep.TLS() && suffix != "" {
					for _, ip := range st.TailscaleIPs {
						sc.SetWebHandler(&ipn.HTTPHandler{Proxy: to}, ip.String()+"."+suffix, ep.Port, ep.Path, false, suffix)
					}
				}
			}
			if svc != "" {
				sc.SetWebHandler(&ipn.HTTPHandler{Proxy: to}, svc.String(), ep.Port, ep.Path, ep.TLS(), suffix)
			}
			continue
		}
		if !cfg.Serve.ServiceOnly && ep.TLS() {
			sc.SetTCPForwarding(ep.Port, to, true, 0, fqdn)
		}
		if svc != "" {
			sc.SetTCPForwardingForService(ep.Port, to, ep.TLS(), svc, 0, suffix)
		}
	}
	return sc
}

// applyServe starts the relays and sets the node's serve config and service
// advertisement, replacing whatever the state dir held from an earlier run
// (tsnet keeps both in its state). Called from Start, i.e. after every Up and
// every re-attach.
func (n *Node) applyServe(ctx context.Context, st *ipnstate.Status) error {
	var advertise []string
	if s := n.cfg.Serve.Service; s != "" {
		if st.Self == nil || st.Self.Tags == nil || st.Self.Tags.Len() == 0 {
			if nodespec.CheckService(n.cfg.Serve, n.cfg.Tags) != nil {
				return n.nodeError(ErrUntaggedService, "")
			}
			return n.nodeError(ErrTagsNotGranted, fmt.Sprintf("%s asked for %s, which a Tailscale Service backend needs; the tailnet policy's tagOwners must allow them for this auth key (or use an auth key created with these tags)", n.cfg.Hostname, strings.Join(n.cfg.Tags, ",")))
		}
		advertise = []string{s}
	}
	if len(n.cfg.Serve.Endpoints) > 0 {
		var targets []uint16
		for _, ep := range n.cfg.Serve.Endpoints {
			if !slices.Contains(targets, ep.Target) {
				targets = append(targets, ep.Target)
			}
		}
		r, err := startRelays(targets, n.netnsPath, n.logf)
		if err != nil {
			return err
		}
		n.relays = r
		for _, ep := range directTCP(&n.cfg) {
			ln, err := n.srv.Listen("tcp", ":"+strconv.Itoa(int(ep.Port)))
			if err != nil {
				return fmt.Errorf("serve: listening on tailnet port %d: %w", ep.Port, err)
			}
			r.listenTailnet(ln, ep.Target)
		}
	}
	sc := serveConfig(&n.cfg, st, func(port uint16) string { return n.relays.backend(port) })
	// Both calls are skipped when they would change nothing (the common
	// case: no serve labels now or before), keeping node start lean.
	cur, err := n.lc.GetServeConfig(ctx)
	if err != nil {
		return fmt.Errorf("reading serve config: %w", err)
	}
	if !sameServeConfig(cur, sc) {
		if err := n.lc.SetServeConfig(ctx, sc); err != nil {
			return fmt.Errorf("setting serve config: %w", err)
		}
	}
	prefs, err := n.lc.GetPrefs(ctx)
	if err != nil {
		return fmt.Errorf("reading prefs: %w", err)
	}
	if !slices.Equal(prefs.AdvertiseServices, advertise) {
		if _, err := n.lc.EditPrefs(ctx, &ipn.MaskedPrefs{AdvertiseServicesSet: true, Prefs: ipn.Prefs{AdvertiseServices: advertise}}); err != nil {
			return fmt.Errorf("advertising service: %w", err)
		}
	}
	for _, ep := range n.cfg.Serve.Endpoints {
		n.logf("tslink: serving tailnet port %d (%s%s) from container port %d%s", ep.Port, ep.Proto, ep.Path, ep.Target, serveWhere(&n.cfg))
	}
	if len(advertise) > 0 {
		n.logf("tslink: advertising %s (the service needs approval in the admin console or an auto-approver)", advertise[0])
	}
	return nil
}

// directTCP lists the plain tcp endpoints served on the node's own
// addresses (every one unless ts.direct=false).
func directTCP(cfg *Config) []nodespec.ServeEndpoint {
	if cfg.Serve.ServiceOnly {
		return nil
	}
	var eps []nodespec.ServeEndpoint
	for _, ep := range cfg.Serve.Endpoints {
		if ep.Proto == nodespec.ProtoTCP {
			eps = append(eps, ep)
		}
	}
	return eps
}

func serveWhere(cfg *Config) string {
	switch {
	case cfg.Serve.Service == "":
		return ""
	case cfg.Serve.ServiceOnly:
		return " via " + cfg.Serve.Service + " only"
	default:
		return " directly and via " + cfg.Serve.Service
	}
}

// withdrawService stops advertising the node's service and clears its serve
// config, so control moves the service's traffic off this node before it
// goes away. Control learns of it from the node's next Hostinfo update, which
// the backend sends at once; the short wait gives it time to leave.
func (n *Node) withdrawService(ctx context.Context) {
	if n.cfg.Serve.Service == "" {
		return
	}
	ctx, cancel := context.WithTimeout(ctx, 3*time.Second)
	defer cancel()
	if _, err := n.lc.EditPrefs(ctx, &ipn.MaskedPrefs{AdvertiseServicesSet: true, Prefs: ipn.Prefs{AdvertiseServices: []string{}}}); err != nil {
		n.logf("tslink: withdrawing %s: %v", n.cfg.Serve.Service, err)
		return
	}
	n.lc.SetServeConfig(ctx, new(ipn.ServeConfig))
	n.logf("tslink: withdrew %s", n.cfg.Serve.Service)
	select {
	case <-ctx.Done():
	case <-time.After(serviceWithdrawGrace):
	}
}

// serviceWithdrawGrace is how long Close waits after withdrawing a service
// for the Hostinfo update to reach control.
const serviceWithdrawGrace = 500 * time.Millisecond

func (n *Node) netnsPath() string {
	n.mu.Lock()
	defer n.mu.Unlock()
	return n.nsPath
}

// sameServeConfig compares serve configs by their JSON form (nil and empty
// are the same).
func sameServeConfig(a, b *ipn.ServeConfig) bool {
	if a == nil {
		a = new(ipn.ServeConfig)
	}
	if b == nil {
		b = new(ipn.ServeConfig)
	}
	ja, err1 := json.Marshal(a)
	jb, err2 := json.Marshal(b)
	return err1 == nil && err2 == nil && bytes.Equal(ja, jb)
}

// tlsNodeEndpoints returns the serve endpoints that need the node's own
// certificate: TLS ones served under the node's name (not service-only).
func tlsNodeEndpoints(cfg *Config) []nodespec.ServeEndpoint {
	if cfg.Serve.ServiceOnly {
		return nil
	}
	var out []nodespec.ServeEndpoint
	for _, ep := range cfg.Serve.Endpoints {
		if ep.TLS() {
			out = append(out, ep)
		}
	}
	return out
}

// checkCertAvailable fails a node whose TLS serve endpoints can never work:
// control offers no certificate for the node's name. Tailscale's client
// issues certificates only for names in the netmap's DNS CertDomains
// (feature/acme: "your Tailscale account does not support getting TLS
// certs" when empty); control leaves them out when the tailnet has HTTPS
// certificates turned off.
func (n *Node) checkCertAvailable(st *ipnstate.Status) error {
	eps := tlsNodeEndpoints(&n.cfg)
	if len(eps) == 0 || st.Self == nil {
		return nil
	}
	fqdn := strings.TrimSuffix(st.Self.DNSName, ".")
	if slices.Contains(st.CertDomains, fqdn) {
		return nil
	}
	ep := eps[0]
	offered := "none"
	if len(st.CertDomains) > 0 {
		offered = strings.Join(st.CertDomains, ", ")
	}
	return n.nodeError(ErrNoHTTPSCert, fmt.Sprintf("label %s%d=%s:%d needs a certificate for %s, and control offers none for it (certificate domains: %s); turn on HTTPS certificates for the tailnet (admin console, DNS page), or serve the port as http or tcp",
		tsoptsServePrefix, ep.Port, ep.Proto, ep.Target, fqdn, offered))
}

// tsoptsServePrefix is tsopts.LabelServePrefix (tsopts imports nodespec,
// which stack imports; the label is named here for errors only).
const tsoptsServePrefix = "ts.serve."

// certPrefetchTimeout bounds the certificate fetch a node starts with.
const certPrefetchTimeout = 2 * time.Minute

// certIssuerHeadStart is how long prefetchCert leaves the node's own
// certificate fetch alone before it asks for the certificate itself.
const certIssuerHeadStart = 30 * time.Second

// certIssuerStartGrace is how long prefetchCert waits for the node's own
// certificate fetch to begin.
const certIssuerStartGrace = 3 * time.Second

// prefetchCert makes sure, in the background, that a node serving TLS has
// its certificate before the first client, and records a failure for
// status. tailscale.com v1.102.5 (feature/acme refresh loop) already starts
// an ACME order as soon as the serve config names an HTTPS host; a second
// request while that order runs waits for it and then judges the new
// certificate by the time it started waiting, which can be before the
// certificate's NotBefore, and orders again. So it first lets that fetch
// finish (awaitCertFile: the certificate file in the node's cert store,
// <state dir>/certs/<name>.crt, where tsnet keeps it across restarts), then
// reads it through LocalAPI (a fetch only if it is still missing, which
// also gives the error of one that failed).
func (n *Node) prefetchCert(ctx context.Context, st *ipnstate.Status) {
	if len(tlsNodeEndpoints(&n.cfg)) == 0 || st.Self == nil {
		return
	}
	fqdn := strings.TrimSuffix(st.Self.DNSName, ".")
	n.wg.Go(func() {
		ctx, cancel := context.WithTimeout(ctx, certPrefetchTimeout)
		defer cancel()
		start := time.Now()
		n.awaitCertFile(ctx, filepath.Join(n.cfg.StateDir, "certs", fqdn+".crt"))
		if _, _, err := n.lc.CertPair(ctx, fqdn); err != nil {
			if ctx.Err() == nil || errors.Is(ctx.Err(), context.DeadlineExceeded) {
				n.mu.Lock()
				n.lastErr = fmt.Sprintf("fetching the HTTPS certificate for %s: %v", fqdn, err)
				n.mu.Unlock()
				n.logf("tslink: fetching the HTTPS certificate for %s: %v", fqdn, err)
			}
			return
		}
		n.logf("tslink: HTTPS certificate for %s ready in %v", fqdn, time.Since(start).Round(time.Millisecond))
	})
}

// awaitCertFile waits until path exists, or the node's own certificate
// fetch has ended (its health warning "Fetching TLS certificate…" came and
// went), or none began within certIssuerStartGrace, or ctx ends, or
// certIssuerHeadStart has passed.
func (n *Node) awaitCertFile(ctx context.Context, path string) {
	began := time.Now()
	sawFetch := false
	for time.Since(began) < certIssuerHeadStart && ctx.Err() == nil {
		if _, err := os.Stat(path); err == nil {
			return
		}
		fetching := false
		if st, err := n.lc.StatusWithoutPeers(ctx); err == nil {
			fetching = slices.ContainsFunc(st.Health, func(h string) bool { return strings.Contains(h, "Fetching TLS certificate") })
		}
		switch {
		case fetching:
			sawFetch = true
		case sawFetch, time.Since(began) > certIssuerStartGrace:
			return
		}
		select {
		case <-ctx.Done():
		case <-time.After(200 * time.Millisecond):
		}
	}
}

// reapplyServe rebuilds the serve config after control renamed the node:
// node endpoints are keyed by the node's FQDN, so they would otherwise stay
// on the old name.
func (n *Node) reapplyServe(nodeCtx context.Context) {
	if len(n.cfg.Serve.Endpoints) == 0 || n.relays == nil {
		return
	}
	ctx, cancel := context.WithTimeout(nodeCtx, 5*time.Second)
	defer cancel()
	st, err := n.lc.StatusWithoutPeers(ctx)
	if err != nil {
		n.logf("tslink: serve after rename: reading status: %v", err)
		return
	}
	sc := serveConfig(&n.cfg, st, n.relays.backend)
	cur, err := n.lc.GetServeConfig(ctx)
	if err != nil {
		n.logf("tslink: serve after rename: reading serve config: %v", err)
		return
	}
	if sameServeConfig(cur, sc) {
		return
	}
	if err := n.lc.SetServeConfig(ctx, sc); err != nil {
		n.logf("tslink: serve after rename: %v", err)
		return
	}
	n.logf("tslink: serve config moved to %s", strings.TrimSuffix(st.Self.DNSName, "."))
	if len(tlsNodeEndpoints(&n.cfg)) > 0 {
		if err := n.checkCertAvailable(st); err != nil {
			return // recorded as the last error
		}
		n.prefetchCert(nodeCtx, st)
	}
}
