package director

import (
	"bytes"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"slices"
	"time"

	"github.com/mdlayher/arp"
	"github.com/mdlayher/ethernet"
	"github.com/vishvananda/netlink"
)

// ARP-leak detection (README, "ARP-leak detection"): a DR real server must
// hold the VIP on lo without answering ARP for it. One that answers (its
// arp_ignore left at 0) competes with the master for the clients' and the
// router's ARP caches, and whoever it wins sends its traffic to that one
// server, past the director. The master asks who has the VIP, as a client
// would, and every answer from a MAC that is not its own is such a leak.

// arpLeak is one host that answered ARP for a VIP.
type arpLeak struct {
	VIP netip.Addr
	MAC net.HardwareAddr
	// IP is the host's address by the master's neighbour table (the MAC's
	// entry); invalid when the table has none.
	IP netip.Addr
}

// probeARP asks, on ifname, who has vip, and returns every host other than
// this one that answered within wait. The request is sent from the
// interface's own address (not the VIP): it must not move anyone's ARP
// entry for the VIP.
func probeARP(ifname string, vip netip.Addr, wait time.Duration) ([]arpLeak, error) {
	ifi, err := net.InterfaceByName(ifname)
	if err != nil {
		return nil, fmt.Errorf("arp probe: %w", err)
	}
	src, err := ownAddr(ifi, vip)
	if err != nil {
		return nil, err
	}
	c, err := arp.Dial(ifi)
	if err != nil {
		return nil, fmt.Errorf("arp probe on %s: %w", ifname, err)
	}
	defer c.Close()
	p, err := arp.NewPacket(arp.OperationRequest, ifi.HardwareAddr, src, ethernet.Broadcast, vip)
	if err != nil {
		return nil, fmt.Errorf("arp probe for %s: %w", vip, err)
	}
	if err := c.SetReadDeadline(time.Now().Add(wait)); err != nil {
		return nil, fmt.Errorf("arp probe: %w", err)
	}
	if err := c.WriteTo(p, ethernet.Broadcast); err != nil {
		return nil, fmt.Errorf("arp probe for %s on %s: %w", vip, ifname, err)
	}
	var out []arpLeak
	for {
		r, _, err := c.Read()
		if errors.Is(err, os.ErrDeadlineExceeded) {
			break
		}
		if err != nil {
			var ne net.Error
			if errors.As(err, &ne) && ne.Timeout() {
				break
			}
			// A malformed frame on the wire is no reason to stop listening.
			continue
		}
		if r.Operation != arp.OperationReply || r.SenderIP != vip || bytes.Equal(r.SenderHardwareAddr, ifi.HardwareAddr) ||
			slices.ContainsFunc(out, func(l arpLeak) bool { return bytes.Equal(l.MAC, r.SenderHardwareAddr) }) {
			continue
		}
		out = append(out, arpLeak{VIP: vip, MAC: slices.Clone(r.SenderHardwareAddr)})
	}
	if len(out) > 0 {
		nameNeighbours(ifi.Index, vip, out)
	}
	return out, nil
}

// ownAddr is an IPv4 address of ifi other than vip.
func ownAddr(ifi *net.Interface, vip netip.Addr) (netip.Addr, error) {
	addrs, err := ifi.Addrs()
	if err != nil {
		return netip.Addr{}, fmt.Errorf("arp probe: addresses of %s: %w", ifi.Name, err)
	}
	for _, a := range addrs {
		if n, ok := a.(*net.IPNet); ok {
			if ip, ok := netip.AddrFromSlice(n.IP.To4()); ok && ip != vip {
				return ip, nil
			}
		}
	}
	return netip.Addr{}, fmt.Errorf("arp probe: %s has no IPv4 address of its own to ask from", ifi.Name)
}

// nameNeighbours fills in each leak's IP from the neighbour table of the
// interface: the entry with its MAC and an address other than the VIP.
func nameNeighbours(ifindex int, vip netip.Addr, leaks []arpLeak) {
	neighs, err := netlink.NeighList(ifindex, netlink.FAMILY_V4)
	if err != nil && !errors.Is(err, netlink.ErrDumpInterrupted) {
		return
	}
	for i := range leaks {
		for _, n := range neighs {
			ip, ok := netip.AddrFromSlice(n.IP.To4())
			if ok && ip != vip && bytes.Equal(n.HardwareAddr, leaks[i].MAC) {
				leaks[i].IP = ip
				break
			}
		}
	}
}
