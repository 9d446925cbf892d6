package lvs

import (
	"fmt"
	"net"
	"net/netip"

	"github.com/moby/ipvs"
	"golang.org/x/sys/unix"
)

// IPVS is the real Kernel: the IPVS table of one network namespace, read
// through moby/ipvs and written in batches over lvsha's own generic netlink
// socket. Like the handles under it, it must be used by one goroutine at a
// time.
type IPVS struct {
	r     Reader
	w     *genlWriter
	close func()
}

// OpenIPVS opens the IPVS table of the network namespace at nsPath (e.g.
// /var/run/netns/NAME or /proc/PID/ns/net); "" is the caller's namespace.
func OpenIPVS(nsPath string) (*IPVS, error) {
	h, err := ipvs.New(nsPath)
	if err != nil {
		return nil, fmt.Errorf("lvs: open ipvs (is the ip_vs module loaded?): %w", err)
	}
	sock, err := openSocket(nsPath)
	if err != nil {
		h.Close()
		return nil, fmt.Errorf("lvs: open ipvs: %w", err)
	}
	k, err := NewIPVS(mobyReader{h}, sock)
	if err != nil {
		h.Close()
		sock.close()
		return nil, fmt.Errorf("lvs: open ipvs: %w", err)
	}
	k.close = func() { h.Close(); sock.close() }
	return k, nil
}

// NewIPVS returns the kernel that reads the table through r and writes to
// it over sock, a generic netlink socket on which it first looks up the
// IPVS family. OpenIPVS passes moby/ipvs and a real socket; lvstest passes
// its in-memory table, which decodes what this encodes. The caller keeps
// r and sock and closes them.
func NewIPVS(r Reader, sock Socket) (*IPVS, error) {
	w, err := newGenlWriter(sock)
	if err != nil {
		return nil, err
	}
	return &IPVS{r: r, w: w}, nil
}

// Close releases the netlink sockets OpenIPVS opened.
func (k *IPVS) Close() {
	if k.close != nil {
		k.close()
	}
}

// Services implements Kernel.
func (k *IPVS) Services() ([]KService, error) { return k.r.Services() }

// Destinations implements Kernel.
func (k *IPVS) Destinations(key Key) ([]KDest, error) { return k.r.Destinations(key) }

// Write implements Kernel: up to BatchMax changes per system call instead
// of one round trip each.
func (k *IPVS) Write(cs []Change) []error { return k.w.write(cs) }

func family(a netip.Addr) uint16 {
	if a.Is4() {
		return unix.AF_INET
	}
	return unix.AF_INET6
}

func keyFamily(k Key) uint16 {
	if k.IPv6() {
		return unix.AF_INET6
	}
	return unix.AF_INET
}

// netmask is the service's netmask attribute, which persistence applies
// to client addresses: one client per entry. For IPv6 the kernel wants a
// prefix length (anything but 128 is EINVAL here), for IPv4 a mask.
func netmask(k Key) uint32 {
	if k.IPv6() {
		return 128
	}
	return 0xFFFFFFFF
}

// ipvsKey is the moby/ipvs form of a service key, to list its real servers.
func ipvsKey(k Key) *ipvs.Service {
	svc := &ipvs.Service{AddressFamily: keyFamily(k), Netmask: netmask(k)}
	if k.FWMark != 0 {
		svc.FWMark = k.FWMark
		return svc
	}
	a := k.Addr.Addr()
	svc.Address = net.IP(a.AsSlice())
	svc.Port = k.Addr.Port()
	svc.Protocol = unix.IPPROTO_TCP
	if k.Proto == UDP {
		svc.Protocol = unix.IPPROTO_UDP
	}
	return svc
}

func fromIPVSService(s *ipvs.Service) (KService, bool) {
	ks := KService{Scheduler: s.SchedName, Stats: Stats{
		Conns: s.Stats.Connections, PacketsIn: s.Stats.PacketsIn, PacketsOut: s.Stats.PacketsOut,
		BytesIn: s.Stats.BytesIn, BytesOut: s.Stats.BytesOut,
	}}
	if s.Flags&flagPersistent != 0 {
		ks.Timeout = s.Timeout
	}
	ks.SchedFlags = s.Flags & schedFlagsMask
	if s.FWMark != 0 {
		ks.Key.FWMark, ks.Key.FWMark6 = s.FWMark, s.AddressFamily == unix.AF_INET6
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

// mobyReader is the real Reader.
type mobyReader struct{ h *ipvs.Handle }

// Services implements Reader. Services of protocols lvsha does not manage
// (SCTP) are left out.
func (k mobyReader) Services() ([]KService, error) {
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

// Destinations implements Reader.
func (k mobyReader) Destinations(key Key) ([]KDest, error) {
	ds, err := k.h.GetDestinations(ipvsKey(key))
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

// Counting wraps a Kernel and counts its calls: Reads are list requests,
// Writes the changes written (each one netlink request) and Batches the
// Write calls.
type Counting struct {
	Kernel
	Reads, Writes, Batches int
}

// Write implements Kernel.
func (c *Counting) Write(cs []Change) []error {
	c.Writes += len(cs)
	c.Batches++
	return c.Kernel.Write(cs)
}

// Services implements Kernel.
func (c *Counting) Services() ([]KService, error) { c.Reads++; return c.Kernel.Services() }

// Destinations implements Kernel.
func (c *Counting) Destinations(k Key) ([]KDest, error) {
	c.Reads++
	return c.Kernel.Destinations(k)
}
