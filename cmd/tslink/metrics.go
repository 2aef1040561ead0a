package main

import (
	"encoding/json"
	"fmt"
	"net"
	"net/http"
	"net/netip"
	"strconv"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	"github.com/tslink/tslink/pkg/netdriver"
)

// metricsSetting is the plugin setting that names the metrics listener.
const metricsSetting = "TSLINK_METRICS"

// metricsAddrForm is the accepted form of metricsSetting, for errors.
const metricsAddrForm = "want a port (e.g. 9595: served on 127.0.0.1 only) or IP:port (e.g. 0.0.0.0:9595 for every interface, 192.168.1.5:9595, [::1]:9595)"

// parseMetricsAddr reads the metricsSetting value: "" is off (returns ""),
// a bare port is that port on 127.0.0.1, and IP:port is as given. Host
// names and an empty host (":9595", which Go would serve on every
// interface) are refused: where metrics are exposed must be explicit.
func parseMetricsAddr(v string) (string, error) {
	if v == "" {
		return "", nil
	}
	bad := func(why string) error {
		return fmt.Errorf("plugin setting %s=%q: %s: %s", metricsSetting, v, why, metricsAddrForm)
	}
	port := func(p string) (uint16, error) {
		n, err := strconv.ParseUint(p, 10, 16)
		if err != nil || n == 0 {
			return 0, bad(fmt.Sprintf("port %q is not a number 1-65535", p))
		}
		return uint16(n), nil
	}
	if _, err := strconv.ParseUint(v, 10, 64); err == nil {
		p, err := port(v)
		if err != nil {
			return "", err
		}
		return netip.AddrPortFrom(netip.AddrFrom4([4]byte{127, 0, 0, 1}), p).String(), nil
	}
	host, ps, err := net.SplitHostPort(v)
	if err != nil {
		return "", bad("not a port or IP:port")
	}
	if host == "" {
		return "", bad("no IP (give 0.0.0.0 for every interface, or only the port for loopback)")
	}
	ip, err := netip.ParseAddr(host)
	if err != nil || ip.Zone() != "" {
		return "", bad(fmt.Sprintf("%q is not an IP address", host))
	}
	p, err := port(ps)
	if err != nil {
		return "", err
	}
	return netip.AddrPortFrom(ip, p).String(), nil
}

// metricsHandler serves GET /metrics (Prometheus: the driver's collector,
// the Go runtime's and the process's, which give goroutines and RSS) and
// GET /healthz (200 when every node is Running, else 503; JSON
// [netdriver.Health] either way).
func metricsHandler(d *netdriver.Driver) http.Handler {
	reg := prometheus.NewRegistry()
	reg.MustRegister(
		collectors.NewGoCollector(),
		collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}),
		d.MetricsCollector(),
	)
	mux := http.NewServeMux()
	mux.Handle("GET /metrics", promhttp.HandlerFor(reg, promhttp.HandlerOpts{ErrorHandling: promhttp.ContinueOnError}))
	mux.HandleFunc("GET /healthz", func(w http.ResponseWriter, r *http.Request) {
		h := d.Health(r.Context())
		w.Header().Set("Content-Type", "application/json")
		if !h.Healthy {
			w.WriteHeader(http.StatusServiceUnavailable)
		}
		json.NewEncoder(w).Encode(h)
	})
	return mux
}

// serveMetrics serves h on addr (from parseMetricsAddr) until the returned
// listener is closed.
func serveMetrics(addr string, h http.Handler) (net.Listener, error) {
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return nil, fmt.Errorf("plugin setting %s: %w", metricsSetting, err)
	}
	srv := &http.Server{Handler: h, ReadHeaderTimeout: 5 * time.Second, IdleTimeout: 30 * time.Second}
	go srv.Serve(ln)
	return ln, nil
}
