package e2e

import (
	"context"
	"os/exec"
	"path/filepath"

	"fmt"
	"github.com/tslink/tslink/test/enginetest"
	"net"
)

// httpGetIn fetches http://host:port/ from inside a container with busybox
// nc (Debian's static busybox wget crashes).
func (l *lab) httpGetIn(ctr, host, port string) (string, error) {
	return l.engine.Docker(context.Background(), "exec", ctr, "sh", "-c",
		fmt.Sprintf("printf 'GET / HTTP/1.0\\r\\nHost: %s\\r\\n\\r\\n' | nc -w 5 %s %s", host, host, port))
}

func serveHello(ln net.Listener, msg string) {
	for {
		c, err := ln.Accept()
		if err != nil {
			return
		}
		fmt.Fprintf(c, "HTTP/1.0 200 OK\r\nContent-Length: %d\r\n\r\n%s\n", len(msg)+1, msg)
		c.Close()
	}
}

// tslinkStatus runs `tslink status` from the plugin bundle against this
// engine's state dir and returns its output (stdout and stderr).
func (l *lab) tslinkStatus() string {
	bin := filepath.Join(enginetest.PluginBundle(l.t), "rootfs", "tslink")
	out, _ := exec.Command(bin, "status", "--state-dir", l.engine.StateDir()).CombinedOutput()
	return string(out)
}
