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
//     call: package engine), reserves the hostname in the endpoint table
//     (table.go), starts the node, writes the endpoint record (store.go) and
//     starts the attach goroutine, which moves tailscale0 into the sandbox
//     netns once runc has made it (joinleave.go). An error fails `docker
//     run`, and dockerd then calls DeleteEndpoint to roll back; while the
//     engine restores its containers, a node that is not up in time follows
//     in the background instead.
//   - [Driver.EndpointInfo] (any time after Join; `docker inspect`).
//   - [Driver.Leave] (container stop): stops the node (joinleave.go).
//   - [Driver.DeleteEndpoint] (after Leave, or to roll back a failed Join):
//     removes eth0 and a TUN that never reached the container.
//   - [Driver.DeleteNetwork] (`docker network rm`, refused by dockerd while
//     containers are attached): removes the parent device.
//
// Outside Docker's calls: [Driver.Recover] runs once in the background at
// plugin start (recover.go) and [Driver.Shutdown] at SIGTERM leaves the
// nodes' tailscale0 in place for the next plugin process.
package netdriver
