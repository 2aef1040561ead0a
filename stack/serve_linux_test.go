package stack

import (
	"bytes"
	"context"
	"crypto/rand"
	"crypto/sha256"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/netip"
	"os/exec"
	"strings"
	"testing"
	"time"

	"tailscale.com/ipn"

	"github.com/tslink/tslink/pkg/devcontrol"
	"github.com/tslink/tslink/pkg/nodespec"
	"github.com/tslink/tslink/test/netnstest"
)

// loopbackApp serves HTTP on 127.0.0.1:8080 and a line echo on
// 127.0.0.1:9000 inside ctr: reachable only through Serve's relays.
func loopbackApp(t *testing.T, ctr *netnstest.NetNS) {
	t.Helper()
	ln := ctr.Listen(t, "tcp", "127.0.0.1:8080")
	srv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		fmt.Fprintf(w, "path=%s login=%s", r.URL.Path, r.Header.Get("Tailscale-User-Login"))
	})}
	go srv.Serve(ln)
	t.Cleanup(func() { srv.Close() })
	go echoServer(ctr.Listen(t, "tcp", "127.0.0.1:9000"))
}

// laptopGET fetches url from the laptop with the given Host header ("" keeps
// the URL's) and returns the body of a 200 answer.
func (l *lab) laptopGET(url, host string) (string, error) {
	got, err := l.laptop.NS.HTTPGet(url, host, 5*time.Second)
	if err != nil {
		return "", err
	}
	body, ok := strings.CutPrefix(got, "200 ")
	if !ok {
		return "", fmt.Errorf("answer %q", got)
	}
	return body, nil
}

func TestServeReachesContainerLoopback(t *testing.T) {
	l := newLab(t)
	cfg := l.config("served")
	cfg.Serve = nodespec.Serve{Endpoints: []nodespec.ServeEndpoint{
		{Port: 80, Proto: nodespec.ProtoHTTP, Target: 8080, Path: "/"},
		{Port: 81, Proto: nodespec.ProtoHTTP, Target: 8080, Path: "/app"},
		{Port: 7000, Proto: nodespec.ProtoTCP, Target: 9000},
		{Port: 443, Proto: nodespec.ProtoHTTPS, Target: 8080, Path: "/"},
		{Port: 993, Proto: nodespec.ProtoTLSTerminatedTCP, Target: 9000},
	}}
	n, ctr := l.startNode(t, cfg)
	// TLS endpoints: testcontrol issues no certificates (no cert domains,
	// no ACME), so this checks the serve config tsnet got, up to issuance.
	sc, err := n.LocalClient().GetServeConfig(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	fqdn := "served." + l.control.MagicDNSDomain()
	if h := sc.TCP[443]; h == nil || !h.HTTPS {
		t.Errorf("https endpoint: TCP[443] = %+v, want HTTPS", h)
	}
	if w := sc.Web[ipn.HostPort(fqdn+":443")]; w == nil || w.Handlers["/"] == nil || w.Handlers["/"].Proxy != n.relays.backend(8080) {
		t.Errorf("https endpoint: Web[%s:443] = %+v, want / proxied to the relay of 8080", fqdn, w)
	}
	if h := sc.TCP[993]; h == nil || h.TerminateTLS != fqdn || h.TCPForward != n.relays.backend(9000) {
		t.Errorf("tls-terminated-tcp endpoint: TCP[993] = %+v, want TLS ended as %s, forwarded to the relay of 9000", h, fqdn)
	}
	loopbackApp(t, ctr)
	v4, _ := n.Addrs()
	st := l.laptop.Status(t)
	login := st.User[st.Self.UserID].LoginName

	cases := []struct{ url, host, want string }{
		{fmt.Sprintf("http://%s/hello", v4), "", "path=/hello login=" + login},                                     // by IP
		{fmt.Sprintf("http://%s/hello", v4), "served", "path=/hello login=" + login},                               // MagicDNS short name
		{fmt.Sprintf("http://%s/hello", v4), "served." + l.control.MagicDNSDomain(), "path=/hello login=" + login}, // FQDN
		{fmt.Sprintf("http://%s:81/app/deep/x", v4), "", "path=/deep/x login=" + login},                            // mount point stripped
	}
	for _, tc := range cases {
		var body string
		err := waitFor(15*time.Second, func() (err error) {
			body, err = l.laptopGET(tc.url, tc.host)
			return err
		})
		if err != nil {
			t.Errorf("GET %s (Host %q): %v", tc.url, tc.host, err)
		} else if body != tc.want {
			t.Errorf("GET %s (Host %q) = %q, want %q", tc.url, tc.host, body, tc.want)
		}
	}
	if login == "" {
		t.Errorf("laptop has no user login to check identity headers with")
	}
	if body, err := l.laptopGET(fmt.Sprintf("http://%s:81/elsewhere", v4), ""); err == nil {
		t.Errorf("GET outside the /app mount answered %q", body)
	}
	if err := dialEcho(l.laptop.NS.Dial, netip.AddrPortFrom(v4, 7000).String()); err != nil {
		t.Errorf("tcp serve 7000 -> 127.0.0.1:9000: %v", err)
	}
	// Nothing listens on the container's own port 80: the served port is
	// the node's, not the container's.
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	if c, err := dialIn(ctx, ctr.Path, v4.String()+":80"); err == nil {
		c.Close()
		t.Errorf("port 80 answers inside the container: the serve config leaked into the netns")
	}

	// The relay is the plugin's: another process on the host is refused,
	// unprivileged or root (a --network host container is root in the
	// host's netns).
	relay := n.relays.backend(8080)
	get := "printf 'GET / HTTP/1.0\\r\\n\\r\\n' | nc " + strings.Replace(relay, ":", " ", 1)
	if out, err := exec.Command("setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", "busybox", "sh", "-c", get).CombinedOutput(); strings.Contains(string(out), "path=") {
		t.Errorf("relay %s answered another process: %q (%v)", relay, out, err)
	}
	if out, err := exec.Command("busybox", "sh", "-c", get).CombinedOutput(); strings.Contains(string(out), "path=") {
		t.Errorf("relay %s answered another root process: %q (%v)", relay, out, err)
	}
	if !strings.Contains(l.logs.String(), "belongs to another process") {
		t.Errorf("the relay logged no refusal of another process:\n%s", l.logs.String())
	}
	n.Close(context.Background())
	if c, err := net.Dial("tcp", relay); err == nil {
		c.Close()
		t.Errorf("relay %s still listens after Close", relay)
	}
}

func TestServiceOnlyAndWithdrawal(t *testing.T) {
	l := newLabWith(t, devcontrol.Options{TagOwners: map[string][]string{"tag:web": {"tag:web"}}})
	for _, direct := range []bool{true, false} {
		t.Run(fmt.Sprintf("direct=%v", direct), func(t *testing.T) {
			host := fmt.Sprintf("svcnode-%v", direct)
			cfg := l.config(host)
			cfg.Ephemeral = false
			cfg.Tags = []string{"tag:web"}
			cfg.Serve = nodespec.Serve{
				Endpoints:   []nodespec.ServeEndpoint{{Port: 7000, Proto: nodespec.ProtoTCP, Target: 9000}},
				Service:     "svc:web",
				ServiceOnly: !direct,
			}
			n, ctr := l.startNode(t, cfg)
			loopbackApp(t, ctr)
			v4, _ := n.Addrs()
			err := dialEcho(l.laptop.NS.Dial, netip.AddrPortFrom(v4, 7000).String())
			if direct && err != nil {
				t.Errorf("ts.direct=true: node's own port 7000: %v", err)
			}
			if !direct && err == nil {
				t.Errorf("ts.direct=false: node's own port 7000 answers")
			}
			hash := func() string {
				for _, nd := range l.control.NodesByHostname(host) {
					return nd.ServicesHash
				}
				return ""
			}
			if err := waitFor(10*time.Second, func() error {
				if hash() == "" {
					return fmt.Errorf("control has no services hash for %s", host)
				}
				return nil
			}); err != nil {
				t.Fatal(err)
			}
			n.Close(context.Background())
			if h := hash(); h != "" {
				t.Errorf("after Close control still has services hash %q: the service was not withdrawn", h)
			}
			if !strings.Contains(l.logs.String(), "withdrew svc:web") {
				t.Errorf("no withdrawal in the node log")
			}
		})
	}
}

// TestServiceNeedsGrantedTags: a service backend without tags, or whose
// tags control does not grant (testcontrol grants none without tag owners),
// fails to start with an error saying which.
func TestServiceNeedsGrantedTags(t *testing.T) {
	l := newLab(t)
	for _, tc := range []struct {
		host string
		tags []string
		kind error
		want string
	}{
		{"untagged", nil, ErrUntaggedService, "tagged node"},
		{"notgranted", []string{"tag:web"}, ErrTagsNotGranted, "tagOwners"},
	} {
		cfg := l.config(tc.host)
		cfg.Tags = tc.tags
		cfg.Serve = nodespec.Serve{Endpoints: []nodespec.ServeEndpoint{{Port: 80, Proto: nodespec.ProtoHTTP, Target: 8080, Path: "/"}}, Service: "svc:web"}
		ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
		n, err := Start(ctx, cfg)
		cancel()
		if err == nil {
			n.Close(context.Background())
			t.Errorf("%s: Start succeeded", tc.host)
			continue
		}
		if !errors.Is(err, tc.kind) || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%s: error %q, want %v mentioning %q", tc.host, err, tc.kind, tc.want)
		}
	}
}

// bannerServer speaks first ("banner\n"), reads what the client sends until
// its EOF, waits a moment, answers "reply:<what it read>" and closes: a
// status port, or an SSH/SMTP greeting followed by a reply.
func bannerServer(ln net.Listener) {
	serveConns(ln, func(c net.Conn) {
		io.WriteString(c, "banner\n")
		got, _ := io.ReadAll(c)
		time.Sleep(200 * time.Millisecond)
		fmt.Fprintf(c, "reply:%s", got)
	})
}

// halfCloseExchange dials addr from dial, sends req, closes its sending side
// at once (as `printf req | nc` does) and returns everything it then reads.
func halfCloseExchange(dial func(ctx context.Context, network, addr string) (net.Conn, error), addr, req string) (string, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	c, err := dial(ctx, "tcp", addr)
	if err != nil {
		return "", err
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(5 * time.Second))
	if _, err := io.WriteString(c, req); err != nil {
		return "", err
	}
	if err := c.(interface{ CloseWrite() error }).CloseWrite(); err != nil {
		return "", err
	}
	got, err := io.ReadAll(c)
	return string(got), err
}

func TestServeTCPCarriesHalfClose(t *testing.T) {
	l := newLab(t)
	cfg := l.config("halfclose")
	cfg.Serve = nodespec.Serve{Endpoints: []nodespec.ServeEndpoint{
		{Port: 7000, Proto: nodespec.ProtoTCP, Target: 7001},
		{Port: 80, Proto: nodespec.ProtoHTTP, Target: 8080, Path: "/"},
	}}
	n, ctr := l.startNode(t, cfg)
	loopbackApp(t, ctr)
	go bannerServer(ctr.Listen(t, "tcp", "127.0.0.1:7001"))
	v4, v6 := n.Addrs()
	for _, ip := range []netip.Addr{v4, v6} {
		addr := netip.AddrPortFrom(ip, 7000).String()
		for _, tc := range []struct{ req, want string }{
			{"", "banner\nreply:"},               // nc host 7000 </dev/null
			{"stats\n", "banner\nreply:stats\n"}, // printf 'stats\n' | nc host 7000
		} {
			var got string
			err := waitFor(15*time.Second, func() (err error) {
				got, err = halfCloseExchange(l.laptop.NS.Dial, addr, tc.req)
				if err == nil && got != tc.want {
					err = fmt.Errorf("got %q", got)
				}
				return err
			})
			if err != nil {
				t.Errorf("%s, send %q then half-close: %v, want %q", addr, tc.req, err, tc.want)
			}
		}
	}
	// The http path stays on tailscale's serve proxy, whose Go HTTP server
	// cancels a request when the client's side closes: the README's known
	// limitation. If this starts answering 200, update the README.
	got, err := halfCloseExchange(l.laptop.NS.Dial, netip.AddrPortFrom(v4, 80).String(), "GET /hc HTTP/1.1\r\nHost: "+v4.String()+"\r\nConnection: close\r\n\r\n")
	if !strings.HasPrefix(got, "HTTP/1.1 502 ") {
		t.Errorf("http request then half-close: %q, %v; want the documented 502", got, err)
	}
}

// TestServeTCPCarriesBulkBothWays: 16 MiB each way through TCP serve relays,
// whose tailnet side is tsnet's netstack: its segmentation-offloaded
// packets must fit wireguard-go's capped batch (docs/wireguard-go-patch.md).
func TestServeTCPCarriesBulkBothWays(t *testing.T) {
	l := newLab(t)
	cfg := l.config("bulk")
	cfg.Serve = nodespec.Serve{Endpoints: []nodespec.ServeEndpoint{
		{Port: 7100, Proto: nodespec.ProtoTCP, Target: 7101},
		{Port: 7102, Proto: nodespec.ProtoTCP, Target: 7103},
	}}
	n, ctr := l.startNode(t, cfg)
	data := make([]byte, 16<<20)
	rand.Read(data)
	want := sha256.Sum256(data)
	go serveConns(ctr.Listen(t, "tcp", "127.0.0.1:7101"), func(c net.Conn) {
		h := sha256.New()
		io.Copy(h, c)
		c.Write(h.Sum(nil))
	})
	go serveConns(ctr.Listen(t, "tcp", "127.0.0.1:7103"), func(c net.Conn) { c.Write(data) })
	v4, _ := n.Addrs()

	exchange := func(port uint16, send []byte) ([]byte, error) {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		c, err := l.laptop.NS.Dial(ctx, "tcp", netip.AddrPortFrom(v4, port).String())
		if err != nil {
			return nil, err
		}
		defer c.Close()
		c.SetDeadline(time.Now().Add(60 * time.Second))
		if _, err := c.Write(send); err != nil {
			return nil, err
		}
		c.(*net.TCPConn).CloseWrite()
		return io.ReadAll(c)
	}
	var got []byte
	err := waitFor(15*time.Second, func() (err error) {
		got, err = exchange(7100, data)
		if err == nil && !bytes.Equal(got, want[:]) {
			err = fmt.Errorf("the container hashed something else (%d-byte answer)", len(got))
		}
		return err
	})
	if err != nil {
		t.Fatalf("laptop -> serve relay -> container, 16 MiB: %v", err)
	}
	got, err = exchange(7102, nil)
	if err != nil || sha256.Sum256(got) != want {
		t.Fatalf("container -> serve relay -> laptop, 16 MiB: got %d bytes (intact: %v), %v", len(got), sha256.Sum256(got) == want, err)
	}
}

// serveConns runs handle on each connection ln accepts, then closes it.
func serveConns(ln net.Listener, handle func(net.Conn)) {
	for {
		c, err := ln.Accept()
		if err != nil {
			return
		}
		go func() {
			defer c.Close()
			handle(c)
		}()
	}
}
