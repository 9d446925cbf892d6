package lvs

import (
	"fmt"
	"net"
	"net/netip"

	"github.com/moby/ipvs"
	"golang.org/x/sys/unix"
)

// IPVS is the real Kernel: the IPVS table of one network namespace through
// moby/ipvs (generic netlink). Like the handle under it, it must be used by
// one goroutine at a time.
type IPVS struct {
	h *ipvs.Handle
	w *genlWriter // batched writes (see Write)
}

// OpenIPVS opens the IPVS table of the network namespace at nsPath (e.g.
// /var/run/netns/NAME or /proc/PID/ns/net); "" is the caller's namespace.
func OpenIPVS(nsPath string) (*IPVS, error) {
	h, err := ipvs.New(nsPath)
	if err != nil {
		return nil, fmt.Errorf("lvs: open ipvs (is the ip_vs module loaded?): %w", err)
	}
	w, err := newGenlWriter(nsPath)
	if err != nil {
		h.Close()
		return nil, fmt.Errorf("lvs: open ipvs: %w", err)
	}
	return &IPVS{h: h, w: w}, nil
}

// Close releases the netlink sockets.
func (k *IPVS) Close() {
	k.h.Close()
	k.w.close()
}

// Write implements Batcher: up to 128 changes per system call instead of
// one round trip each.
func (k *IPVS) Write(cs []Change) []error { return k.w.write(cs) }

func family(a netip.Addr) uint16 {
	if a.Is4() {
		return unix.AF_INET
	}
	return unix.AF_INET6
}

func toIPVSService(s KService) *ipvs.Service {
	svc := &ipvs.Service{
		AddressFamily: unix.AF_INET,
		Netmask:       0xFFFFFFFF,
		SchedName:     s.Scheduler,
	}
	if s.Key.FWMark != 0 {
		svc.FWMark = s.Key.FWMark
	} else {
		a := s.Key.Addr.Addr()
		svc.AddressFamily = family(a)
		if a.Is6() {
			svc.Netmask = 128
		}
		svc.Address = net.IP(a.AsSlice())
		svc.Port = s.Key.Addr.Port()
		svc.Protocol = unix.IPPROTO_TCP
		if s.Key.Proto == UDP {
			svc.Protocol = unix.IPPROTO_UDP
		}
	}
	if s.Timeout > 0 {
		svc.Flags = flagPersistent
		svc.Timeout = s.Timeout
	}
	return svc
}

func keyOf(k Key) *ipvs.Service { return toIPVSService(KService{Key: k}) }

func fromIPVSService(s *ipvs.Service) (KService, bool) {
	ks := KService{Scheduler: s.SchedName, Stats: Stats{
		Conns: s.Stats.Connections, PacketsIn: s.Stats.PacketsIn, PacketsOut: s.Stats.PacketsOut,
		BytesIn: s.Stats.BytesIn, BytesOut: s.Stats.BytesOut,
	}}
	if s.Flags&flagPersistent != 0 {
		ks.Timeout = s.Timeout
	}
	if s.FWMark != 0 {
		ks.Key.FWMark = s.FWMark
		return ks, true
	}
	a, ok := netip.AddrFromSlice(s.Address)
	if !ok {
		return ks, false
	}
	ks.Key.Addr = netip.AddrPortFrom(a.Unmap(), s.Port)
	switch s.Protocol {
	case unix.IPPROTO_TCP:
		ks.Key.Proto = TCP
	case unix.IPPROTO_UDP:
		ks.Key.Proto = UDP
	default:
		return ks, false // SCTP: not ours, never touched
	}
	return ks, true
}

// Kernel forwarding values (IP_VS_CONN_F_*) for each Forwarding.
var fwdFlags = [...]uint32{DR: ipvs.ConnectionFlagDirectRoute, NAT: ipvs.ConnectionFlagMasq, Tunnel: ipvs.ConnectionFlagTunnel}

func toIPVSDest(d KDest) *ipvs.Destination {
	a := d.Addr.Addr()
	return &ipvs.Destination{
		AddressFamily: family(a),
		Address:       net.IP(a.AsSlice()),
		Port:          d.Addr.Port(),
		Weight:        d.Weight,
		// moby/ipvs writes every field on update: the forwarding flag must
		// be passed each time or a DR destination silently becomes NAT.
		ConnectionFlags: fwdFlags[d.Forwarding],
	}
}

// Services implements Kernel. Services of protocols lvsha does not manage
// (SCTP) are left out.
func (k *IPVS) Services() ([]KService, error) {
	svcs, err := k.h.GetServices()
	if err != nil {
		return nil, err
	}
	out := make([]KService, 0, len(svcs))
	for _, s := range svcs {
		if ks, ok := fromIPVSService(s); ok {
			out = append(out, ks)
		}
	}
	return out, nil
}

// Destinations implements Kernel.
func (k *IPVS) Destinations(key Key) ([]KDest, error) {
	ds, err := k.h.GetDestinations(keyOf(key))
	if err != nil {
		return nil, err
	}
	out := make([]KDest, 0, len(ds))
	for _, d := range ds {
		a, ok := netip.AddrFromSlice(d.Address)
		if !ok {
			continue
		}
		kd := KDest{
			Addr: netip.AddrPortFrom(a.Unmap(), d.Port), Weight: d.Weight,
			ActiveConns: d.ActiveConnections, InactConns: d.InactiveConnections,
			Stats: Stats{Conns: d.Stats.Connections, PacketsIn: d.Stats.PacketsIn, PacketsOut: d.Stats.PacketsOut,
				BytesIn: d.Stats.BytesIn, BytesOut: d.Stats.BytesOut},
		}
		switch d.ConnectionFlags & ipvs.ConnectionFlagFwdMask {
		case ipvs.ConnectionFlagMasq:
			kd.Forwarding = NAT
		case ipvs.ConnectionFlagTunnel:
			kd.Forwarding = Tunnel
		case ipvs.ConnectionFlagDirectRoute:
			kd.Forwarding = DR
		default:
			// Local node: never what we write, so a difference the
			// reconciler will repair.
			kd.Forwarding = Forwarding(255)
		}
		out = append(out, kd)
	}
	return out, nil
}

// NewService implements Kernel.
func (k *IPVS) NewService(s KService) error { return k.h.NewService(toIPVSService(s)) }

// UpdateService implements Kernel.
func (k *IPVS) UpdateService(s KService) error { return k.h.UpdateService(toIPVSService(s)) }

// DelService implements Kernel.
func (k *IPVS) DelService(key Key) error { return k.h.DelService(keyOf(key)) }

// NewDestination implements Kernel.
func (k *IPVS) NewDestination(key Key, d KDest) error {
	return k.h.NewDestination(keyOf(key), toIPVSDest(d))
}

// UpdateDestination implements Kernel.
func (k *IPVS) UpdateDestination(key Key, d KDest) error {
	return k.h.UpdateDestination(keyOf(key), toIPVSDest(d))
}

// DelDestination implements Kernel.
func (k *IPVS) DelDestination(key Key, a netip.AddrPort) error {
	return k.h.DelDestination(keyOf(key), toIPVSDest(KDest{Addr: a}))
}

// Counting wraps a Kernel and counts its calls: each is one netlink request
// (Batches counts the Write calls, whose changes count as Writes).
type Counting struct {
	Kernel
	Reads, Writes, Batches int
}

// Write implements Batcher, batching if the wrapped kernel does.
func (c *Counting) Write(cs []Change) []error {
	c.Writes += len(cs)
	c.Batches++
	if b, ok := c.Kernel.(Batcher); ok {
		return b.Write(cs)
	}
	return writeEach(c.Kernel, cs)
}

// Services implements Kernel.
func (c *Counting) Services() ([]KService, error) { c.Reads++; return c.Kernel.Services() }

// Destinations implements Kernel.
func (c *Counting) Destinations(k Key) ([]KDest, error) {
	c.Reads++
	return c.Kernel.Destinations(k)
}

// NewService implements Kernel.
func (c *Counting) NewService(s KService) error { c.Writes++; return c.Kernel.NewService(s) }

// UpdateService implements Kernel.
func (c *Counting) UpdateService(s KService) error { c.Writes++; return c.Kernel.UpdateService(s) }

// DelService implements Kernel.
func (c *Counting) DelService(k Key) error { c.Writes++; return c.Kernel.DelService(k) }

// NewDestination implements Kernel.
func (c *Counting) NewDestination(k Key, d KDest) error {
	c.Writes++
	return c.Kernel.NewDestination(k, d)
}

// UpdateDestination implements Kernel.
func (c *Counting) UpdateDestination(k Key, d KDest) error {
	c.Writes++
	return c.Kernel.UpdateDestination(k, d)
}

// DelDestination implements Kernel.
func (c *Counting) DelDestination(k Key, a netip.AddrPort) error {
	c.Writes++
	return c.Kernel.DelDestination(k, a)
}
