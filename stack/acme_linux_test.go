package stack

import (
	"bytes"
	"context"
	"crypto/tls"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/netip"
	"strings"
	"testing"
	"time"

	"github.com/tslink/tslink/pkg/nodespec"
	"github.com/tslink/tslink/test/acmetest"
)

// TestHTTPSServeIssuesCertificate: a persistent node serving https gets a
// certificate for its MagicDNS name from a local ACME server (pebble,
// validating the DNS-01 TXT record the node published through control's
// /machine/set-dns) when it starts, before any client connects; a TLS client
// on the laptop verifies it against the ACME server's root and reaches the
// container's backend; after a restart the node serves the same certificate
// from its state dir without a second order.
func TestHTTPSServeIssuesCertificate(t *testing.T) {
	l := newLab(t)
	ca := acmetest.Start(t)
	// Read by tailscale's ACME client at each issuance (feature/acme);
	// t.Setenv restores the lab's closed-port value when the test ends.
	t.Setenv("TS_DEBUG_ACME_DIRECTORY_URL", ca.DirectoryURL())
	l.control.OnSetDNS(ca.SetTXT)

	cfg := l.config("secure")
	cfg.Ephemeral = false
	cfg.Serve = nodespec.Serve{Endpoints: []nodespec.ServeEndpoint{
		{Port: 443, Proto: nodespec.ProtoHTTPS, Target: 8080, Path: "/"},
	}}
	fqdn := "secure." + l.control.MagicDNSDomain()
	ready := "HTTPS certificate for " + fqdn + " ready"

	start := func() (*Node, netip.Addr) {
		t.Helper()
		cfg.EndpointID = randomID()
		n, ctr := l.startNode(t, cfg)
		loopbackApp(t, ctr)
		v4, _ := n.Addrs()
		return n, v4
	}
	// httpsGET fetches path from the node at ip:443 under its MagicDNS name,
	// verifying the certificate against the ACME server's root, and returns
	// the body and the leaf certificate's DER.
	httpsGET := func(ip netip.Addr, path string) (string, []byte, error) {
		tr := &http.Transport{
			DisableKeepAlives: true,
			TLSClientConfig:   &tls.Config{RootCAs: ca.Roots()},
			DialContext: func(ctx context.Context, network, _ string) (net.Conn, error) {
				return l.laptop.NS.Dial(ctx, network, netip.AddrPortFrom(ip, 443).String())
			},
		}
		defer tr.CloseIdleConnections()
		c := &http.Client{Transport: tr, Timeout: 5 * time.Second}
		res, err := c.Get("https://" + fqdn + path)
		if err != nil {
			return "", nil, err
		}
		defer res.Body.Close()
		body, err := io.ReadAll(res.Body)
		if err != nil {
			return "", nil, err
		}
		if res.StatusCode != http.StatusOK {
			return "", nil, fmt.Errorf("status %s: %q", res.Status, body)
		}
		return string(body), res.TLS.PeerCertificates[0].Raw, nil
	}
	waitReady := func(times int) {
		t.Helper()
		if err := waitFor(60*time.Second, func() error {
			if got := strings.Count(l.logs.String(), ready); got < times {
				return fmt.Errorf("%q logged %d times, want %d", ready, got, times)
			}
			return nil
		}); err != nil {
			t.Fatalf("%v; ACME orders %d; node log:\n%s", err, ca.Orders(), l.logs)
		}
	}

	began := time.Now()
	n, v4 := start()
	waitReady(1) // no client has connected yet
	t.Logf("certificate issued %v after the start began (%d order)", time.Since(began).Round(time.Millisecond), ca.Orders())
	if got := ca.Orders(); got != 1 {
		t.Errorf("ACME orders after the first start: %d, want 1", got)
	}
	body, first, err := httpsGET(v4, "/hello")
	if err != nil {
		t.Fatalf("https GET from the laptop: %v", err)
	}
	if !strings.HasPrefix(body, "path=/hello ") {
		t.Errorf("https GET answered %q, want the backend's path=/hello …", body)
	}

	// Restart: the same state dir, a new container.
	n.Close(context.Background())
	_, v4 = start()
	waitReady(2)
	var again []byte
	if err := waitFor(15*time.Second, func() (err error) {
		body, again, err = httpsGET(v4, "/again")
		return err
	}); err != nil {
		t.Fatalf("https GET after the restart: %v", err)
	}
	if !strings.HasPrefix(body, "path=/again ") {
		t.Errorf("https GET after the restart answered %q", body)
	}
	if !bytes.Equal(first, again) {
		t.Errorf("the node serves a different certificate after the restart")
	}
	if got := ca.Orders(); got != 1 {
		t.Errorf("ACME orders after the restart: %d, want still 1 (the certificate kept in the state dir)", got)
	}
}
