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

	"github.com/mdlayher/ndp"
	"golang.org/x/net/ipv6"
)

// The IPv6 side of ARP-leak detection. A DR real server holding an IPv6
// VIP on lo never answers for it (Linux answers a neighbour solicitation
// only for addresses of the interface it came in on); one holding it on
// its LAN interface (with nodad, or DAD would have failed it) does, and
// wins clients from the master the way an IPv4 ARP leak does.

// probeVIP asks on ifname who has vip: ARP for IPv4, a neighbour
// solicitation for IPv6.
func probeVIP(ifname string, vip netip.Addr, wait time.Duration) ([]arpLeak, error) {
	if vip.Is4() {
		return probeARP(ifname, vip, wait)
	}
	return probeNDP(ifname, vip, wait)
}

// probeNDP sends a neighbour solicitation for vip to its solicited-node
// group on ifname, from the interface's link-local address (not the VIP: no
// one's entry for the VIP may move), and returns every host other than
// this one whose advertisement for vip came back within wait, by the MAC
// of its target link-layer address option (which an answer to a multicast
// solicitation must carry, RFC 4861 7.2.4).
func probeNDP(ifname string, vip netip.Addr, wait time.Duration) ([]arpLeak, error) {
	ifi, err := net.InterfaceByName(ifname)
	if err != nil {
		return nil, fmt.Errorf("ndp probe: %w", err)
	}
	c, _, err := ndp.Listen(ifi, ndp.LinkLocal)
	if err != nil {
		return nil, fmt.Errorf("ndp probe on %s: %w", ifname, err)
	}
	defer c.Close()
	var f ipv6.ICMPFilter
	f.SetAll(true)
	f.Accept(ipv6.ICMPTypeNeighborAdvertisement)
	if err := c.SetICMPFilter(&f); err != nil {
		return nil, fmt.Errorf("ndp probe on %s: %w", ifname, err)
	}
	group, err := ndp.SolicitedNodeMulticast(vip)
	if err != nil {
		return nil, fmt.Errorf("ndp probe for %s: %w", vip, err)
	}
	ns := &ndp.NeighborSolicitation{TargetAddress: vip,
		Options: []ndp.Option{&ndp.LinkLayerAddress{Direction: ndp.Source, Addr: ifi.HardwareAddr}}}
	if err := c.SetReadDeadline(time.Now().Add(wait)); err != nil {
		return nil, fmt.Errorf("ndp probe: %w", err)
	}
	if err := c.WriteTo(ns, nil, group); err != nil {
		return nil, fmt.Errorf("ndp probe for %s on %s: %w", vip, ifname, err)
	}
	var out []arpLeak
	for {
		m, _, _, err := c.ReadFrom()
		if errors.Is(err, os.ErrDeadlineExceeded) {
			break
		}
		if err != nil {
			var ne net.Error
			if errors.As(err, &ne) && ne.Timeout() {
				break
			}
			continue // a malformed message is no reason to stop listening
		}
		na, ok := m.(*ndp.NeighborAdvertisement)
		if !ok || na.TargetAddress != vip {
			continue
		}
		mac := targetLLA(na)
		if mac == nil || bytes.Equal(mac, ifi.HardwareAddr) ||
			slices.ContainsFunc(out, func(l arpLeak) bool { return bytes.Equal(l.MAC, mac) }) {
			continue
		}
		out = append(out, arpLeak{VIP: vip, MAC: slices.Clone(mac)})
	}
	if len(out) > 0 {
		nameNeighbours(ifi.Index, vip, out)
	}
	slices.SortFunc(out, func(a, b arpLeak) int { return bytes.Compare(a.MAC, b.MAC) })
	return out, nil
}

// targetLLA is the MAC of an advertisement's target link-layer address
// option, nil if it has none.
func targetLLA(na *ndp.NeighborAdvertisement) net.HardwareAddr {
	for _, o := range na.Options {
		if lla, ok := o.(*ndp.LinkLayerAddress); ok && lla.Direction == ndp.Target {
			return lla.Addr
		}
	}
	return nil
}
