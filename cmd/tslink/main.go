// Command tslink is the tslink Docker network plugin: every container on a
// tslink network becomes its own Tailscale node.
//
// Usage:
//
//	tslink [serve]                                  the plugin (run by Docker)
//	tslink status [--json] [--state-dir DIR]        one line per endpoint: container,
//	       [--watch [--interval 2s]]                hostname, Tailscale IPs, node state,
//	                                                last error, debug.log path; --watch
//	                                                refreshes it until Ctrl-C
//
// Run by Docker as a managed plugin (config.json), it serves the
// docker.networkdriver/1.0 protocol on /run/docker/plugins/tslink.sock.
//
// Environment (set with `docker plugin set tslink:latest NAME=VALUE`):
//
//	TS_AUTHKEY      default auth key for networks without --opt ts.authkey
//	TS_CONTROL_URL  default control server (empty: Tailscale's)
//	LOG_LEVEL       debug, info (default), warn, error
//	DOCKER_HOST     dockerd's API socket as dockerd sees it (default unix:///var/run/docker.sock)
//	TSLINK_STATE_DIR       the state dir inside the plugin (default /data)
//	TSLINK_HOST_STATE_DIR  the same dir as the host sees it, for messages
//	                       (default /var/lib/docker-plugins/tailscale)
//	TSLINK_HEAP_PROFILE    1: sample allocations for /debug/pprof/heap (off by default)
//	TSLINK_LOG_UPLOAD      1: let every node upload Tailscale's client logs (off by default;
//	                       a tailnet with network flow logs on requires it)
//	TSLINK_PACKET_BATCH    small (default) or full: wireguard-go's packet batches per node
//	                       (full: as tailscale ships them, ~16 MiB more heap per node)
//	TSLINK_METRICS         where to serve /metrics (Prometheus) and /healthz: a port (on
//	                       127.0.0.1) or IP:port; off by default. Both are always on the
//	                       status socket.
package main

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"os"
	"os/signal"
	"path/filepath"
	"runtime"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/docker/go-plugins-helpers/network"
	"github.com/tslink/tslink/pkg/dockerapi"
	"github.com/tslink/tslink/pkg/engine"
	"github.com/tslink/tslink/pkg/hostdns"
	"github.com/tslink/tslink/pkg/hostpath"
	"github.com/tslink/tslink/pkg/netdriver"
	"github.com/tslink/tslink/pkg/nodespec"
	"github.com/tslink/tslink/pkg/statedir"
	"github.com/tslink/tslink/pkg/tsopts"
	"github.com/tslink/tslink/stack"
)

// version is set at build time (-ldflags "-X main.version=…").
var version = "dev"

// pluginSocket is where dockerd looks for a managed plugin's socket
// (config.json "socket", under /run/docker/plugins).
const pluginSocket = "/run/docker/plugins/tslink.sock"

// The Go runtime's heap profiler keeps a record for every allocation stack
// and size it has sampled, for the life of the process. A plugin that brings
// nodes up and down all day keeps meeting new ones (node sizes, netmap
// lengths), so its RSS grows without end (docs/reliability.md has the
// soak's numbers). So it is off unless asked for.
func init() {
	if os.Getenv("TSLINK_HEAP_PROFILE") != "1" {
		runtime.MemProfileRate = 0
	}
}

func main() {
	if err := run(os.Args[1:]); err != nil {
		fmt.Fprintln(os.Stderr, "tslink:", err)
		os.Exit(1)
	}
}

func run(args []string) error {
	if len(args) > 0 {
		switch args[0] {
		case "serve":
		case "status":
			return runStatus(args[1:])
		case "version", "--version":
			fmt.Println(version)
			return nil
		case "help", "-h", "-help", "--help":
			fmt.Println(errUsage)
			return nil
		default:
			return fmt.Errorf("unknown command %q; %w", args[0], errUsage)
		}
	}
	log := slog.New(slog.NewTextHandler(os.Stdout, &slog.HandlerOptions{Level: logLevel(os.Getenv("LOG_LEVEL"))}))

	// Read the secrets, then drop them from the environment: tsnet falls back
	// to TS_AUTHKEY and TS_CONTROL_URL from the environment on its own.
	env := tsopts.Env{AuthKey: strings.TrimSpace(os.Getenv("TS_AUTHKEY")), ControlURL: strings.TrimSpace(os.Getenv("TS_CONTROL_URL"))}
	for _, k := range []string{"TS_AUTHKEY", "TS_AUTH_KEY", "TS_CONTROL_URL", "TS_CLIENT_SECRET"} {
		os.Unsetenv(k)
	}

	switch v := os.Getenv(stack.LogUploadSetting); v {
	case "1":
		stack.AllowLogUpload()
		log.Info("Tailscale log upload allowed for every node", "setting", stack.LogUploadSetting)
	case "", "0":
	default:
		return fmt.Errorf("plugin setting %s=%q: want 1 (allow Tailscale log upload) or empty", stack.LogUploadSetting, v)
	}

	switch v := os.Getenv(stack.PacketBatchSetting); v {
	case "full":
		stack.KeepFullPacketBatches()
		log.Info("wireguard-go's full packet batches for every node", "setting", stack.PacketBatchSetting)
	case "", "small":
	default:
		return fmt.Errorf("plugin setting %s=%q: want small (the default: less memory per node) or full (wireguard-go's batches as tailscale ships them)", stack.PacketBatchSetting, v)
	}

	stateDir := cmp.Or(os.Getenv("TSLINK_STATE_DIR"), "/data")
	if err := os.MkdirAll(statedir.New(stateDir, "").NodesDir(), 0o700); err != nil {
		return err
	}
	os.Chmod(stateDir, 0o700)
	docker, err := dockerapi.New(os.Getenv("DOCKER_HOST"))
	if err != nil {
		return err
	}
	defer docker.Close()

	upstreams, err := hostdns.ParseUpstreams("TS_DNS_UPSTREAMS", os.Getenv("TS_DNS_UPSTREAMS"))
	if err != nil {
		return err
	}
	metricsAddr, err := parseMetricsAddr(strings.TrimSpace(os.Getenv(metricsSetting)))
	if err != nil {
		return err
	}

	tracker := engine.NewTracker(docker, log)
	d := netdriver.New(netdriver.Config{
		StateRoot:     stateDir,
		HostStateRoot: cmp.Or(os.Getenv("TSLINK_HOST_STATE_DIR"), "/var/lib/docker-plugins/tailscale"),
		Env:           env,
		Engine:        tracker,
		ResolvePath:   hostpath.Path,
		DNSUpstreams:  dnsUpstreams(upstreams),
		Log:           log,
		Exec:          docker.Execer,
	})

	os.Remove(pluginSocket)
	if err := os.MkdirAll(filepath.Dir(pluginSocket), 0o755); err != nil {
		return err
	}
	ln, err := net.Listen("unix", pluginSocket)
	if err != nil {
		return err
	}
	ln = tracker.Listen(ln)
	metrics := metricsHandler(d)
	statusLn, err := serveStatus(stateDir, d, tracker, metrics)
	if err != nil {
		return err
	}
	defer statusLn.Close()
	if metricsAddr != "" {
		metricsLn, err := serveMetrics(metricsAddr, metrics)
		if err != nil {
			return err
		}
		defer metricsLn.Close()
		log.Info("serving metrics", "setting", metricsSetting, "addr", metricsAddr, "paths", "/metrics /healthz")
	}
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, os.Interrupt)
	defer stop()
	errc := make(chan error, 1)
	go func() { errc <- network.NewHandler(d).Serve(ln) }()
	rctx, rcancel := context.WithTimeout(context.Background(), 30*time.Minute)
	defer rcancel()
	go d.Recover(rctx)
	log.Info("tslink serving", "version", version, "socket", pluginSocket, "state", stateDir, "default_control", cmp.Or(nodespec.ControlDisplay(env.ControlURL), "tailscale default"), "env_authkey", env.AuthKey != "")
	select {
	case <-ctx.Done():
	case err = <-errc:
	}
	ln.Close()
	d.Shutdown()
	log.Info("tslink stopped; running containers keep tailscale0 for the next plugin process")
	if errors.Is(err, net.ErrClosed) {
		err = nil
	}
	return err
}

func logLevel(s string) slog.Level {
	var l slog.Level
	if err := l.UnmarshalText([]byte(cmp.Or(s, "info"))); err != nil {
		return slog.LevelInfo
	}
	return l
}

// dnsUpstreams returns the upstreams of 100.100.100.100 for names outside the
// tailnet when control sends none: TS_DNS_UPSTREAMS if set, else the host's
// own resolvers as dockerd's root shows them (hostdns), re-read at most every
// hostResolversTTL.
func dnsUpstreams(setting []netip.AddrPort) func() []netip.AddrPort {
	if len(setting) > 0 {
		return func() []netip.AddrPort { return setting }
	}
	var (
		mu      sync.Mutex
		cached  []netip.AddrPort
		readAt  time.Time
		readOne = func(p string) ([]byte, error) {
			rp, err := hostpath.InDockerd(p)
			if err != nil {
				return nil, err
			}
			return os.ReadFile(rp)
		}
	)
	return func() []netip.AddrPort {
		mu.Lock()
		defer mu.Unlock()
		if readAt.IsZero() || time.Since(readAt) > hostResolversTTL {
			cached, readAt = hostdns.HostResolvers(readOne), time.Now()
		}
		return cached
	}
}

// hostResolversTTL is how long the host's resolver list is reused.
const hostResolversTTL = 30 * time.Second
