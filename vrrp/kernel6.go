package vrrp

import (
	"fmt"
	"net"
	"net/netip"
	"os"
	"strings"

	"github.com/mdlayher/ndp"
	"golang.org/x/net/ipv6"
	"golang.org/x/sys/unix"
)

// The IPv6 side of the kernel seam: the VRRP socket and the unsolicited
// neighbour advertisements (the counterpart of gratuitous ARP).

// rawConn6 is an IPv6 raw socket for protocol 112 bound to one interface.
// IPv6 raw sockets carry no header: the hop limit and destination of a
// received packet come in control messages (IPV6_RECVHOPLIMIT,
// IPV6_RECVPKTINFO), the source, hop limit 255 and traffic class of a sent
// one go in its own. The kernel is not asked to compute or verify the
// checksum (IPV6_CHECKSUM): it would drop bad ones unseen, and the receive
// checks count them; Marshal computes it.
type rawConn6 struct {
	c       net.PacketConn
	pc      *ipv6.PacketConn
	ifindex int
}

func openRawConn6(ifi *net.Interface, multicast bool) (_ *rawConn6, err error) {
	c, err := net.ListenPacket("ip6:112", "::")
	if err != nil {
		return nil, fmt.Errorf("raw IPv6 socket: %w", err)
	}
	defer func() {
		if err != nil {
			c.Close()
		}
	}()
	sc, err := c.(*net.IPConn).SyscallConn()
	if err != nil {
		return nil, fmt.Errorf("raw IPv6 socket: %w", err)
	}
	var serr error
	if err := sc.Control(func(fd uintptr) { serr = unix.BindToDevice(int(fd), ifi.Name) }); err != nil {
		return nil, fmt.Errorf("raw IPv6 socket: %w", err)
	}
	if serr != nil {
		return nil, fmt.Errorf("raw IPv6 socket: bind to %s: %w", ifi.Name, serr)
	}
	pc := ipv6.NewPacketConn(c)
	if err := pc.SetControlMessage(ipv6.FlagHopLimit|ipv6.FlagDst, true); err != nil {
		return nil, fmt.Errorf("raw IPv6 socket: receive hop limit and destination: %w", err)
	}
	// Hop limit 255 for unicast and multicast, also where a control
	// message does not say it.
	if err := pc.SetHopLimit(255); err != nil {
		return nil, fmt.Errorf("raw IPv6 socket: hop limit: %w", err)
	}
	if err := pc.SetMulticastHopLimit(255); err != nil {
		return nil, fmt.Errorf("raw IPv6 socket: multicast hop limit: %w", err)
	}
	if multicast {
		if err := pc.JoinGroup(ifi, &net.IPAddr{IP: Group6.AsSlice()}); err != nil {
			return nil, fmt.Errorf("join %s on %s: %w", Group6, ifi.Name, err)
		}
		if err := pc.SetMulticastInterface(ifi); err != nil {
			return nil, fmt.Errorf("multicast interface %s: %w", ifi.Name, err)
		}
		if err := pc.SetMulticastLoopback(false); err != nil {
			return nil, fmt.Errorf("multicast loopback: %w", err)
		}
	}
	return &rawConn6{c: c, pc: pc, ifindex: ifi.Index}, nil
}

func (r *rawConn6) ReadAdvert(b []byte) (Packet, error) {
	n, cm, from, err := r.pc.ReadFrom(b)
	if err != nil {
		return Packet{}, err
	}
	p := Packet{Payload: b[:n]}
	if ip, ok := from.(*net.IPAddr); ok {
		// Without its zone: the socket is bound to one interface, and
		// the config's peers have none.
		p.Src, _ = netip.AddrFromSlice(ip.IP)
	}
	// A packet without its control message has hop limit 0 and no
	// destination here: the receive checks refuse it.
	if cm != nil {
		p.TTL = cm.HopLimit
		p.Dst, _ = netip.AddrFromSlice(cm.Dst)
	}
	return p, nil
}

func (r *rawConn6) WriteAdvert(b []byte, src, dst netip.Addr) error {
	cm := &ipv6.ControlMessage{
		TrafficClass: 0xc0, // DSCP CS6 (network control), as keepalived
		HopLimit:     255,
		Src:          src.AsSlice(),
		IfIndex:      r.ifindex,
	}
	if _, err := r.pc.WriteTo(b, cm, &net.IPAddr{IP: dst.AsSlice()}); err != nil {
		return fmt.Errorf("send advert to %s: %w", dst, err)
	}
	return nil
}

func (r *rawConn6) Pending() bool { return pending(r.c) }

func (r *rawConn6) Close() error { return r.pc.Close() }

// allNodes is where unsolicited neighbour advertisements go (RFC 4861 7.2.6).
var allNodes = netip.MustParseAddr("ff02::1")

// naSender sends unsolicited neighbour advertisements with mdlayher/ndp,
// the IPv6 counterpart of arpSender, in keepalived's form.
type naSender struct {
	c   *ndp.Conn
	ifi *net.Interface
}

// openNASender opens an ICMPv6 socket that sends only. It is bound to no
// address: a fresh link-local address is tentative for a while (bind
// refuses it), and each advertisement names its own source, the VIP.
func openNASender(ifi *net.Interface) (*naSender, error) {
	c, _, err := ndp.Listen(ifi, ndp.Unspecified)
	if err != nil {
		return nil, fmt.Errorf("icmpv6 socket on %s: %w", ifi.Name, err)
	}
	// Nothing is read from it: let no message queue up.
	var f ipv6.ICMPFilter
	f.SetAll(true)
	if err := c.SetICMPFilter(&f); err != nil {
		c.Close()
		return nil, fmt.Errorf("icmpv6 socket on %s: filter: %w", ifi.Name, err)
	}
	return &naSender{c: c, ifi: ifi}, nil
}

// unsolicitedNA is the advertisement of vip at hw (RFC 4861 4.4, 7.2.6):
// Override set so that caches take the new MAC, Solicited clear, Router
// set only if the node forwards on the interface (a host's NA with R=1
// would make its neighbours take it for a router), and the target's
// link-layer address option.
func unsolicitedNA(vip netip.Addr, hw net.HardwareAddr, router bool) *ndp.NeighborAdvertisement {
	return &ndp.NeighborAdvertisement{
		Router:        router,
		Override:      true,
		TargetAddress: vip,
		Options:       []ndp.Option{&ndp.LinkLayerAddress{Direction: ndp.Target, Addr: hw}},
	}
}

// GARP sends the advertisement for vip from vip itself (as keepalived),
// to all nodes, with hop limit 255 (receivers drop NAs with less).
func (s *naSender) GARP(vip netip.Addr) error {
	cm := &ipv6.ControlMessage{HopLimit: ndp.HopLimit, Src: vip.AsSlice(), IfIndex: s.ifi.Index}
	if err := s.c.WriteTo(unsolicitedNA(vip, s.ifi.HardwareAddr, forwarding(s.ifi.Name)), cm, allNodes); err != nil {
		return fmt.Errorf("neighbour advertisement for %s: %w", vip, err)
	}
	return nil
}

func (s *naSender) Close() error { return s.c.Close() }

// forwarding reports whether IPv6 forwarding is on for the interface; read
// at each advertisement, so that turning it on or off takes effect.
func forwarding(ifname string) bool {
	b, err := os.ReadFile("/proc/sys/net/ipv6/conf/" + ifname + "/forwarding")
	return err == nil && strings.TrimSpace(string(b)) == "1"
}
