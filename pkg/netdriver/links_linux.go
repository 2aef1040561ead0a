package netdriver

import (
	"errors"
	"fmt"

	"github.com/vishvananda/netlink"
)

// Device names derive from Docker's IDs so every step, and a restarted
// plugin, finds them without in-memory state. Each is 15 bytes (IFNAMSIZ).
func parentName(networkID string) string   { return "tsb" + short(networkID) }
func ctrLinkName(endpointID string) string { return "tsc" + short(endpointID) }

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

// ensureParent creates the network's parent device, if it does not exist:
// one end of a veth pair whose both ends are up (a dummy link would do, but
// kernels without the dummy module exist; a veth gives the parent carrier,
// which macvlans follow). Each endpoint's eth0 is a macvlan in bridge mode
// on it: siblings on one parent switch frames to each other inside the
// macvlan driver, so containers of the network reach each other (and by
// name through Docker's DNS) without a Linux bridge. A bridge would put that
// traffic through br_netfilter, where Docker's FORWARD policy DROP (set
// whenever dockerd manages iptables) discards it unless the plugin added
// iptables rules, and the plugin's rootfs has no iptables. The parent has no
// address, so the host is not on the network.
func ensureParent(name string) error {
	if _, err := netlink.LinkByName(name); err == nil {
		return nil
	} else if !isNotFound(err) {
		return fmt.Errorf("looking up %s: %w", name, err)
	}
	parent := &netlink.Veth{LinkAttrs: netlink.LinkAttrs{Name: name}, PeerName: "tsp" + name[3:]}
	if err := netlink.LinkAdd(parent); err != nil {
		return fmt.Errorf("creating network device %s: %w", name, err)
	}
	for _, n := range []string{parent.PeerName, name} {
		l, err := netlink.LinkByName(n)
		if err == nil {
			err = netlink.LinkSetUp(l)
		}
		if err != nil {
			netlink.LinkDel(parent)
			return fmt.Errorf("setting %s up: %w", n, err)
		}
	}
	return nil
}

// createEndpointLink creates the endpoint's macvlan (bridge mode) on the
// network's parent. Docker moves it into the sandbox and renames it eth<N>.
func createEndpointLink(endpointID, parentDev string) error {
	parent, err := netlink.LinkByName(parentDev)
	if err != nil {
		return fmt.Errorf("looking up %s: %w", parentDev, err)
	}
	mv := &netlink.Macvlan{
		LinkAttrs: netlink.LinkAttrs{Name: ctrLinkName(endpointID), ParentIndex: parent.Attrs().Index},
		Mode:      netlink.MACVLAN_MODE_BRIDGE,
	}
	if err := netlink.LinkAdd(mv); err != nil {
		return fmt.Errorf("creating %s: %w", mv.Name, err)
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
