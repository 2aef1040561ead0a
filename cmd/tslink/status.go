package main

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/pprof"
	"os"
	"os/signal"
	"runtime"
	"strings"
	"syscall"
	"text/tabwriter"
	"time"
	"unicode"

	"github.com/tslink/tslink/pkg/engine"
	"github.com/tslink/tslink/pkg/netdriver"
	"github.com/tslink/tslink/pkg/statedir"
	"github.com/tslink/tslink/stack"
)

// serveStatus answers `tslink status` (GET /status, JSON) on the state
// dir's status socket ([statedir.Dir.StatusSocket]) until the returned
// listener is closed, and serves metrics' /metrics and /healthz there too.
// Only root can reach it (0600).
func serveStatus(stateDir string, d *netdriver.Driver, tracker *engine.Tracker, metrics http.Handler) (net.Listener, error) {
	p := statedir.New(stateDir, "").StatusSocket()
	os.Remove(p)
	ln, err := net.Listen("unix", p)
	if err != nil {
		return nil, fmt.Errorf("listening on %s: %w", p, err)
	}
	os.Chmod(p, 0o600)
	mux := http.NewServeMux()
	mux.HandleFunc("GET /status", func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "application/json")
		json.NewEncoder(w).Encode(d.Status())
	})
	mux.HandleFunc("GET /debug/vars", func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "application/json")
		v := processVars()
		v.MemoryReleases = d.MemoryReleases()
		v.DockerAPIRequests = tracker.APIRequests()
		v.EngineRestoring = tracker.Restoring()
		v.BackendCallMaxMs = stack.BackendCallMax().Milliseconds()
		json.NewEncoder(w).Encode(v)
	})
	mux.HandleFunc("GET /debug/pprof/", pprof.Index)
	mux.HandleFunc("GET /debug/pprof/profile", pprof.Profile)
	mux.Handle("GET /metrics", metrics)
	mux.Handle("GET /healthz", metrics)
	srv := &http.Server{Handler: mux, ReadHeaderTimeout: 5 * time.Second, IdleTimeout: 30 * time.Second}
	go srv.Serve(ln)
	return ln, nil
}

// runStatus is `tslink status [--json] [--state-dir DIR] [--watch
// [--interval D]]`, run on the host (or in a container with the state dir
// mounted).
func runStatus(args []string) error {
	fs := flag.NewFlagSet("status", flag.ContinueOnError)
	asJSON := fs.Bool("json", false, "print JSON")
	stateDir := fs.String("state-dir", "/var/lib/docker-plugins/tailscale", "the plugin's state dir as this process sees it")
	watch := fs.Bool("watch", false, "refresh the status every --interval until interrupted (Ctrl-C); with --json, one JSON document per line")
	interval := fs.Duration("interval", 2*time.Second, "with --watch: time between refreshes, at least "+minWatchInterval.String())
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return nil
		}
		return err
	}
	if fs.NArg() > 0 {
		return fmt.Errorf("unexpected argument %q; %w", fs.Arg(0), errUsage)
	}
	if *interval < minWatchInterval {
		return fmt.Errorf("--interval %v: want a duration of at least %v, e.g. 2s", *interval, minWatchInterval)
	}
	if _, err := os.Stat(*stateDir); err != nil {
		return statusError(*asJSON, fmt.Errorf("no plugin state dir %s (--state-dir: the plugin's state.source as this process sees it): %w", *stateDir, err))
	}
	sock := statedir.New(*stateDir, "").StatusSocket()
	client := &http.Client{
		Timeout: 5 * time.Second,
		Transport: &http.Transport{DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
			var d net.Dialer
			return d.DialContext(ctx, "unix", sock)
		}},
	}
	if !*watch {
		eps, err := fetchStatus(context.Background(), client, sock)
		if err != nil {
			return statusError(*asJSON, err)
		}
		if *asJSON {
			enc := json.NewEncoder(os.Stdout)
			enc.SetIndent("", "  ")
			return enc.Encode(eps)
		}
		return writeStatusTable(os.Stdout, eps)
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	return watchStatus(ctx, os.Stdout, isTerminal(os.Stdout), *interval, *asJSON, func(ctx context.Context) ([]netdriver.EndpointStatus, error) {
		return fetchStatus(ctx, client, sock)
	})
}

// minWatchInterval is the shortest --interval.
const minWatchInterval = 100 * time.Millisecond

// watchStatus prints the status every interval until ctx ends (Ctrl-C),
// then returns nil. On a terminal each refresh replaces the screen;
// otherwise refreshes follow each other, each under a timestamped header
// (with asJSON: one JSON document per line). A plugin that does not answer
// is reported and asked again at the next refresh.
func watchStatus(ctx context.Context, w io.Writer, terminal bool, interval time.Duration, asJSON bool, fetch func(context.Context) ([]netdriver.EndpointStatus, error)) error {
	for {
		eps, err := fetch(ctx)
		if ctx.Err() != nil {
			return nil
		}
		var b bytes.Buffer
		switch {
		case asJSON && err != nil:
			json.NewEncoder(&b).Encode(struct {
				Running bool   `json:"running"`
				Error   string `json:"error"`
			}{false, err.Error()})
		case asJSON:
			json.NewEncoder(&b).Encode(eps)
		default:
			if terminal {
				b.WriteString("\x1b[H\x1b[2J") // cursor home, clear screen
			}
			fmt.Fprintf(&b, "tslink status every %v, %s (Ctrl-C to stop)\n\n", interval, time.Now().Format("15:04:05"))
			if err != nil {
				fmt.Fprintf(&b, "tslink: %v\n", err)
			} else {
				writeStatusTable(&b, eps)
			}
			if !terminal {
				b.WriteString("\n")
			}
		}
		if _, err := w.Write(b.Bytes()); err != nil {
			return err // stdout closed (e.g. a pipe to head)
		}
		select {
		case <-ctx.Done():
			return nil
		case <-time.After(interval):
		}
	}
}

// fetchStatus asks the plugin for its status over the status socket.
func fetchStatus(ctx context.Context, client *http.Client, sock string) ([]netdriver.EndpointStatus, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, "http://tslink/status", nil)
	if err != nil {
		return nil, err
	}
	res, err := client.Do(req)
	if err != nil {
		return nil, fmt.Errorf("the tslink plugin is not running (no answer on %s): check `docker plugin ls`", sock)
	}
	defer res.Body.Close()
	var eps []netdriver.EndpointStatus
	if err := json.NewDecoder(res.Body).Decode(&eps); err != nil {
		return nil, fmt.Errorf("reading status: %w", err)
	}
	return eps, nil
}

// writeStatusTable prints the status as `tslink status` shows it.
func writeStatusTable(w io.Writer, eps []netdriver.EndpointStatus) error {
	if len(eps) == 0 {
		_, err := fmt.Fprintln(w, "tslink plugin running; no containers on tslink networks")
		return err
	}
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "CONTAINER\tHOSTNAME\tMAGICDNS NAME\tTAILSCALE IPS\tSTATE\tSERVE\tLAST ERROR\tDEBUG LOG")
	for _, ep := range eps {
		state := ep.State
		if ep.KeyExpired {
			state += " (node key expired)"
		}
		if !ep.Attached {
			state += " (tailscale0 not in container yet)"
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n", ep.Container, ep.Hostname, dash(ep.Name), strings.Join(ep.IPs, ","), state, dash(ep.Serve), dash(printable(ep.LastError)), ep.DebugLog)
	}
	return tw.Flush()
}

// isTerminal reports whether f is a character device (a terminal).
func isTerminal(f *os.File) bool {
	fi, err := f.Stat()
	return err == nil && fi.Mode()&os.ModeCharDevice != 0
}

// statusError returns err; with --json it first prints it on stdout as
// {"running": false, "error": "…"}, so scripts always get JSON.
func statusError(asJSON bool, err error) error {
	if asJSON {
		json.NewEncoder(os.Stdout).Encode(struct {
			Running bool   `json:"running"`
			Error   string `json:"error"`
		}{false, err.Error()})
	}
	return err
}

// printable replaces control characters (terminal escape sequences that a
// control server's message could carry) with spaces.
func printable(s string) string {
	return strings.Map(func(r rune) rune {
		if unicode.IsControl(r) {
			return ' '
		}
		return r
	}, s)
}

func dash(s string) string {
	if s == "" {
		return "-"
	}
	return s
}

var errUsage = errors.New("usage: tslink [serve] | tslink status [--json] [--state-dir DIR] [--watch [--interval 2s]] | tslink version")

// ProcessVars are the plugin's resource counters, for leak checks and soak
// tests (GET /debug/vars on the status socket).
type ProcessVars struct {
	Goroutines int   `json:"goroutines"`
	FDs        int   `json:"fds"`
	RSSKiB     int64 `json:"rssKiB"`
	// RSSAnonKiB is the anonymous part of RSS (heap, stacks, runtime): the
	// memory the process holds. The rest of RSS is file-backed, mostly the
	// executable's pages, shared and reclaimable.
	RSSAnonKiB int64 `json:"rssAnonKiB"`
	// RSSPeakKiB is the process's highest RSS so far (VmHWM).
	RSSPeakKiB int64 `json:"rssPeakKiB"`
	// Threads is the process's OS thread count; StackSysKiB and
	// RuntimeMetaKiB are the Go runtime's non-heap memory (goroutine and
	// thread stacks; span, GC and other metadata), for telling growth there
	// from heap growth.
	Threads        int    `json:"threads"`
	StackSysKiB    uint64 `json:"stackSysKiB"`
	RuntimeMetaKiB uint64 `json:"runtimeMetaKiB"`
	HeapLiveKiB    uint64 `json:"heapLiveKiB"` // allocated heap (runtime.MemStats.HeapAlloc): live objects plus garbage not yet collected
	// HeapSpansKiB is the heap in spans holding objects (HeapInuse): live
	// objects, garbage and the gaps between them; the OS cannot get it back.
	// HeapFreeKiB is free heap still mapped (HeapIdle - HeapReleased): what a
	// memory release returns.
	HeapSpansKiB uint64 `json:"heapSpansKiB"`
	HeapFreeKiB  uint64 `json:"heapFreeKiB"`
	// MemoryReleases counts the returns of freed heap to the OS that follow
	// endpoints leaving (netdriver.Driver.MemoryReleases).
	MemoryReleases uint64 `json:"memoryReleases"`
	// DockerAPIRequests counts the plugin's requests to the Docker API: only
	// pings until the engine serves its API (package engine); plugin calls
	// such as Join make none.
	DockerAPIRequests uint64 `json:"dockerAPIRequests"`
	// EngineRestoring: the calling engine has not served its API yet.
	EngineRestoring bool `json:"engineRestoring"`
	// BackendCallMaxMs is the longest a node's LocalBackend call took, in
	// milliseconds, since the plugin started: every running node times one
	// call that takes its backend's mutex each second (stack.BackendCallMax).
	// tailscale's deadlock watchdog panics the process at about 35 s.
	BackendCallMaxMs int64 `json:"backendCallMaxMs"`
}

func processVars() ProcessVars {
	var ms runtime.MemStats
	runtime.ReadMemStats(&ms)
	v := ProcessVars{
		Goroutines:     runtime.NumGoroutine(),
		HeapLiveKiB:    ms.HeapAlloc >> 10,
		HeapSpansKiB:   ms.HeapInuse >> 10,
		HeapFreeKiB:    (ms.HeapIdle - ms.HeapReleased) >> 10,
		StackSysKiB:    ms.StackSys >> 10,
		RuntimeMetaKiB: (ms.MSpanSys + ms.MCacheSys + ms.BuckHashSys + ms.GCSys + ms.OtherSys) >> 10,
	}
	if fds, err := os.ReadDir("/proc/self/fd"); err == nil {
		v.FDs = len(fds)
	}
	b, _ := os.ReadFile("/proc/self/status")
	for _, line := range strings.Split(string(b), "\n") {
		if f := strings.Fields(line); len(f) >= 2 {
			switch f[0] {
			case "VmRSS:":
				fmt.Sscan(f[1], &v.RSSKiB)
			case "VmHWM:":
				fmt.Sscan(f[1], &v.RSSPeakKiB)
			case "RssAnon:":
				fmt.Sscan(f[1], &v.RSSAnonKiB)
			case "Threads:":
				fmt.Sscan(f[1], &v.Threads)
			}
		}
	}
	return v
}
