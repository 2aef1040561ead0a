package e2e

import (
	"context"
	"fmt"
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
