package stack

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/tslink/tslink/pkg/devcontrol"
	"github.com/tslink/tslink/pkg/nodespec"
)

// TestServeFollowsRename: the node's status shows the MagicDNS name control
// gave it, and after an admin's rename both the status and the serve config
// (keyed by the node's FQDN) follow within 10 s: a request for the new name
// is served, one for the old name no longer is.
func TestServeFollowsRename(t *testing.T) {
	l := newLab(t)
	cfg := l.config("named")
	cfg.Serve = nodespec.Serve{Endpoints: []nodespec.ServeEndpoint{{Port: 80, Proto: nodespec.ProtoHTTP, Target: 8080, Path: "/"}}}
	n, ctr := l.startNode(t, cfg)
	loopbackApp(t, ctr)
	domain := l.control.MagicDNSDomain()
	if st := n.Status(); st.Name != "named."+domain || st.Hostname != "named" {
		t.Fatalf("status: hostname %q, name %q; want named, named.%s", st.Hostname, st.Name, domain)
	}
	v4, _ := n.Addrs()
	url := fmt.Sprintf("http://%s/x", v4)
	if err := waitFor(10*time.Second, func() error { _, err := l.laptopGET(url, "named."+domain); return err }); err != nil {
		t.Fatalf("GET as named.%s before the rename: %v", domain, err)
	}
	if strings.Contains(l.logs.String(), "is taken") {
		t.Errorf("debug log says the name was taken, though control gave the one asked for:\n%s", l.logs)
	}

	nodes := l.control.NodesByHostname("named")
	if len(nodes) != 1 {
		t.Fatalf("control lists %d nodes named named", len(nodes))
	}
	if err := l.control.RenameNode(nodes[0].NodeKey, "renamed"); err != nil {
		t.Fatal(err)
	}
	renamedAt := time.Now()
	err := waitFor(10*time.Second, func() error {
		if got := n.Status().Name; got != "renamed."+domain {
			return fmt.Errorf("status name %q", got)
		}
		_, err := l.laptopGET(url, "renamed."+domain)
		return err
	})
	if err != nil {
		t.Fatalf("10 s after the rename: %v\n%s", err, l.logs)
	}
	t.Logf("serving as renamed.%s %v after the rename", domain, time.Since(renamedAt).Round(time.Millisecond))
	if body, err := l.laptopGET(url, "named."+domain); err == nil {
		t.Errorf("the old name is still served: %q", body)
	}
	if got := strings.Count(l.logs.String(), "control renamed the node named."+domain+" -> renamed."+domain); got != 1 {
		t.Errorf("debug log tells of the rename %d times; want once:\n%s", got, l.logs)
	}
}

// TestHTTPSServeWithoutCertsFailsStart: on a tailnet that offers no HTTPS
// certificate, a node with an https endpoint fails to start at once with an
// error naming the label and the cause, and leaves nothing behind (the same
// state dir starts again with plain http only).
func TestHTTPSServeWithoutCertsFailsStart(t *testing.T) {
	l := newLabWith(t, devcontrol.Options{NoHTTPSCerts: true})
	cfg := l.config("nocert")
	cfg.Serve = nodespec.Serve{Endpoints: []nodespec.ServeEndpoint{
		{Port: 80, Proto: nodespec.ProtoHTTP, Target: 8080, Path: "/"},
		{Port: 443, Proto: nodespec.ProtoHTTPS, Target: 8080, Path: "/"},
	}}
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	began := time.Now()
	n, err := Start(ctx, cfg)
	if err == nil {
		n.Close(context.Background())
		t.Fatal("Start succeeded on a tailnet without HTTPS certificates")
	}
	took := time.Since(began)
	if !errors.Is(err, ErrNoHTTPSCert) || !strings.Contains(err.Error(), "ts.serve.443=https:8080") || !strings.Contains(err.Error(), "nocert."+l.control.MagicDNSDomain()) {
		t.Fatalf("Start: %v; want %v naming ts.serve.443=https:8080 and the node's name", err, ErrNoHTTPSCert)
	}
	t.Logf("refused after %v: %v", took.Round(time.Millisecond), err)
	if took > 10*time.Second {
		t.Errorf("refusal took %v", took)
	}

	cfg.Serve.Endpoints = cfg.Serve.Endpoints[:1]
	cfg.EndpointID = randomID()
	n2, ctr := l.startNode(t, cfg)
	loopbackApp(t, ctr)
	v4, _ := n2.Addrs()
	if err := waitFor(10*time.Second, func() error { _, err := l.laptopGET(fmt.Sprintf("http://%s/", v4), ""); return err }); err != nil {
		t.Errorf("plain http on the same state dir after the refusal: %v", err)
	}
}

// TestTLSFailsFastWhenIssuanceFails: control offers the node a certificate
// but none can be issued (the ACME directory is unreachable): the fetch
// starts with the node (its failure is the status's last error before any
// client came), a TLS client is refused in under 5 s, and plain http on the
// same node keeps working.
func TestTLSFailsFastWhenIssuanceFails(t *testing.T) {
	l := newLab(t)
	cfg := l.config("badcert")
	cfg.Serve = nodespec.Serve{Endpoints: []nodespec.ServeEndpoint{
		{Port: 80, Proto: nodespec.ProtoHTTP, Target: 8080, Path: "/"},
		{Port: 443, Proto: nodespec.ProtoHTTPS, Target: 8080, Path: "/"},
	}}
	n, ctr := l.startNode(t, cfg)
	loopbackApp(t, ctr)
	fqdn := "badcert." + l.control.MagicDNSDomain()
	err := waitFor(10*time.Second, func() error {
		if e := n.Status().LastErr; !strings.Contains(e, "fetching the HTTPS certificate for "+fqdn) {
			return fmt.Errorf("last error %q", e)
		}
		return nil
	})
	if err != nil {
		t.Fatalf("no certificate fetch at start: %v\n%s", err, l.logs)
	}
	v4, _ := n.Addrs()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	began := time.Now()
	c, err := l.laptop.NS.Dial(ctx, "tcp", v4.String()+":443")
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	tc := tls.Client(c, &tls.Config{ServerName: fqdn, InsecureSkipVerify: true})
	err = tc.HandshakeContext(ctx)
	took := time.Since(began)
	t.Logf("TLS handshake: %v after %v", err, took.Round(time.Millisecond))
	if err == nil || took > 5*time.Second {
		t.Errorf("TLS handshake without a certificate: err %v after %v; want a failure in under 5 s", err, took)
	}
	if _, err := l.laptopGET(fmt.Sprintf("http://%s/", v4), ""); err != nil {
		t.Errorf("plain http on the same node: %v", err)
	}
}
