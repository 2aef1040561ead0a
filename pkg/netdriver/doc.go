// Package netdriver implements Docker's remote network driver protocol
// (docker.networkdriver/1.0) for tslink: per network a parent device whose
// macvlans are the containers' eth0 (see ensureParent), and per container a
// tailnet node (package stack) whose tailscale0 is moved into the
// container's netns.
//
// Join returns no gateway, so Docker also attaches the container to
// docker_gwbridge and NATs it like any bridge container: internet access and
// `-p` publishing are Docker's own; `--internal` networks get none.
//
// # Docker's calls, in order
//
// dockerd (libnetwork's remote driver) calls the driver in this order; each
// call has 30 s before dockerd gives up on it:
//
//   - GetCapabilities (at plugin activation): local scope.
//   - [Driver.CreateNetwork] (`docker network create`): validates the
//     options and records them (network.go, store.go) and creates the parent
//     device (links_linux.go). After a restart dockerd does not call it
//     again; Join reads the record instead ([Driver.networkFor]).
//   - [Driver.CreateEndpoint] (container start, before its sandbox exists):
//     creates eth0 as a macvlan of the parent (endpoint.go).
//   - [Driver.Join] (same start, still before the sandbox netns exists):
//     finds the container in the engine's on-disk state (no Docker API
//     call: package engine), refuses ts.* labels that come from its image
//     unless the network has ts.image-labels=true, reserves the hostname in
//     the endpoint table (table.go; a hostname whose old node is still
//     closing is waited for), checks the node dir's tailnet record (control
//     URL, key source, kind, tags; store.go), starts the node, checks the
//     tailnet it came up in, writes the endpoint record (store.go) and
//     starts the attach goroutine, which moves tailscale0 into the sandbox
//     netns once runc has made it (joinleave.go). An error fails `docker
//     run`, and dockerd then calls DeleteEndpoint to roll back; while the
//     engine restores its containers, a node that is not up in time follows
//     in the background instead.
//   - [Driver.EndpointInfo] (any time after Join; `docker inspect`).
//   - [Driver.Leave] (container stop): stops the node (joinleave.go); its
//     hostname stays reserved until the node is closed and an ephemeral
//     node's dir removed (node dirs are removed only under their lock).
//   - [Driver.DeleteEndpoint] (after Leave, or to roll back a failed Join):
//     removes eth0 and a TUN that never reached the container.
//   - [Driver.DeleteNetwork] (`docker network rm`, refused by dockerd while
//     containers are attached): removes the parent device.
//
// # Engine restarts: no plugin call waits on the Docker API
//
// dockerd starts its restart-policy containers (engine start, every reboot)
// before it serves its API, and it calls Join for each of them meanwhile;
// it neither serves events nor retries a container whose start failed. So
// no call of this driver asks the API; what each needs is at hand:
//
//   - the network's options: the plugin's own record, written at
//     CreateNetwork (networks created by older versions are recorded from
//     the engine's store the first time they are used);
//   - the container (name, labels, its image's labels): the engine's on-disk state, read
//     through /proc/<dockerd pid>/root (package enginestate: libnetwork's
//     store names the sandbox's container before Join is called);
//   - whether the engine is restoring: package engine pings the API from
//     its own goroutine, never from a call.
//
// The rule for a node that cannot come up within ts.timeout (control
// unreachable, key refused) rests on whether the engine is restoring, not
// on whether the identity is new: outside a restore, Join fails with the
// node's error, so an interactive `docker run` reports it; during a restore
// the wait is cut to [restoreJoinWait], the Join succeeds, and the node
// follows in the background (retried until Leave; `tslink status` shows why
// it is not up; meanwhile the tailnet is unreachable in the container, not
// routed to Docker's NAT: [stack.InstallFallbackRoutes]), because nobody
// would start the container again. Recovery
// of a restarted plugin decides by the recorded sandbox (still a netns: the
// container runs) and waits for a restore to settle, since without
// live-restore the engine replaces the containers it finds running; a
// restarted container's endpoint from before is superseded by its new Join.
//
// Outside Docker's calls: [Driver.Recover] runs once in the background at
// plugin start (recover.go) and [Driver.Shutdown] at SIGTERM leaves the
// nodes' tailscale0 in place for the next plugin process.
//
// Metrics (metrics.go): [Driver.Join] counts each Join's outcome (failures
// by a fixed set of reasons) and latency; [Driver.MetricsCollector] and
// [Driver.Health] read every node when asked, each in its own goroutine,
// outside the driver's lock and for at most a bounded time, so a node that
// hangs cannot hang a scrape or the driver.
package netdriver
