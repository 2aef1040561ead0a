// Package stack is tslink's per-container tailnet node: one tsnet.Server
// hosted in the plugin process, whose packets reach the container through a
// kernel TUN named tailscale0 inside the container's network namespace.
//
// # Lifecycle
//
// The plugin drives a [Node] through these calls, in this order:
//
//   - [Start] (during Docker's Join, before the container's netns exists):
//     takes the state-dir lock, creates the TUN in the host netns under a
//     name derived from the endpoint ID ([HostTUNName]), starts tsnet with
//     that TUN and waits, bounded by the context, until the node is Running
//     (or, at the deadline, at least accepted by control; its addresses then
//     follow from the netmap).
//     With ts.ssh ([Config.SSH]) it also starts the node's SSH server on
//     tailnet port 22 (ssh.go; sessions are Docker execs, made on demand).
//     On failure it returns a [*NodeError] and leaves no TUN, lock or goroutine;
//     a node control had already accepted is torn down in the background once
//     its first netmap has been applied (closing.go), as is one whose close
//     outlasts Start's ctx, and [TeardownDone] says when.
//   - [Node.Attach] (once the sandbox netns appears): installs an
//     unreachable fallback route for each tailnet route in the netns, moves
//     the TUN into the netns, renames it tailscale0, assigns the node's IPv4
//     /32 and IPv6 /128, brings it up, routes 100.100.100.100, each peer's
//     IPv4 /32 (peers.go: kept in step with the netmap) and
//     fd7a:115c:a1e0::/48 through it and marks it persistent so it outlives
//     a crash of the plugin.
//   - [Node.KeepIPv6] (right after Attach, while the container starts):
//     Docker disables IPv6 in containers of non-IPv6 networks, which removes
//     tailscale0's IPv6 address; whenever it is missing, [Node.ReapplyIPv6]
//     enables IPv6 on tailscale0 alone and re-adds it.
//   - [Node.Close] (Leave/DeleteEndpoint): waits (bounded) for a pending first
//     netmap, logs an ephemeral node out, stops tsnet (a few tsnet closes at
//     a time in the process), deletes the TUN wherever it is, releases the
//     lock. Idempotent.
//
// After a plugin restart, [Start] with [Config.AdoptNetNS] set re-opens the
// persistent tailscale0 that survived in the container's netns instead of
// creating a new TUN, and brings the same node up from its state dir.
//
// # While tailscale0 cannot carry traffic
//
// The plugin away (disabled, upgraded, crashed), tailscale0 not attached yet,
// or an attach that failed: every destination tslink routes to tailscale0 is
// then unreachable in the container, never sent by its default route to
// Docker's NAT, and only the DNS interception steps aside, so internet names
// keep resolving through the container's normal path. Kernel behaviour this
// relies on (measured in docs/reliability.md): a persistent TUN with no fd
// attached has no carrier and its routes are marked linkdown; with
// ignore_routes_with_linkdown set on tailscale0 the kernel skips them, so an
// unreachable route with a larger metric for the same prefix answers
// instead, and the DNS table, whose only route is through tailscale0, has no
// match, so the policy-rule lookup goes on to the main table. Attach
// installs the fallbacks before the TUN enters the netns; an adopting [Start]
// empties the DNS table before it re-opens the TUN (which restores carrier)
// and fills it again once the node answers DNS.
//
// While a node runs, its addresses follow the self node in the netmap (IPN
// bus SelfChange): an address change from control is applied to tailscale0.
//
// # Tailscale behaviours relied on
//
//   - With tsnet.Server.Tun set, tsnet configures nothing in the OS (its
//     router is wgengine's fake): addresses and routes are ours to program.
//   - wireguard-go's NativeTun.MTU looks the device up by name in the calling
//     thread's netns, which is wrong once the TUN has moved; the [device]
//     wrapper answers MTU itself.
//   - tsnet.Server.Up never returns on NeedsLogin/NeedsMachineAuth and blocks
//     while control is unreachable; [Start] watches the IPN bus itself and
//     turns those states into [NodeError]s.
//   - The IPN bus shows control's answer to the registration only once
//     LocalBackend processed it (seconds late on a starved host), while
//     controlclient logs each login step as it happens (progress.go): a
//     wait that ends before the bus showed the login is reported by the
//     step the log reached, "control server unreachable" only when control
//     did not answer at all.
//   - tsnet.Server.Close must not run concurrently with Start; Node serialises
//     them.
//   - tsnet sends Server.AuthKey in the register request of every start, and
//     Tailscale's control refuses a request carrying an expired or revoked
//     key even from a node whose node key is valid: [Start] leaves the key
//     out when the state dir holds a logged-in node, and logs in with it only
//     if control asks for a login.
//   - A node's packet buffers are allocated at start and held for its life:
//     wireguard-go's receive and TUN readers and tstun's read vector (whose
//     length is the TUN's BatchSize) are 64 KiB each. An unwritten buffer is
//     not resident if it came from pages returned to the OS, so the node
//     returns freed heap before a start (when the heap keeps a node's worth
//     of free pages, waited for at most a second) and after a burst of
//     starts (memory.go), and tailscale0
//     reads at most tunBatchSize packets with gso_max_segs capped to
//     match (wireguard-go drops a TSO packet with more segments than
//     buffers). The unpatched wireguard-go sizes its readers by batch
//     sizes of 128 nothing can lower; tslink's patch caps them
//     (docs/wireguard-go-patch.md); UDP GRO stays on with a receive of
//     64 through a net/batching patch (docs/batching-patch.md).
//   - Every tsnet node has its own netmon.Monitor, which re-reads the
//     interface list and each interface's addresses on every link or
//     address change, as each node's magicsock does when it re-gathers
//     endpoints. netmon reads through a getter that
//     netmon.RegisterInterfaceGetter replaces process-wide, and takes an
//     Interface's AltAddrs, when not nil, as its addresses: the process
//     registers one that all nodes share (interfaces_linux.go).
//   - tsnet runs a logtail logger and a port mapper per node whatever
//     TS_NO_LOGS_NO_SUPPORT says; with log upload off the node turns logtail
//     off process-wide; the port mapper is off unless the plugin's
//     environment sets TS_DISABLE_PORTMAPPER itself.
//   - tsnet.Server.Start resolves an OAuth client secret given as AuthKey
//     (feature/oauthkey) under its lifetime context, with no deadline, and a
//     login through LocalAPI resolves none: [Start] creates the node's auth
//     key from a secret itself, within its ctx (package oauthsecret), and
//     hands tsnet only auth keys.
//   - A node learns of its node key's expiry and extension from its map
//     responses (the self node's KeyExpiry): expired, LocalBackend is
//     NeedsLogin with its engine deconfigured while the map poll goes on;
//     extended, it returns to Running by itself. [Node.Status] reports it.
package stack
