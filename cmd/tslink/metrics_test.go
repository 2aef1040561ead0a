package main

import (
	"bytes"
	"context"
	"errors"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/tslink/tslink/pkg/netdriver"
)

func TestParseMetricsAddr(t *testing.T) {
	for in, want := range map[string]string{
		"":                "",
		"9595":            "127.0.0.1:9595",
		"0.0.0.0:9595":    "0.0.0.0:9595",
		"192.168.1.5:80":  "192.168.1.5:80",
		"[::1]:9595":      "[::1]:9595",
		"[::]:9595":       "[::]:9595",
		"127.0.0.1:65535": "127.0.0.1:65535",
	} {
		got, err := parseMetricsAddr(in)
		if err != nil || got != want {
			t.Errorf("parseMetricsAddr(%q) = %q, %v; want %q", in, got, err, want)
		}
	}
	for _, in := range []string{":9595", "0", "65536", "localhost:9595", "example.com:80", "1.2.3.4", "1.2.3.4:x", "[fe80::1%eth0]:9595", "9595 ", "http://0.0.0.0:9595"} {
		_, err := parseMetricsAddr(in)
		if err == nil || !strings.Contains(err.Error(), metricsSetting) || !strings.Contains(err.Error(), "want a port") {
			t.Errorf("parseMetricsAddr(%q): %v; want an error naming %s and the accepted form", in, err, metricsSetting)
		}
	}
}

// syncBuffer is a bytes.Buffer safe for a writer and a reader.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}
func (s *syncBuffer) String() string { s.mu.Lock(); defer s.mu.Unlock(); return s.b.String() }

func TestWatchStatusRefreshesUntilCancelled(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	var calls int
	var mu sync.Mutex
	fetch := func(context.Context) ([]netdriver.EndpointStatus, error) {
		mu.Lock()
		defer mu.Unlock()
		calls++
		if calls == 2 {
			return nil, errors.New("the tslink plugin is not running")
		}
		return []netdriver.EndpointStatus{{Container: "web", Hostname: "web", State: "Running", Attached: true, IPs: []string{"100.64.0.1"}}}, nil
	}
	var out syncBuffer
	done := make(chan error, 1)
	go func() { done <- watchStatus(ctx, &out, true, 20*time.Millisecond, false, fetch) }()
	for deadline := time.Now().Add(5 * time.Second); strings.Count(out.String(), "tslink status every") < 3; time.Sleep(5 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatalf("fewer than 3 refreshes:\n%s", out.String())
		}
	}
	cancel() // Ctrl-C
	select {
	case err := <-done:
		if err != nil {
			t.Errorf("watch ended with %v; want nil (a clean exit)", err)
		}
	case <-time.After(2 * time.Second):
		t.Fatal("watch did not end after the interrupt")
	}
	s := out.String()
	if !strings.Contains(s, "\x1b[H\x1b[2J") || !strings.Contains(s, "100.64.0.1") || !strings.Contains(s, "not running") {
		t.Errorf("watch output lacks the screen clear, the table or the error shown:\n%q", s)
	}
}

func TestWatchStatusJSONLines(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	var out syncBuffer
	done := make(chan error, 1)
	go func() {
		done <- watchStatus(ctx, &out, false, 10*time.Millisecond, true, func(context.Context) ([]netdriver.EndpointStatus, error) {
			return []netdriver.EndpointStatus{{Hostname: "web", State: "Running"}}, nil
		})
	}()
	for deadline := time.Now().Add(5 * time.Second); strings.Count(out.String(), "\n") < 2; time.Sleep(5 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatal("no JSON lines")
		}
	}
	cancel()
	<-done
	for _, line := range strings.Split(strings.TrimSpace(out.String()), "\n") {
		if !strings.HasPrefix(line, `[{"container":"","hostname":"web"`) {
			t.Errorf("line %q is not one JSON status document", line)
		}
	}
}
