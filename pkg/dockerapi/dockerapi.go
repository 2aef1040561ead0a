// Package dockerapi is tslink's only user of the Docker Engine API. It finds
// the container behind an endpoint without ContainerInspect, which blocks
// while dockerd holds the container's lock during CreateEndpoint/Join (a
// known deadlock class of network plugins): NetworkInspect lists the
// endpoint with its container's ID, and ContainerList filtered by that ID
// returns the labels.
package dockerapi

import (
	"context"
	"fmt"
	"net"
	"net/url"
	"regexp"
	"strings"
	"time"

	cerrdefs "github.com/containerd/errdefs"
	"github.com/docker/docker/api/types/container"
	"github.com/docker/docker/api/types/filters"
	"github.com/docker/docker/api/types/network"
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

// Endpoint is what Docker knows of an endpoint's container.
type Endpoint struct {
	ContainerID   string
	ContainerName string // without the leading "/"
	Labels        map[string]string
}

// NetworkOptions returns a network's driver options (--opt), as dockerd
// stores them. tslink re-reads the auth key from here instead of storing it.
func (c *Client) NetworkOptions(ctx context.Context, networkID string) (map[string]string, error) {
	nw, err := c.c.NetworkInspect(ctx, networkID, network.InspectOptions{})
	if err != nil {
		return nil, fmt.Errorf("inspecting network %.12s: %w", networkID, err)
	}
	return nw.Options, nil
}

// FindEndpoint returns the container of endpointID on networkID, polling
// (every 20 ms, bounded by ctx) until NetworkInspect lists it.
func (c *Client) FindEndpoint(ctx context.Context, networkID, endpointID string) (*Endpoint, error) {
	for {
		nw, err := c.c.NetworkInspect(ctx, networkID, network.InspectOptions{})
		if err != nil {
			return nil, fmt.Errorf("inspecting network %.12s: %w", networkID, err)
		}
		for id, ep := range nw.Containers {
			if ep.EndpointID != endpointID {
				continue
			}
			// libnetwork keys an endpoint whose sandbox it has not linked yet
			// as "ep-<endpoint ID>"; the name is right either way and unique.
			name := strings.TrimPrefix(ep.Name, "/")
			f := filters.NewArgs(filters.Arg("id", id))
			if strings.HasPrefix(id, "ep-") {
				f = filters.NewArgs(filters.Arg("name", "^/"+regexp.QuoteMeta(name)+"$"))
			}
			list, err := c.c.ContainerList(ctx, container.ListOptions{All: true, Filters: f})
			if err != nil {
				return nil, fmt.Errorf("listing container %s: %w", name, err)
			}
			if len(list) != 1 {
				return nil, fmt.Errorf("container %s of endpoint %.12s not found", name, endpointID)
			}
			return &Endpoint{ContainerID: list[0].ID, ContainerName: name, Labels: list[0].Labels}, nil
		}
		select {
		case <-ctx.Done():
			return nil, fmt.Errorf("endpoint %.12s not listed on network %.12s: %w", endpointID, networkID, ctx.Err())
		case <-time.After(20 * time.Millisecond):
		}
	}
}

// ContainerSandbox returns a container's sandbox key (netns path) and
// whether it runs; a container that no longer exists is not running (no
// error). ContainerInspect is safe here, outside CreateEndpoint/Join.
func (c *Client) ContainerSandbox(ctx context.Context, containerID string) (sandboxKey string, running bool, err error) {
	ct, err := c.c.ContainerInspect(ctx, containerID)
	if cerrdefs.IsNotFound(err) {
		return "", false, nil
	}
	if err != nil {
		return "", false, err
	}
	if ct.State == nil || !ct.State.Running || ct.NetworkSettings == nil {
		return "", false, nil
	}
	return ct.NetworkSettings.SandboxKey, true, nil
}
