package netdriver

import (
	"context"
	"errors"
	"log/slog"
	"net/netip"
	"os"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/docker/go-plugins-helpers/network"
	"github.com/tslink/tslink/pkg/enginestate"
	"github.com/tslink/tslink/pkg/execssh"
	"github.com/tslink/tslink/pkg/nodespec"
	"github.com/tslink/tslink/pkg/statedir"
	"github.com/tslink/tslink/pkg/tsopts"
	"github.com/tslink/tslink/stack"
)

// Engine is what the driver knows of the dockerd that calls it, none of it
// from the Docker API (see package engine): dockerd serves no API while it
// restores its containers, yet calls Join for each of them.
type Engine interface {
	// ForJoin returns the container of a Join from the engine's on-disk
	// state.
	ForJoin(networkID, endpointID, sandboxKey string) (*enginestate.Container, error)
	// NetworkOptions returns a network's `--opt` values from the engine's
	// on-disk state.
	NetworkOptions(networkID string) (map[string]string, error)
	// Restoring reports whether the engine is starting up: it has not
	// served its API yet.
	Restoring() bool
}

// Node is what the driver needs of a started node; [*stack.Node] is one.
type Node interface {
	Addrs() (v4, v6 netip.Addr)
	Attach(nsPath string) error
	KeepIPv6(ctx context.Context)
	Status() stack.Status
	Close(ctx context.Context) error
}

// NodeStarter starts containers' nodes: [StackNodes] in the plugin, a fake
// in unit tests.
type NodeStarter interface {
	Start(ctx context.Context, cfg stack.Config) (Node, error)
}

// StackNodes starts nodes with [stack.Start].
type StackNodes struct{}

// Start is [stack.Start].
func (StackNodes) Start(ctx context.Context, cfg stack.Config) (Node, error) {
	n, err := stack.Start(ctx, cfg)
	if err != nil {
		return nil, err
	}
	return n, nil
}

// Config configures a [Driver].
type Config struct {
	// StateRoot is the plugin's state dir (/data, the host's
	// /var/lib/docker-plugins/tailscale); package statedir has its layout.
	StateRoot string
	// HostStateRoot is StateRoot as the host sees it, for messages.
	HostStateRoot string
	Env           tsopts.Env
	Engine        Engine
	// ResolvePath maps a path as dockerd sees it (the sandbox key) to where
	// this process sees it, whether or not it exists yet; nil means identity.
	ResolvePath func(string) (string, error)
	Log         *slog.Logger
	// DNSUpstreams lists the resolvers for names outside the tailnet asked
	// of 100.100.100.100 when control sends none ([stack.Config.DNSUpstreams]);
	// nil: none.
	DNSUpstreams func() []netip.AddrPort
	// Nodes starts the nodes; nil means [StackNodes].
	Nodes NodeStarter
	// Exec gives the SSH sessions of a container with ts.ssh their
	// processes in that container ([dockerapi.Client.Execer]); nil: ts.ssh
	// is refused at Join.
	Exec func(containerID string) execssh.Execer
}

// Driver is tslink's network driver. Its methods are safe for concurrent
// use: dockerd calls them from concurrent HTTP requests.
type Driver struct {
	cfg Config
	dir statedir.Dir
	log *slog.Logger

	mu           sync.Mutex                 // guards the fields below; taken only in table.go and memory.go
	networks     map[string]*tsopts.Network // by network ID; filled by CreateNetwork or lazily at Join
	endpoints    map[string]*endpoint       // joined endpoints by endpoint ID
	releaseTimer *time.Timer                // pending scheduleMemoryRelease
	unrecovered  map[string]unrecovered     // by endpoint ID: recovery failing (recoveryFailed)
	leaving      map[string]leaving         // by hostname: nodes being stopped for good (takeLeaving)

	failedJoins sync.WaitGroup // finishFailedJoin's background teardowns, waited for by Shutdown

	releases   atomic.Uint64 // releaseMemory runs
	collecting atomic.Bool   // a collectStoppedNodes is pending

	metrics *driverMetrics // metrics.go
}

var _ network.Driver = (*Driver)(nil)

// New returns a driver. It does no I/O.
func New(cfg Config) *Driver {
	if cfg.ResolvePath == nil {
		cfg.ResolvePath = func(p string) (string, error) { return p, nil }
	}
	if cfg.Nodes == nil {
		cfg.Nodes = StackNodes{}
	}
	if cfg.HostStateRoot == "" {
		cfg.HostStateRoot = cfg.StateRoot
	}
	lg := cfg.Log
	if lg == nil {
		lg = slog.New(slog.DiscardHandler)
	}
	return &Driver{
		cfg:         cfg,
		dir:         statedir.New(cfg.StateRoot, cfg.HostStateRoot),
		log:         lg,
		networks:    map[string]*tsopts.Network{},
		endpoints:   map[string]*endpoint{},
		unrecovered: map[string]unrecovered{},
		leaving:     map[string]leaving{},
		metrics:     newDriverMetrics(),
	}
}

// GetCapabilities: tslink networks are local to this host.
func (d *Driver) GetCapabilities() (*network.CapabilitiesResponse, error) {
	return &network.CapabilitiesResponse{Scope: "local", ConnectivityScope: "local"}, nil
}

// AllocateNetwork is for swarm-scoped drivers only.
func (d *Driver) AllocateNetwork(*network.AllocateNetworkRequest) (*network.AllocateNetworkResponse, error) {
	return nil, errors.New("tslink is a local-scope driver: AllocateNetwork is not supported")
}

// FreeNetwork is for swarm-scoped drivers only.
func (d *Driver) FreeNetwork(*network.FreeNetworkRequest) error { return nil }

// DiscoverNew is unused by local drivers.
func (d *Driver) DiscoverNew(*network.DiscoveryNotification) error { return nil }

// DiscoverDelete is unused by local drivers.
func (d *Driver) DiscoverDelete(*network.DiscoveryNotification) error { return nil }

// ProgramExternalConnectivity is a no-op: dockerd publishes ports through
// docker_gwbridge, not through this driver.
func (d *Driver) ProgramExternalConnectivity(*network.ProgramExternalConnectivityRequest) error {
	return nil
}

// RevokeExternalConnectivity is a no-op; see ProgramExternalConnectivity.
func (d *Driver) RevokeExternalConnectivity(*network.RevokeExternalConnectivityRequest) error {
	return nil
}

// Shutdown prepares the process to exit on SIGTERM (`docker plugin
// disable`, upgrades) without touching the nodes: containers keep
// tailscale0, addresses and routes, and the next plugin process adopts them
// ([Driver.Recover]). Nodes of failed Joins still closing in the background
// (they belong to no container) finish closing first, so an ephemeral one
// still logs out. The caller must exit afterwards.
func (d *Driver) Shutdown() {
	var wg sync.WaitGroup
	for _, ep := range d.startedEndpoints() {
		wg.Go(func() { d.detachEndpoint(ep) })
	}
	wg.Wait()
	d.failedJoins.Wait() // nodes of failed Joins, closing after their first netmap
}

// controlName is a control URL as logs show it ([nodespec.ControlDisplay]).
func controlName(u string) string {
	if u == "" {
		return "tailscale default"
	}
	return nodespec.ControlDisplay(u)
}

// tailLines returns the last n lines of a file, joined with " | ".
func tailLines(path string, n int) string {
	b, err := os.ReadFile(path)
	if err != nil {
		return ""
	}
	lines := strings.Split(strings.TrimSpace(strings.ToValidUTF8(string(b), "")), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, " | ")
}
