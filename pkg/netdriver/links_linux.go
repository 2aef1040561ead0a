package netdriver

import (
	"errors"
	"fmt"

	"github.com/vishvananda/netlink"
)

// Device names derive from Docker's IDs so every step, and a restarted
// plugin, finds them without in-memory state. Each is 15 bytes (IFNAMSIZ).
func bridgeName(networkID string) string    { return "tsb" + short(networkID) }
func hostVethName(endpointID string) string { return "tsv" + short(endpointID) }
func ctrVethName(endpointID string) string  { return "tsc" + short(endpointID) }

func short(id string) string {
	if len(id) > 12 {
		return id[:12]
	}
	return id
}

func isNotFound(err error) bool {
	var nf netlink.LinkNotFoundError
	return errors.As(err, &nf)
}

// ensureBridge creates the network's bridge, up, if it does not exist. The
// bridge carries eth0 traffic between containers of the network; it has no
// address, so the host is not on the network.
func ensureBridge(name string) error {
	if _, err := netlink.LinkByName(name); err == nil {
		return nil
	} else if !isNotFound(err) {
		return fmt.Errorf("looking up bridge %s: %w", name, err)
	}
	br := &netlink.Bridge{LinkAttrs: netlink.LinkAttrs{Name: name}}
	if err := netlink.LinkAdd(br); err != nil {
		return fmt.Errorf("creating bridge %s: %w", name, err)
	}
	if err := netlink.LinkSetUp(br); err != nil {
		netlink.LinkDel(br)
		return fmt.Errorf("setting bridge %s up: %w", name, err)
	}
	return nil
}

// createVeth creates the endpoint's veth pair, the host end enslaved to
// bridge and up. Docker moves the other end into the sandbox as eth<N>.
func createVeth(endpointID, bridge string) error {
	br, err := netlink.LinkByName(bridge)
	if err != nil {
		return fmt.Errorf("looking up bridge %s: %w", bridge, err)
	}
	veth := &netlink.Veth{
		LinkAttrs: netlink.LinkAttrs{Name: hostVethName(endpointID), MasterIndex: br.Attrs().Index},
		PeerName:  ctrVethName(endpointID),
	}
	if err := netlink.LinkAdd(veth); err != nil {
		return fmt.Errorf("creating veth %s: %w", veth.Name, err)
	}
	if err := netlink.LinkSetUp(veth); err != nil {
		netlink.LinkDel(veth)
		return fmt.Errorf("setting veth %s up: %w", veth.Name, err)
	}
	return nil
}

// deleteLink deletes a host-netns link; a missing link is success.
func deleteLink(name string) error {
	l, err := netlink.LinkByName(name)
	if err != nil {
		if isNotFound(err) {
			return nil
		}
		return fmt.Errorf("looking up %s: %w", name, err)
	}
	if err := netlink.LinkDel(l); err != nil && !isNotFound(err) {
		return fmt.Errorf("deleting %s: %w", name, err)
	}
	return nil
}
