package e2e

import (
	"context"
	"fmt"
	"io"
	"net"
	"strings"
	"testing"
	"time"

	"github.com/tslink/tslink/test/netnstest"
)

// loopbackApp is a container command serving httpd on the container's
// 127.0.0.1:8080 only (index "hello"), a line echo on 9000, and a one-shot
// request recorder on 8082 writing /tmp/request (busybox nc cannot bind an
// address, so those two listen on all of the container's addresses).
// A status-port-like server on 7001 speaks first ("banner"), reads until the
// client's EOF and then answers "reply:<what it read>".
const loopbackApp = `nc -ll -p 9000 -e cat & nc -l -p 8082 > /tmp/request & ` +
	`nc -ll -p 7001 -e sh -c 'echo banner; r=$(cat); sleep 0.2; echo "reply:$r"' & ` +
	`exec httpd -f -p 127.0.0.1:8080 -h /www`

// laptopHTTP GETs url from the laptop with the given Host header and
// returns "<status> <body start>".
func (l *lab) laptopHTTP(url, host string, timeout time.Duration) (string, error) {
	return l.laptop.NS.HTTPGet(url, host, timeout)
}

func (l *lab) laptopDial(addr string) error {
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Second)
	defer cancel()
	c, err := l.laptop.NS.Dial(ctx, "tcp", addr)
	if err != nil {
		return err
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(3 * time.Second))
	if _, err := c.Write([]byte("ping\n")); err != nil {
		return err
	}
	buf := make([]byte, 5)
	if _, err := c.Read(buf); err != nil {
		return err
	}
	if string(buf) != "ping\n" {
		return fmt.Errorf("echo answered %q", buf)
	}
	return nil
}

// laptopHalfClose dials addr from the laptop, sends req, closes its sending
// side at once (as `printf req | nc host port` does) and returns all it reads.
func (l *lab) laptopHalfClose(addr, req string) (string, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	c, err := l.laptop.NS.Dial(ctx, "tcp", addr)
	if err != nil {
		return "", err
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(5 * time.Second))
	if _, err := io.WriteString(c, req); err != nil {
		return "", err
	}
	if err := c.(*net.TCPConn).CloseWrite(); err != nil {
		return "", err
	}
	got, err := io.ReadAll(c)
	return string(got), err
}

// TestServeLabels: the README's ts.serve.* labels on a container whose app
// listens on its localhost only, reached from the laptop.
func TestServeLabels(t *testing.T) {
	l := newLab(t)
	l.createNetwork("tn")
	l.docker("run", "-d", "--name", "web", "--network", "tn",
		"--label", "ts.serve.80=http:8080",
		"--label", "ts.serve.81=http:8080/app",
		"--label", "ts.serve.82=http:8082",
		"--label", "ts.serve.7000=tcp:9000",
		"--label", "ts.serve.7002=tcp:7001",
		image, "sh", "-c", loopbackApp)
	ip := l.tsIP("web", "-4")
	cases := []struct{ name, url, host, want string }{
		{"http by IP", "http://" + ip + "/", "", "200 hello"},
		{"http by MagicDNS name", "http://" + ip + "/", "web", "200 hello"},
		{"http under a path prefix", "http://" + ip + ":81/app/index.html", "", "200 hello"},
	}
	for _, tc := range cases {
		var got string
		err := netnstest.WaitFor(15*time.Second, func() (err error) {
			got, err = l.laptopHTTP(tc.url, tc.host, 5*time.Second)
			if err == nil && !strings.HasPrefix(got, tc.want) {
				err = fmt.Errorf("got %q, want %q", got, tc.want)
			}
			return err
		})
		if err != nil {
			t.Errorf("%s: GET %s: %v", tc.name, tc.url, err)
		}
	}
	if got, err := l.laptopHTTP("http://"+ip+":81/index.html", "", 5*time.Second); err == nil && strings.HasPrefix(got, "200") {
		t.Errorf("GET outside the /app prefix answered %q", got)
	}
	if err := l.laptopDial(ip + ":7000"); err != nil {
		t.Errorf("tcp serve 7000 -> 127.0.0.1:9000: %v", err)
	}
	// A half-close travels through tcp serve, and the server's side keeps
	// flowing until it closes too.
	for _, tc := range []struct{ req, want string }{
		{"", "banner\nreply:\n"},             // nc host 7002 </dev/null
		{"stats\n", "banner\nreply:stats\n"}, // printf 'stats\n' | nc host 7002
	} {
		if got, err := l.laptopHalfClose(ip+":7002", tc.req); err != nil || got != tc.want {
			t.Errorf("tcp serve 7002, send %q then half-close: %q, %v; want %q", tc.req, got, err, tc.want)
		}
	}
	if got, err := l.laptopHTTP("http://"+ip+":8080/", "", 3*time.Second); err == nil {
		t.Errorf("the container's localhost-only port 8080 answers on its tailnet IP: %q", got)
	}
	// Identity headers, as tailscale serve sets them, reach the app.
	l.laptopHTTP("http://"+ip+":82/whoami", "", 2*time.Second)
	st := l.laptop.Status(t)
	login := st.User[st.Self.UserID].LoginName
	err := netnstest.WaitFor(5*time.Second, func() error {
		req, _ := l.engine.Docker(context.Background(), "exec", "web", "cat", "/tmp/request")
		if !strings.Contains(req, "Tailscale-User-Login: "+login) {
			return fmt.Errorf("request seen by the app lacks Tailscale-User-Login: %s:\n%s", login, req)
		}
		return nil
	})
	if err != nil {
		t.Error(err)
	}
	if status := l.tslinkStatus(); !strings.Contains(status, "80=http:8080,81=http:8080/app,82=http:8082,7000=tcp:9000,7002=tcp:7001") {
		t.Errorf("tslink status lacks the serve endpoints:\n%s", status)
	}
	l.docker("rm", "-f", "web")
	l.docker("network", "rm", "tn")
	l.noLeftovers()
}

// TestServiceAndDirect: ts.direct=true vs false on the same image and
// labels, and the ts.service advertisement reaching control and withdrawn on
// stop (testcontrol does not model Services: the test reads the node's
// Hostinfo.ServicesHash at control).
func TestServiceAndDirect(t *testing.T) {
	l := newLab(t)
	l.control.SetTagOwners(map[string][]string{"tag:web": {"tag:web"}})
	l.createNetwork("tn", "--opt", "ts.ephemeral=false")
	for _, direct := range []string{"true", "false"} {
		name := "svc-direct-" + direct
		l.docker("run", "-d", "--name", name, "--network", "tn",
			"--label", "ts.tags=tag:web",
			"--label", "ts.service=svc:web",
			"--label", "ts.direct="+direct,
			"--label", "ts.serve.7000=tcp:9000",
			image, "sh", "-c", loopbackApp)
		ip := l.tsIP(name, "-4")
		err := netnstest.WaitFor(10*time.Second, func() error { return l.laptopDial(ip + ":7000") })
		if direct == "true" && err != nil {
			t.Errorf("ts.direct=true: %s:7000 on the node's own IP: %v", name, err)
		}
		if direct == "false" && err == nil {
			t.Errorf("ts.direct=false: %s:7000 answers on the node's own IP", name)
		}
		hash := func() string {
			for _, n := range l.control.NodesByHostname(name) {
				return n.ServicesHash
			}
			return ""
		}
		if err := netnstest.WaitFor(10*time.Second, func() error {
			if hash() == "" {
				return fmt.Errorf("%s: control has no service advertisement", name)
			}
			return nil
		}); err != nil {
			t.Error(err)
		}
		l.docker("stop", "-t", "1", name)
		if h := hash(); h != "" {
			t.Errorf("%s: after docker stop control still has services hash %s: not withdrawn", name, h)
		}
		l.docker("rm", name)
	}
	l.docker("network", "rm", "tn")
	l.noLeftovers()
}
