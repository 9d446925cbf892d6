package vrrp

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"time"

	"github.com/mdlayher/arp"
	"github.com/mdlayher/ethernet"
	"github.com/vishvananda/netlink"
	"golang.org/x/net/ipv4"
	"golang.org/x/sys/unix"
)

// The driver reaches the kernel only through these small interfaces, so that
// its loop can be tested with in-memory fakes under testing/synctest.

// packetConn sends and receives VRRP messages (IP payloads).
type packetConn interface {
	// ReadAdvert reads one message into b; the Packet's payload is in b.
	ReadAdvert(b []byte) (Packet, error)
	WriteAdvert(b []byte, src, dst netip.Addr) error
	// Pending reports whether a packet waits in the socket, not yet read.
	Pending() bool
	Close() error
}

// addrSet adds and removes addresses on the instance's interface.
type addrSet interface {
	Add(p netip.Prefix) error
	Remove(p netip.Prefix) error // no error if the address is absent
	List() ([]netip.Prefix, error)
}

// garpSender announces one VIP's MAC: a gratuitous ARP for IPv4, an
// unsolicited neighbour advertisement for IPv6.
type garpSender interface {
	GARP(vip netip.Addr) error
	Close() error
}

// linkState is the state of one interface. Index is its ifindex, 0 where
// unknown: an interface deleted and made again has a new one.
type linkState struct {
	Name  string
	Up    bool
	Index int
}

// linkWatcher reports the state of interfaces, from events, not polling.
type linkWatcher interface {
	Up(name string) (bool, error)
	// Watch sends the state of the named interfaces whenever it may have
	// changed, until ctx is done.
	Watch(ctx context.Context, names []string, out chan<- linkState)
}

// kernel bundles the seams of one instance.
type kernel struct {
	conn    packetConn
	addrs   addrSet
	garp    garpSender
	links   linkWatcher
	primary netip.Addr // source address of our adverts
	ifindex int        // of the interface the sockets are bound to; 0 in fakes
	nl      *netlink.Handle
}

func (k *kernel) close() {
	if k.nl != nil {
		k.nl.Close()
	}
	if k.conn != nil {
		k.conn.Close()
	}
	if k.garp != nil {
		k.garp.Close()
	}
}

// openKernel opens the real sockets and netlink handle for cfg in the
// current network namespace.
func openKernel(cfg *Config, log *slog.Logger) (_ *kernel, err error) {
	h, err := netlink.NewHandle(unix.NETLINK_ROUTE) // only ROUTE: XFRM/NETFILTER sockets fail in some kernels
	if err != nil {
		return nil, fmt.Errorf("netlink handle: %w", err)
	}
	link, err := h.LinkByName(cfg.Interface)
	if err != nil {
		h.Close()
		return nil, fmt.Errorf("interface %s: %w", cfg.Interface, err)
	}
	// From here k.close closes h.
	k := &kernel{
		nl:      h,
		ifindex: link.Attrs().Index,
		addrs:   &nlAddrs{h: h, link: link},
		links:   &nlLinks{h: h, log: log, subscribe: netlink.LinkSubscribeWithOptions},
	}
	defer func() {
		if err != nil {
			k.close()
		}
	}()
	// One instance is one address family (Config.Validate): its VIPs'.
	is6 := cfg.VIPs[0].Addr().Is6()
	k.primary = cfg.UnicastSrc
	if !k.primary.IsValid() {
		k.primary, err = primaryAddr(k.addrs, cfg.VIPs, is6)
		if err != nil {
			return nil, fmt.Errorf("interface %s: %w", cfg.Interface, err)
		}
	}
	ifi, err := net.InterfaceByIndex(link.Attrs().Index)
	if err != nil {
		return nil, fmt.Errorf("interface %s: %w", cfg.Interface, err)
	}
	// Each through a variable: a nil *rawConn in k.conn would not be a nil
	// packetConn to k.close, which would call its Close.
	if is6 {
		c6, err := openRawConn6(ifi, len(cfg.UnicastPeers) == 0)
		if err != nil {
			return nil, err
		}
		k.conn = c6
		na, err := openNASender(ifi)
		if err != nil {
			return nil, err
		}
		k.garp = na
		return k, nil
	}
	c4, err := openRawConn(ifi, len(cfg.UnicastPeers) == 0)
	if err != nil {
		return nil, err
	}
	k.conn = c4
	c, err := arp.Dial(ifi)
	if err != nil {
		return nil, fmt.Errorf("arp socket on %s: %w", cfg.Interface, err)
	}
	k.garp = &arpSender{c: c, hw: ifi.HardwareAddr}
	return k, nil
}

// primaryAddr picks the address adverts are sent from: the interface's
// first IPv4 address that is not a VIP, or for IPv6 its link-local address
// (RFC 9568 5.1.2.1: an IPv6 advert's source is link-local).
func primaryAddr(a addrSet, vips []netip.Prefix, is6 bool) (netip.Addr, error) {
	list, err := a.List()
	if err != nil {
		return netip.Addr{}, err
	}
	for _, p := range list {
		ip := p.Addr()
		if isVIP(ip, vips) {
			continue
		}
		if !is6 && ip.Is4() || is6 && ip.Is6() && ip.IsLinkLocalUnicast() {
			return ip, nil
		}
	}
	if is6 {
		return netip.Addr{}, errors.New("no IPv6 link-local address to send adverts from (set unicast_src_ip, or bring the interface up with IPv6 on)")
	}
	return netip.Addr{}, errors.New("no IPv4 address to send adverts from (set unicast_src_ip or add one)")
}

func isVIP(ip netip.Addr, vips []netip.Prefix) bool {
	for _, v := range vips {
		if v.Addr() == ip {
			return true
		}
	}
	return false
}

// rawConn is an IPv4 raw socket for protocol 112 bound to one interface.
// IP_HDRINCL lets us set TTL 255, TOS 0xc0 and the source address ourselves.
type rawConn struct {
	c  net.PacketConn
	rc *ipv4.RawConn
}

func openRawConn(ifi *net.Interface, multicast bool) (_ *rawConn, err error) {
	c, err := net.ListenPacket("ip4:112", "0.0.0.0")
	if err != nil {
		return nil, fmt.Errorf("raw socket: %w", err)
	}
	defer func() {
		if err != nil {
			c.Close()
		}
	}()
	sc, err := c.(*net.IPConn).SyscallConn()
	if err != nil {
		return nil, fmt.Errorf("raw socket: %w", err)
	}
	var serr error
	if err := sc.Control(func(fd uintptr) { serr = unix.BindToDevice(int(fd), ifi.Name) }); err != nil {
		return nil, fmt.Errorf("raw socket: %w", err)
	}
	if serr != nil {
		return nil, fmt.Errorf("raw socket: bind to %s: %w", ifi.Name, serr)
	}
	rc, err := ipv4.NewRawConn(c)
	if err != nil {
		return nil, fmt.Errorf("raw socket: %w", err)
	}
	if multicast {
		if err := rc.JoinGroup(ifi, &net.IPAddr{IP: Group.AsSlice()}); err != nil {
			return nil, fmt.Errorf("join %s on %s: %w", Group, ifi.Name, err)
		}
		if err := rc.SetMulticastInterface(ifi); err != nil {
			return nil, fmt.Errorf("multicast interface %s: %w", ifi.Name, err)
		}
		if err := rc.SetMulticastLoopback(false); err != nil {
			return nil, fmt.Errorf("multicast loopback: %w", err)
		}
	}
	return &rawConn{c: c, rc: rc}, nil
}

func (r *rawConn) ReadAdvert(b []byte) (Packet, error) {
	for {
		h, p, _, err := r.rc.ReadFrom(b)
		if err != nil {
			return Packet{}, err
		}
		if h == nil || h.Protocol != Protocol {
			continue
		}
		src, _ := netip.AddrFromSlice(h.Src.To4())
		dst, _ := netip.AddrFromSlice(h.Dst.To4())
		// The payload is at the start of b, after the header; move it to
		// the front so callers see only the VRRP message.
		n := copy(b, p)
		return Packet{Src: src, Dst: dst, TTL: h.TTL, Payload: b[:n]}, nil
	}
}

func (r *rawConn) WriteAdvert(b []byte, src, dst netip.Addr) error {
	h := &ipv4.Header{
		Version:  ipv4.Version,
		Len:      ipv4.HeaderLen,
		TOS:      0xc0, // DSCP CS6 (network control), as keepalived
		TotalLen: ipv4.HeaderLen + len(b),
		TTL:      255,
		Protocol: Protocol,
		Src:      src.AsSlice(),
		Dst:      dst.AsSlice(),
	}
	if err := r.rc.WriteTo(h, b, nil); err != nil {
		return fmt.Errorf("send advert to %s: %w", dst, err)
	}
	return nil
}

func (r *rawConn) Pending() bool { return pending(r.c) }

// pending reports whether a packet waits unread in the socket of c.
func pending(c net.PacketConn) bool {
	sc, err := c.(*net.IPConn).SyscallConn()
	if err != nil {
		return false
	}
	n := 0
	_ = sc.Control(func(fd uintptr) { n, _ = unix.IoctlGetInt(int(fd), unix.SIOCINQ) })
	return n > 0
}

func (r *rawConn) Close() error { return r.rc.Close() }

// nlAddrs manages addresses with netlink.
type nlAddrs struct {
	h    *netlink.Handle
	link netlink.Link
}

// infiniteLifetime is the kernel's INFINITY_LIFE_TIME.
const infiniteLifetime = 0xFFFFFFFF

func prefixAddr(p netip.Prefix) *netlink.Addr {
	a := &netlink.Addr{IPNet: &net.IPNet{IP: p.Addr().AsSlice(), Mask: net.CIDRMask(p.Bits(), p.Addr().BitLen())}}
	if p.Addr().Is6() {
		// No duplicate address detection, as keepalived: a VIP in DAD
		// is tentative for a second or more, unusable and no source
		// address (its NA could not be sent either), and the backup
		// that just gave it up may still answer for it.
		a.Flags = unix.IFA_F_NODAD
		// Preferred lifetime 0 (deprecated), valid forever: the kernel
		// then never picks the VIP as the source of the director's own
		// connections (RFC 6724 rule 3), as an IPv4 VIP, a secondary
		// address, is never picked. Otherwise the VIP, sharing the /64
		// of the director's own address and added last, wins the tie and
		// the master's health checks leave from the VIP: a DR real
		// server holds it on lo and answers itself, every check fails.
		// Traffic to the VIP is accepted as from any valid address.
		a.PreferedLft, a.ValidLft = 0, infiniteLifetime
	}
	return a
}

func (a *nlAddrs) Add(p netip.Prefix) error {
	if err := a.h.AddrReplace(a.link, prefixAddr(p)); err != nil {
		return fmt.Errorf("add %s to %s: %w", p, a.link.Attrs().Name, err)
	}
	return nil
}

func (a *nlAddrs) Remove(p netip.Prefix) error {
	err := a.h.AddrDel(a.link, prefixAddr(p))
	if err != nil && !errors.Is(err, unix.EADDRNOTAVAIL) {
		return fmt.Errorf("remove %s from %s: %w", p, a.link.Attrs().Name, err)
	}
	return nil
}

func (a *nlAddrs) List() ([]netip.Prefix, error) {
	var list []netlink.Addr
	var err error
	for range 5 {
		list, err = a.h.AddrList(a.link, netlink.FAMILY_ALL)
		if !errors.Is(err, netlink.ErrDumpInterrupted) {
			break
		}
	}
	if err != nil {
		return nil, fmt.Errorf("list addresses of %s: %w", a.link.Attrs().Name, err)
	}
	out := make([]netip.Prefix, 0, len(list))
	for _, ad := range list {
		ip, ok := netip.AddrFromSlice(ad.IP)
		if !ok {
			continue
		}
		ip = ip.Unmap()
		ones, _ := ad.Mask.Size()
		out = append(out, netip.PrefixFrom(ip, ones))
	}
	return out, nil
}

// arpSender sends keepalived-style gratuitous ARPs: requests with sender IP
// = target IP = VIP and broadcast target MAC.
type arpSender struct {
	c  *arp.Client
	hw net.HardwareAddr
}

func (s *arpSender) GARP(vip netip.Addr) error {
	p, err := arp.NewPacket(arp.OperationRequest, s.hw, vip, ethernet.Broadcast, vip)
	if err != nil {
		return fmt.Errorf("gratuitous arp for %s: %w", vip, err)
	}
	if err := s.c.WriteTo(p, ethernet.Broadcast); err != nil {
		return fmt.Errorf("gratuitous arp for %s: %w", vip, err)
	}
	return nil
}

func (s *arpSender) Close() error { return s.c.Close() }

// nlLinks reads link state with netlink and follows it with a subscription.
type nlLinks struct {
	h   *netlink.Handle
	log *slog.Logger
	// subscribe is netlink.LinkSubscribeWithOptions (a seam for tests).
	subscribe func(chan<- netlink.LinkUpdate, <-chan struct{}, netlink.LinkSubscribeOptions) error
}

func linkUp(l netlink.Link) bool {
	a := l.Attrs()
	return a.Flags&net.FlagUp != 0 && (a.OperState == netlink.OperUp || a.OperState == netlink.OperUnknown)
}

func (n *nlLinks) Up(name string) (bool, error) {
	l, err := n.h.LinkByName(name)
	if err != nil {
		var nf netlink.LinkNotFoundError
		if errors.As(err, &nf) {
			return false, nil
		}
		return false, fmt.Errorf("link %s: %w", name, err)
	}
	return linkUp(l), nil
}

func (n *nlLinks) Watch(ctx context.Context, names []string, out chan<- linkState) {
	want := map[string]bool{}
	for _, nm := range names {
		want[nm] = true
	}
	for ctx.Err() == nil {
		ch := make(chan netlink.LinkUpdate, 64)
		done := make(chan struct{})
		err := n.subscribe(ch, done, netlink.LinkSubscribeOptions{
			// ListExisting replays the current state, so nothing is
			// missed between two subscriptions.
			ListExisting:  true,
			ErrorCallback: func(err error) { n.log.Warn("vrrp: link subscription error", "err", err) },
		})
		if err != nil {
			n.log.Warn("vrrp: link subscription failed, retrying", "err", err)
			select {
			case <-ctx.Done():
			case <-time.After(time.Second):
			}
			continue
		}
	recv:
		for {
			select {
			case <-ctx.Done():
				close(done)
				return
			case u, ok := <-ch:
				if !ok {
					// The subscription died (it closes on error): resubscribe.
					close(done)
					break recv
				}
				name := u.Link.Attrs().Name
				if !want[name] {
					continue
				}
				up := u.Header.Type != unix.RTM_DELLINK && linkUp(u.Link)
				select {
				case out <- linkState{Name: name, Up: up, Index: u.Link.Attrs().Index}:
				case <-ctx.Done():
					close(done)
					return
				}
			}
		}
	}
}
