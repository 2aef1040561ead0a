// Package dockerapi is tslink's only user of the Docker Engine API. No
// plugin call may wait on the API (dockerd serves none while it restores
// its containers, and calls plugins meanwhile), so what a Join needs comes
// from the engine's on-disk state (package enginestate); the API serves
// pings and, on demand long after Join, the exec sessions of ts.ssh
// ([Client.Execer]).
package dockerapi

import (
	"context"
	"fmt"
	"net"
	"net/url"

	"github.com/docker/docker/client"
	"github.com/tslink/tslink/pkg/hostpath"
)

// Client talks to dockerd. It negotiates the API version (Debian's dockerd
// 20.10 speaks 1.41).
type Client struct {
	c *client.Client
}

// DefaultHost is dockerd's default API socket.
const DefaultHost = "unix:///var/run/docker.sock"

// New returns a client for host ("unix:///path"). A unix socket path is
// resolved as dockerd sees it at every dial ([hostpath.Resolve]), so the
// client keeps working after dockerd restarts and re-creates its socket.
func New(host string) (*Client, error) {
	if host == "" {
		host = DefaultHost
	}
	u, err := url.Parse(host)
	if err != nil || u.Scheme != "unix" {
		return nil, fmt.Errorf("DOCKER_HOST %q: want unix:///path/to/docker.sock", host)
	}
	sock := u.Path
	dial := func(ctx context.Context, _, _ string) (net.Conn, error) {
		p, err := hostpath.Resolve(sock)
		if err != nil {
			return nil, err
		}
		var d net.Dialer
		return d.DialContext(ctx, "unix", p)
	}
	c, err := client.NewClientWithOpts(client.WithHost(host), client.WithDialContext(dial), client.WithAPIVersionNegotiation())
	if err != nil {
		return nil, fmt.Errorf("creating Docker client: %w", err)
	}
	return &Client{c: c}, nil
}

// Close releases the client's connections.
func (c *Client) Close() error { return c.c.Close() }

// Ping asks dockerd whether it serves its API: during its start-up dockerd
// accepts connections before it restores its containers but answers them
// only afterwards, so a ping then ends with ctx.
func (c *Client) Ping(ctx context.Context) error {
	_, err := c.c.Ping(ctx)
	return err
}
