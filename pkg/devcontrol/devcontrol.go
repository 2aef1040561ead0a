// Package devcontrol runs a local tailnet for demos and tests: tailscale.com's
// test control server (tstest/integration/testcontrol) plus an in-process DERP
// relay and STUN server, all listening on one address.
//
// It is not a production control server. It inherits testcontrol's limits:
// it deletes no node but a logged-out ephemeral one, keeps a node's cert
// domain on its requested hostname after [Server.RenameNode], and sends
// allow-all packet filters unless told otherwise. As Tailscale's control
// does, it deletes an ephemeral node when it logs out (see ephemeral.go) and
// names a new node "<hostname>-1" (-2, ...) when another node holds its
// hostname. What it adds on top is what tests need to observe and steer:
// per-node online tracking (from streaming map polls), a register-request
// counter (a logout is a register request), setters for the packet filter,
// DNS config, tag owners and machine approval, and auth keys and node-key
// expiry that behave as Tailscale's control does (see [Server.RevokeAuthKey]
// and [Server.SetNodeKeyExpiry]), and the two calls of Tailscale's API that
// turn an OAuth client secret into an auth key (see oauth.go and
// [Server.AddOAuthClient]), served on the control URL.
//
// Test assertions built on it should be ones that would also hold against
// real control.
package devcontrol

import (
	"cmp"
	"context"
	"crypto/tls"
	"encoding/json"
	"errors"
	"fmt"
	"maps"
	"net"
	"net/http"
	"net/netip"
	"slices"
	"sort"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"tailscale.com/derp/derpserver"
	"tailscale.com/net/stun"
	"tailscale.com/tailcfg"
	"tailscale.com/tstest/integration/testcontrol"
	"tailscale.com/types/key"
	"tailscale.com/types/logger"
)

// DefaultMagicDNSDomain is the tailnet's MagicDNS suffix unless
// [Options.MagicDNSDomain] says otherwise.
const DefaultMagicDNSDomain = "tailnet.test"

// Options configures [Start]. The zero value listens on 127.0.0.1 with
// ephemeral ports and accepts any auth key.
type Options struct {
	// ListenAddr is the IP address (no port) that control, DERP and STUN
	// listen on. Empty means 127.0.0.1. Every node and the laptop must be
	// able to reach it.
	ListenAddr string
	// ControlPort is the TCP port of the control server; 0 picks one.
	ControlPort int
	// AuthKey, if non-empty, is the only auth key control accepts at
	// first ([Server.AddAuthKey] adds more); nodes registering with another
	// key get "invalid authkey". Empty accepts any key not revoked.
	AuthKey string
	// MagicDNSDomain is the tailnet's DNS suffix; empty means
	// [DefaultMagicDNSDomain].
	MagicDNSDomain string
	// Logf receives control's own log lines; nil discards them.
	Logf logger.Logf
	// NoHTTPSCerts models a tailnet with HTTPS certificates turned off:
	// netmaps carry no DNS CertDomains and nodes lack the "https"
	// capability, as Tailscale's control sends them then. Without it every
	// node's netmap offers a certificate for "<hostname>.<domain>" (as
	// testcontrol does), though nothing here can issue one (no ACME).
	NoHTTPSCerts bool
	// TagOwners, if non-nil, turns on testcontrol's tag-ownership model
	// from the start (see testcontrol.Server.TagOwners).
	TagOwners map[string][]string
	// MapUpdateInterval is the least time between two netmaps control
	// sends one node: changes in between reach the node together in the
	// next one. Zero sends a netmap on every change, as testcontrol does;
	// make bench uses [BatchingMapUpdateInterval].
	MapUpdateInterval time.Duration
}

// BatchingMapUpdateInterval is headscale's default batching delay for the
// changes it sends nodes (tuning.batch_change_delay, 800 ms). testcontrol
// sends every node a full netmap on every change of any node (a
// registration, an endpoint or Hostinfo update), where Tailscale's control
// batches changes and sends deltas; without a batching interval, N nodes
// starting together cost each node a full netmap of N peers per change
// (docs/testcontrol-patch.md).
const BatchingMapUpdateInterval = 800 * time.Millisecond

// Server is a running local tailnet. Its methods are safe for concurrent use.
type Server struct {
	control *testcontrol.Server
	httpSrv *http.Server
	ln      net.Listener
	derpLn  net.Listener
	derpSrv *http.Server
	derp    *derpserver.Server
	stunPC  net.PacketConn
	url     string
	domain  string

	registers atomic.Int64
	controlMu *sync.Mutex // testcontrol's own: findControlLock

	firstMapHold atomic.Int64 // HoldFirstMapResponse, in nanoseconds

	mapInterval time.Duration // Options.MapUpdateInterval, resolved
	pushMu      sync.Mutex    // serializes pushes, so a later push's map is queued after an earlier one's
	pushWanted  chan struct{} // schedulePush → pushLoop, one slot
	closing     chan struct{} // closed by Close

	mu        sync.Mutex
	authKeys  map[string]bool         // keys control accepts; empty: any not revoked
	revoked   map[string]bool         // keys control refuses from now on: RevokeAuthKey
	replaced  map[key.NodePublic]bool // node keys a node has replaced (testcontrol keeps their entries)
	ephemeral map[key.NodePublic]bool // nodes registered as ephemeral
	deleted   map[key.NodePublic]bool // ephemeral nodes that logged out (see ephemeral.go)
	hijacked  map[net.Conn]bool       // Noise connections, which http.Server forgets once upgraded
	stopped   bool                    // control (not DERP/STUN) is down: StopControl
	online    map[key.NodePublic]int  // streaming polls in flight per node
	mapped    map[key.NodePublic]bool // nodes whose first map poll came (HoldFirstMapResponse)
	filter    []tailcfg.FilterRule    // nil: testcontrol's allow-all
	// OAuth clients and the keys they created (oauth.go).
	oauthClients map[string][]string // client secret → tags it may give keys
	oauthTokens  map[string]string   // access token → client secret
	apiKeys      map[string]*apiKey  // auth keys created through the API
	closed       bool
	closeWG      sync.WaitGroup
}

// Start starts control, DERP and STUN and returns once all three accept
// connections.
func Start(opts Options) (_ *Server, retErr error) {
	addr := cmp.Or(opts.ListenAddr, "127.0.0.1")
	logf := opts.Logf
	if logf == nil {
		logf = logger.Discard
	}
	s := &Server{
		online:    map[key.NodePublic]int{},
		mapped:    map[key.NodePublic]bool{},
		authKeys:  map[string]bool{},
		revoked:   map[string]bool{},
		replaced:  map[key.NodePublic]bool{},
		ephemeral: map[key.NodePublic]bool{},
		deleted:   map[key.NodePublic]bool{},
		domain:    cmp.Or(opts.MagicDNSDomain, DefaultMagicDNSDomain),

		mapInterval: max(0, opts.MapUpdateInterval),
		pushWanted:  make(chan struct{}, 1),
		closing:     make(chan struct{}),
	}
	defer func() {
		if retErr != nil {
			s.Close()
		}
	}()

	var err error
	s.stunPC, err = net.ListenPacket("udp", net.JoinHostPort(addr, "0"))
	if err != nil {
		return nil, fmt.Errorf("listening for STUN on %s: %w", addr, err)
	}
	s.closeWG.Go(func() { serveSTUN(s.stunPC) })

	s.derp = derpserver.New(key.NewNode(), logf)
	s.derpLn, err = net.Listen("tcp", net.JoinHostPort(addr, "0"))
	if err != nil {
		return nil, fmt.Errorf("listening for DERP on %s: %w", addr, err)
	}
	cert, err := selfSignedCert(addr)
	if err != nil {
		return nil, err
	}
	s.derpSrv = &http.Server{
		Handler:      derpserver.Handler(s.derp),
		TLSConfig:    &tls.Config{Certificates: []tls.Certificate{cert}},
		TLSNextProto: map[string]func(*http.Server, *tls.Conn, http.Handler){},
		ErrorLog:     logger.StdLogger(logger.Discard),
	}
	s.closeWG.Go(func() { s.derpSrv.ServeTLS(s.derpLn, "", "") })

	derpMap := &tailcfg.DERPMap{Regions: map[int]*tailcfg.DERPRegion{
		1: {
			RegionID:   1,
			RegionCode: "local",
			RegionName: "tslink devcontrol",
			Nodes: []*tailcfg.DERPNode{{
				Name:             "1a",
				RegionID:         1,
				HostName:         addr,
				IPv4:             addr,
				IPv6:             "none",
				STUNPort:         s.stunPC.LocalAddr().(*net.UDPAddr).Port,
				DERPPort:         s.derpLn.Addr().(*net.TCPAddr).Port,
				InsecureForTests: true, // self-signed; DERP traffic is end-to-end encrypted anyway
				STUNTestIP:       addr,
			}},
		},
	}}

	s.ln, err = net.Listen("tcp", net.JoinHostPort(addr, fmt.Sprint(opts.ControlPort)))
	if err != nil {
		return nil, fmt.Errorf("listening for control on %s: %w", addr, err)
	}
	s.url = "http://" + s.ln.Addr().String()
	if opts.AuthKey != "" {
		s.authKeys[opts.AuthKey] = true
	}
	s.control = &testcontrol.Server{
		DERPMap:                derpMap,
		DNSConfig:              &tailcfg.DNSConfig{Proxied: true, Domains: []string{s.domain}},
		MagicDNSDomain:         s.domain,
		Logf:                   logf,
		HoldMapRequest:         s.holdMapRequest,
		ModifyFirstMapResponse: s.modifyFirstMapResponse,
		ExplicitBaseURL:        s.url,
		TagOwners:              opts.TagOwners,
		MapResponseMinInterval: s.mapInterval,
	}
	if opts.NoHTTPSCerts {
		// testcontrol adds a cert domain per node whenever it knows the
		// MagicDNS domain, and names nodes with it; without it,
		// serveRegister names new nodes instead.
		s.control.MagicDNSDomain = ""
		s.control.DefaultNodeCapabilities = &tailcfg.NodeCapMap{tailcfg.CapabilityFileSharing: nil}
	}
	if err := s.checkRegisterRequests(); err != nil {
		return nil, err
	}
	if s.controlMu, err = s.findControlLock(); err != nil {
		return nil, err
	}
	s.serveControl()
	s.closeWG.Go(s.pushLoop)
	return s, nil
}

func (s *Server) serveControl() {
	mux := http.NewServeMux()
	mux.HandleFunc("GET /tslink/nodes", s.serveNodes)
	mux.HandleFunc("POST /api/v2/oauth/token", s.serveOAuthToken)
	mux.HandleFunc("POST /api/v2/tailnet/{tailnet}/keys", s.serveCreateKey)
	mux.Handle("/", s.control)
	srv := &http.Server{Handler: mux, ErrorLog: logger.StdLogger(logger.Discard), ConnState: s.trackHijacked}
	s.mu.Lock()
	s.httpSrv = srv
	ln := s.ln
	s.mu.Unlock()
	s.closeWG.Go(func() { srv.Serve(ln) })
}

func (s *Server) trackHijacked(c net.Conn, st http.ConnState) {
	if st == http.StateHijacked {
		s.mu.Lock()
		if s.hijacked == nil {
			s.hijacked = map[net.Conn]bool{}
		}
		s.hijacked[c] = true
		s.mu.Unlock()
	}
}

// StopControl takes the control server down (connections refused, Noise
// sessions cut) while DERP and STUN keep running and control keeps its
// state, as when a real control plane has an outage. For a control server
// whose packets are dropped instead (connects hang), tests use
// test/netnstest.DropTCPPort with the port of [Server.URL].
func (s *Server) StopControl() {
	s.mu.Lock()
	if s.stopped || s.closed {
		s.mu.Unlock()
		return
	}
	s.stopped = true
	srv, conns := s.httpSrv, s.hijacked
	s.hijacked = nil
	s.mu.Unlock()
	srv.Close() // closes the listener and the plain HTTP connections
	for c := range conns {
		c.Close()
	}
}

// StartControl brings control back on the same URL after [Server.StopControl].
func (s *Server) StartControl() error {
	s.mu.Lock()
	if !s.stopped {
		s.mu.Unlock()
		return nil
	}
	s.mu.Unlock()
	ln, err := net.Listen("tcp", strings.TrimPrefix(s.url, "http://"))
	if err != nil {
		return fmt.Errorf("re-listening on %s: %w", s.url, err)
	}
	s.mu.Lock()
	s.ln = ln
	s.stopped = false
	s.mu.Unlock()
	s.serveControl()
	return nil
}

// URL is the control URL nodes log in to, e.g. "http://127.0.0.1:41234".
func (s *Server) URL() string { return s.url }

// MagicDNSDomain is the tailnet's DNS suffix, without dots at either end.
func (s *Server) MagicDNSDomain() string { return s.domain }

// DERPMap returns the DERP map control hands to nodes.
func (s *Server) DERPMap() *tailcfg.DERPMap { return s.control.DERPMap }

// RegisterRequests counts the register requests control has received.
// A node's login and its logout are one each.
func (s *Server) RegisterRequests() int64 { return s.registers.Load() }

// Close stops control, DERP and STUN. It is idempotent.
func (s *Server) Close() error {
	s.mu.Lock()
	if s.closed {
		s.mu.Unlock()
		return nil
	}
	s.closed = true
	s.mu.Unlock()
	close(s.closing)
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	var errs []error
	s.mu.Lock()
	httpSrv, ln, conns := s.httpSrv, s.ln, s.hijacked
	s.mu.Unlock()
	if httpSrv != nil {
		errs = append(errs, closeHTTP(ctx, httpSrv))
	} else if ln != nil {
		ln.Close()
	}
	for c := range conns {
		c.Close()
	}
	if s.derpSrv != nil {
		errs = append(errs, closeHTTP(ctx, s.derpSrv))
	} else if s.derpLn != nil {
		s.derpLn.Close()
	}
	if s.derp != nil {
		s.derp.Close()
	}
	if s.stunPC != nil {
		s.stunPC.Close()
	}
	s.closeWG.Wait()
	return errors.Join(errs...)
}

func closeHTTP(ctx context.Context, srv *http.Server) error {
	// Streaming map polls and DERP connections never finish on their own.
	if err := srv.Shutdown(ctx); err != nil {
		return srv.Close()
	}
	return nil
}

// Node is what control knows of one node, as served by GET /tslink/nodes.
type Node struct {
	ID       int64        `json:"id"`
	Name     string       `json:"name"`     // MagicDNS FQDN without the trailing dot
	Hostname string       `json:"hostname"` // as the node asked for it
	IPs      []netip.Addr `json:"ips"`
	Tags     []string     `json:"tags,omitempty"`
	Online   bool         `json:"online"` // a streaming map poll is open
	// Ephemeral: the node registered as ephemeral, or with an ephemeral
	// auth key; control deletes it when it logs out.
	Ephemeral bool   `json:"ephemeral"`
	Approved  bool   `json:"approved"`
	NodeKey   string `json:"nodeKey"`
	// KeyExpiry is when the node key expires; zero: never
	// ([Server.SetNodeKeyExpiry]).
	KeyExpiry time.Time `json:"keyExpiry,omitzero"`
	// ServicesHash is the node's last Hostinfo.ServicesHash: non-empty while
	// it advertises Tailscale Services or serves for them (testcontrol does
	// not model Services; this is what the node tells control).
	ServicesHash string `json:"servicesHash,omitempty"`
}

// Nodes lists every node control has registered, in registration order.
func (s *Server) Nodes() []Node {
	all := s.control.AllNodes()
	sort.Slice(all, func(i, j int) bool { return all[i].ID < all[j].ID })
	s.mu.Lock()
	defer s.mu.Unlock()
	out := make([]Node, 0, len(all))
	for _, n := range all {
		if s.replaced[n.Key] || s.deleted[n.Key] {
			continue
		}
		nd := Node{
			ID:        int64(n.ID),
			Name:      trimDot(n.Name),
			Hostname:  n.Hostinfo.Hostname(),
			Tags:      slices.Clone(n.Tags),
			Online:    s.online[n.Key] > 0,
			Ephemeral: s.ephemeral[n.Key],
			Approved:  n.MachineAuthorized,
			NodeKey:   n.Key.String(),
			KeyExpiry: n.KeyExpiry,
		}
		if n.Hostinfo.Valid() {
			nd.ServicesHash = n.Hostinfo.ServicesHash()
		}
		for _, p := range n.Addresses {
			nd.IPs = append(nd.IPs, p.Addr())
		}
		out = append(out, nd)
	}
	return out
}

// NodesByHostname returns the registered nodes that asked for hostname.
func (s *Server) NodesByHostname(hostname string) []Node {
	var out []Node
	for _, n := range s.Nodes() {
		if n.Hostname == hostname {
			out = append(out, n)
		}
	}
	return out
}

func trimDot(s string) string {
	if len(s) > 0 && s[len(s)-1] == '.' {
		return s[:len(s)-1]
	}
	return s
}

func (s *Server) serveNodes(w http.ResponseWriter, r *http.Request) {
	w.Header().Set("Content-Type", "application/json")
	json.NewEncoder(w).Encode(s.Nodes())
}

// RenameNode gives the node with the given node key (as in [Node.NodeKey])
// the MagicDNS name "<name>.<domain>", as an admin's rename in the admin
// console does; the node and its peers get it in their next map response
// (testcontrol's UpdateNode). name is one DNS label. Unlike Tailscale's
// control, testcontrol keeps the cert domain of the requested hostname.
func (s *Server) RenameNode(nodeKey, name string) error {
	var k key.NodePublic
	if err := k.UnmarshalText([]byte(nodeKey)); err != nil {
		return fmt.Errorf("parsing node key: %w", err)
	}
	if name == "" || strings.Contains(name, ".") {
		return fmt.Errorf("node name %q: want one DNS label", name)
	}
	n := s.control.Node(k)
	if n == nil {
		return fmt.Errorf("no node with key %s", nodeKey)
	}
	n.Name = name + "." + s.domain + "."
	s.control.UpdateNode(n)
	s.pushAll() // nodes whose netmaps devcontrol builds get no automatic update
	return nil
}

// SetRequireMachineAuth makes newly registered nodes wait for
// [Server.ApproveNode], as a tailnet with device approval does.
func (s *Server) SetRequireMachineAuth(v bool) {
	s.withControlLocked(func() { s.control.RequireMachineAuth = v })
}

// ApproveNode approves the node with the given node key (as in [Node.NodeKey]).
func (s *Server) ApproveNode(nodeKey string) error {
	var k key.NodePublic
	if err := k.UnmarshalText([]byte(nodeKey)); err != nil {
		return fmt.Errorf("parsing node key: %w", err)
	}
	if !s.control.CompleteDeviceApproval(s.url, s.url+"/admin", &k) {
		return fmt.Errorf("no node with key %s", nodeKey)
	}
	s.pushAll()
	return nil
}

// SetDNSConfig replaces the DNS config sent to nodes from their next map
// response on. Resolvers empty models the common tailnet that sets no
// global nameservers.
func (s *Server) SetDNSConfig(cfg *tailcfg.DNSConfig) {
	s.withControlLocked(func() { s.control.DNSConfig = cfg })
	s.pushAll()
}

// SetTagOwners enables testcontrol's tag-ownership model; see
// testcontrol.Server.TagOwners. testcontrol reads it under its lock at
// register time and in map requests, but also while it checks a tag
// change: prefer [Options.TagOwners] for a tailnet that has tags from the
// start.
func (s *Server) SetTagOwners(owners map[string][]string) {
	s.withControlLocked(func() { s.control.TagOwners = owners })
}

// SetPacketFilter replaces the allow-all packet filter with rules, for every
// node, and pushes it to the connected ones at once. nil restores allow-all
// for nodes that connect afterwards.
func (s *Server) SetPacketFilter(rules []tailcfg.FilterRule) {
	s.mu.Lock()
	s.filter = rules
	s.mu.Unlock()
	s.pushAll()
}

// pushAll sends every connected node a full map response with the current
// filter. testcontrol then stops sending that node automatic responses, so
// holdMapRequest re-pushes (schedulePush) after every change that would
// have produced one.
func (s *Server) pushAll() {
	s.mu.Lock()
	var keys []key.NodePublic
	for k, n := range s.online {
		if n > 0 && !s.deleted[k] {
			keys = append(keys, k)
		}
	}
	s.mu.Unlock()
	s.pushTo(keys)
}

// pushTo queues a full map response for each node in keys (testcontrol's
// AddRawMapResponse) when devcontrol builds netmaps itself: a custom packet
// filter is set or an ephemeral node was deleted. Otherwise testcontrol's
// automatic responses serve, and pushTo does nothing.
func (s *Server) pushTo(keys []key.NodePublic) {
	s.pushMu.Lock()
	defer s.pushMu.Unlock()
	s.mu.Lock()
	filter := s.filter
	takeover := filter != nil || len(s.deleted) > 0
	s.mu.Unlock()
	if !takeover {
		return
	}
	for _, k := range keys {
		res, err := s.control.MapResponse(&tailcfg.MapRequest{NodeKey: k, Version: tailcfg.CurrentCapabilityVersion})
		if err != nil || res == nil {
			continue
		}
		s.mu.Lock()
		s.withoutDeletedLocked(res)
		s.mu.Unlock()
		if filter != nil {
			res.PacketFilter = filter
		}
		s.control.AddRawMapResponse(k, res)
	}
}

func (s *Server) modifyFirstMapResponse(res *tailcfg.MapResponse, _ *tailcfg.MapRequest) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.filter != nil {
		res.PacketFilter = s.filter
	}
	s.withoutDeletedLocked(res)
}

// HoldFirstMapResponse makes control answer each node's first map request
// d later than it would (0: at once again), as a control server under load
// does: the node is registered (logged in, state Starting) but has no
// netmap, no addresses and no peers meanwhile. Only the first streaming
// map request (the poll that brings the netmap) a node key ever makes is
// held; later polls and non-streaming requests are answered at once.
func (s *Server) HoldFirstMapResponse(d time.Duration) {
	s.firstMapHold.Store(int64(d))
}

// holdFirstMap delays req if it is the first map request of its node and
// HoldFirstMapResponse is set. testcontrol calls HoldMapRequest before it
// builds the response, without holding its lock.
func (s *Server) holdFirstMap(req *tailcfg.MapRequest) {
	if !req.Stream {
		return // endpoint updates, which race the first poll, carry no netmap
	}
	s.mu.Lock()
	first := !s.mapped[req.NodeKey]
	s.mapped[req.NodeKey] = true
	s.mu.Unlock()
	if d := time.Duration(s.firstMapHold.Load()); first && d > 0 {
		time.Sleep(d)
	}
}

// holdMapRequest tracks streaming polls (a node is online while one is open)
// and re-pushes custom filters after endpoint updates.
func (s *Server) holdMapRequest(req *tailcfg.MapRequest) func() {
	s.holdFirstMap(req)
	if !req.Stream && s.selfOnlyUpdate(req) {
		//lint:ignore SA1019 clients no longer send it, but testcontrol v1.102.5 still honours it: it then neither stores the update nor wakes the peers
		req.ReadOnly = true
		return nil
	}
	if req.Stream { // MapRequest.ReadOnly is always false since capability version 68
		s.mu.Lock()
		pollOpen := s.online[req.NodeKey] > 0
		s.online[req.NodeKey]++
		s.mu.Unlock()
		// testcontrol sends a node it ever gave a raw map response no
		// automatic one again, not even on a new poll (a node restarted
		// from its state, same node key), and registers the poll only
		// after HoldMapRequest returns: the netmap is queued now, on the
		// node's previous poll channel, and the new poll's loop takes
		// queued messages first. A node that never polled is not queued
		// to (its first, automatic response goes through
		// ModifyFirstMapResponse). A previous poll still open may take
		// the queued netmap; a scheduled push then runs after the new
		// poll is registered.
		s.pushTo([]key.NodePublic{req.NodeKey})
		if pollOpen {
			s.schedulePush()
		}
		return func() {
			s.mu.Lock()
			s.online[req.NodeKey]--
			s.mu.Unlock()
		}
	}
	return s.schedulePush
}

// selfOnlyUpdate reports whether req, a lite map update (not a stream),
// changes nothing of its node that the node's peers see: the same
// endpoints and disco key, and a Hostinfo that differs from the stored one
// at most in NetInfo fields other than PreferredDERP (its netcheck's
// latencies and NAT findings, which the client re-sends whenever they
// change: magicsock's NetInfo.BasicallyEqual). testcontrol would store it
// and send every peer a full netmap; Tailscale's control sends peers only
// what changed for them (a DERP home change comes as a PeerChange).
func (s *Server) selfOnlyUpdate(req *tailcfg.MapRequest) bool {
	n := s.control.Node(req.NodeKey)
	if n == nil || req.Hostinfo == nil || req.Hostinfo.NetInfo == nil || !n.Hostinfo.Valid() || !n.Hostinfo.NetInfo().Valid() {
		return false
	}
	if !slices.Equal(n.Endpoints, req.Endpoints) || n.DiscoKey != req.DiscoKey || n.Cap != req.Version {
		return false
	}
	stored := n.Hostinfo.AsStruct()
	if stored.NetInfo.PreferredDERP != req.Hostinfo.NetInfo.PreferredDERP {
		return false
	}
	sent := req.Hostinfo.Clone()
	stored.NetInfo, sent.NetInfo = nil, nil
	return stored.Equal(sent)
}

// schedulePush asks pushLoop for a [Server.pushAll]. Requests made while one
// is pending or while the last push is less than the map update interval
// old are served by one push: testcontrol queues each raw map response it is
// given (AddRawMapResponse), so a push per lite map update from each of N
// nodes would queue N full netmaps for every node.
func (s *Server) schedulePush() {
	select {
	case s.pushWanted <- struct{}{}:
	default:
	}
}

// pushLoop serves schedulePush until Close: it pushes at once when the last
// push it made is at least the map update interval old, else once it is.
func (s *Server) pushLoop() {
	var last time.Time
	for {
		select {
		case <-s.closing:
			return
		case <-s.pushWanted:
		}
		if wait := s.mapInterval - time.Since(last); wait > 0 {
			select {
			case <-s.closing:
				return
			case <-time.After(wait):
			}
		}
		last = time.Now()
		s.pushAll()
	}
}

func serveSTUN(pc net.PacketConn) {
	buf := make([]byte, 64<<10)
	for {
		n, addr, err := pc.ReadFrom(buf)
		if err != nil {
			return
		}
		txid, err := stun.ParseBindingRequest(buf[:n])
		if err != nil {
			continue
		}
		ua := addr.(*net.UDPAddr)
		ap, _ := netip.AddrFromSlice(ua.IP)
		pc.WriteTo(stun.Response(txid, netip.AddrPortFrom(ap.Unmap(), uint16(ua.Port))), addr)
	}
}

// RemovePeer tells the connected node with nodeKey (its "nodekey:…" form)
// that the node with peerID left its netmap (a MapResponse with
// PeersRemoved), as Tailscale's control does when a node is deleted or the
// policy stops letting the two see each other. testcontrol sends that node
// no automatic map responses afterwards, so the peer stays away for it.
func (s *Server) RemovePeer(nodeKey string, peerID int64) error {
	var k key.NodePublic
	if err := k.UnmarshalText([]byte(nodeKey)); err != nil {
		return fmt.Errorf("node key %q: %w", nodeKey, err)
	}
	if !s.control.AddRawMapResponse(k, &tailcfg.MapResponse{PeersRemoved: []tailcfg.NodeID{tailcfg.NodeID(peerID)}}) {
		return fmt.Errorf("node %s is not connected", nodeKey)
	}
	return nil
}

// defaultNodeCaps are testcontrol's default node capabilities (its
// serveRegister), which [Server.SetRequireClientLogs] extends.
func defaultNodeCaps() tailcfg.NodeCapMap {
	return tailcfg.NodeCapMap{
		tailcfg.CapabilityHTTPS:                           []tailcfg.RawMessage{},
		tailcfg.NodeAttrFunnel:                            []tailcfg.RawMessage{},
		tailcfg.CapabilityFileSharing:                     []tailcfg.RawMessage{},
		tailcfg.CapabilityFunnelPorts + "?ports=8080,443": []tailcfg.RawMessage{},
	}
}

// SetRequireClientLogs models a tailnet with network flow logs on (on) or
// off: control then gives every node, registered or yet to register, the
// node capability tailcfg.CapabilityDataPlaneAuditLogs, as Tailscale's
// control does. A client that does not upload logs (tailscaled
// --no-logs-no-support, envknob TS_NO_LOGS_NO_SUPPORT) stops on seeing it:
// ipnlocal reports "tailnet requires logging to be enabled" and saves
// WantRunning=false in its prefs. Turned off, no node gets the capability
// again: testcontrol also copies a node's capabilities at registration into
// its legacy Capabilities list (which the client counts as capabilities
// too), so that list loses it here as well.
func (s *Server) SetRequireClientLogs(on bool) {
	caps := defaultNodeCaps()
	if on {
		caps[tailcfg.CapabilityDataPlaneAuditLogs] = []tailcfg.RawMessage{}
	}
	s.withControlLocked(func() { s.control.DefaultNodeCapabilities = &caps })
	for _, n := range s.control.AllNodes() {
		if !on && dropLegacyCapability(n, tailcfg.CapabilityDataPlaneAuditLogs) {
			s.control.UpdateNode(n)
		}
		s.control.SetNodeCapMap(n.Key, maps.Clone(caps))
	}
	s.pushAll() // nodes whose netmaps devcontrol builds get no automatic update
}

// dropLegacyCapability removes c from n's legacy Capabilities list, which
// testcontrol v1.102.5 still fills at registration and clients still read,
// and reports whether it was there.
func dropLegacyCapability(n *tailcfg.Node, c tailcfg.NodeCapability) bool {
	//lint:ignore SA1019 the legacy list is what keeps the capability (see above)
	kept := slices.DeleteFunc(slices.Clone(n.Capabilities), func(have tailcfg.NodeCapability) bool { return have == c })
	//lint:ignore SA1019 the legacy list is what keeps the capability (see above)
	dropped := len(kept) != len(n.Capabilities)
	//lint:ignore SA1019 the legacy list is what keeps the capability (see above)
	n.Capabilities = kept
	return dropped
}
