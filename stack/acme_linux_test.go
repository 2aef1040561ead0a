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
	"os"
	"os/exec"
	"strings"
	"syscall"
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
// from its state dir without a second order. The node runs in a child
// process (as in the plugin): the ACME directory URL (envknob
// TS_DEBUG_ACME_DIRECTORY_URL) and the trust of the ACME server's TLS
// certificate (SSL_CERT_FILE, read once per process) are process-wide, so
// they go to that process only.
func TestHTTPSServeIssuesCertificate(t *testing.T) {
	l := newLab(t)
	ca := acmetest.Start(t)
	l.control.OnSetDNS(ca.SetTXT)
	env := []string{"TS_DEBUG_ACME_DIRECTORY_URL=" + ca.DirectoryURL(), "SSL_CERT_FILE=" + ca.TLSCertFile()}

	cfg := l.config("secure")
	cfg.Ephemeral = false
	cfg.Serve = nodespec.Serve{Endpoints: []nodespec.ServeEndpoint{
		{Port: 443, Proto: nodespec.ProtoHTTPS, Target: 8080, Path: "/"},
	}}
	fqdn := "secure." + l.control.MagicDNSDomain()

	// start runs the node in a new container (a fresh netns with the
	// backend on its loopback) and returns the child, its IPv4 and its log.
	start := func() (*exec.Cmd, netip.Addr, string) {
		t.Helper()
		cfg.EndpointID = randomID()
		ctr := newCtr(t)
		loopbackApp(t, ctr)
		return startHelperWithEnv(t, cfg, ctr.Path, env)
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
	// waitLogged waits until the node's log says its certificate is ready.
	ready := "HTTPS certificate for " + fqdn + " ready"
	waitLogged := func(logPath string) {
		t.Helper()
		if err := waitFor(60*time.Second, func() error {
			if b, _ := os.ReadFile(logPath); !strings.Contains(string(b), ready) {
				return fmt.Errorf("no %q in the node log", ready)
			}
			return nil
		}); err != nil {
			b, _ := os.ReadFile(logPath)
			var certLog []string
			for _, line := range strings.Split(string(b), "\n") {
				if strings.Contains(line, "cert") || strings.Contains(line, "acme") || strings.Contains(line, "tslink:") {
					certLog = append(certLog, line)
				}
			}
			t.Fatalf("%v; ACME orders %d, issued %d; node log (certificate lines):\n%s", err, ca.Orders(), ca.Issued(), tail(strings.Join(certLog, "\n"), 60))
		}
	}

	began := time.Now()
	first, v4, logPath := start()
	waitLogged(logPath) // no client has connected yet
	t.Logf("certificate issued %v after the start began", time.Since(began).Round(time.Millisecond))
	if o, i := ca.Orders(), ca.Issued(); o != 1 || i != 1 {
		t.Errorf("after the first start: %d ACME orders, %d issued; want 1, 1", o, i)
	}
	body, cert, err := httpsGET(v4, "/hello")
	if err != nil {
		t.Fatalf("https GET from the laptop: %v", err)
	}
	if !strings.HasPrefix(body, "path=/hello ") {
		t.Errorf("https GET answered %q, want the backend's path=/hello …", body)
	}

	// Restart: the same state dir, a new container.
	first.Process.Signal(syscall.SIGTERM)
	first.Wait()
	_, v4, logPath = start()
	waitLogged(logPath)
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
	if !bytes.Equal(cert, again) {
		t.Errorf("the node serves a different certificate after the restart")
	}
	if o, i := ca.Orders(), ca.Issued(); o != 1 || i != 1 {
		t.Errorf("after the restart: %d ACME orders, %d issued; want still 1, 1 (the certificate kept in the state dir)", o, i)
	}
}
