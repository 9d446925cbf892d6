// Package lvs programs the kernel's IPVS table from lvsha's desired state:
// a Reconciler compares the virtual services and real servers it is given
// (weights already combined with health) with what the kernel has and makes
// the minimal set of changes, so unchanged services and real servers keep
// their connections. It owns only the services it was given (or created);
// anything else in the table is never touched. A Loop owns the reconciler
// in one goroutine and periodically repairs drift (someone ran ipvsadm -C).
//
// The kernel sits behind the Kernel interface: read the table, write a list
// of changes. IPVS is the real one (moby/ipvs for reads; writes go in
// batches over lvsha's own generic netlink socket). Unit tests use lvstest,
// which fakes that socket, so they run the same encoding and batching.
package lvs

import (
	"fmt"
	"net/netip"
	"slices"
	"time"
)

// Proto is the transport protocol of an address-based virtual service.
type Proto uint8

// Protocols. A fwmark service has no protocol of its own.
const (
	TCP Proto = iota + 1
	UDP
)

func (p Proto) String() string {
	switch p {
	case TCP:
		return "tcp"
	case UDP:
		return "udp"
	}
	return fmt.Sprintf("proto(%d)", uint8(p))
}

// Key identifies a virtual service: protocol + VIP:port, or a firewall
// mark (then Proto and Addr are zero) of one address family: the kernel
// keeps fwmark 5 for IPv4 and fwmark 5 for IPv6 as two services.
type Key struct {
	Proto  Proto
	Addr   netip.AddrPort
	FWMark uint32
	// FWMark6 makes a fwmark service the IPv6 one; an address-based
	// service has the family of its address.
	FWMark6 bool
}

// IPv6 reports whether the service is an IPv6 one.
func (k Key) IPv6() bool {
	if k.FWMark != 0 {
		return k.FWMark6
	}
	return k.Addr.Addr().Is6()
}

func (k Key) String() string {
	if k.FWMark != 0 {
		if k.FWMark6 {
			return fmt.Sprintf("fwmark6/%d", k.FWMark)
		}
		return fmt.Sprintf("fwmark/%d", k.FWMark)
	}
	return k.Proto.String() + "/" + k.Addr.String()
}

func (k Key) valid() error {
	if k.FWMark != 0 {
		if k.Proto != 0 || k.Addr.IsValid() {
			return fmt.Errorf("service %v: fwmark service with an address", k)
		}
		return nil
	}
	if k.FWMark6 {
		return fmt.Errorf("service %v: FWMark6 without a fwmark", k)
	}
	if a := k.Addr.Addr(); a.Is4In6() || a.Zone() != "" {
		return fmt.Errorf("service %v: an IPv4-mapped or zoned address", k)
	}
	if k.Proto != TCP && k.Proto != UDP {
		return fmt.Errorf("service %v: protocol must be tcp or udp", k)
	}
	if !k.Addr.IsValid() {
		return fmt.Errorf("service %v: no address", k)
	}
	return nil
}

// Forwarding is how IPVS sends packets to a real server. The zero value is
// direct routing, lvsha's default.
type Forwarding uint8

// Forwarding methods.
const (
	DR Forwarding = iota
	NAT
	Tunnel
)

func (f Forwarding) String() string {
	switch f {
	case DR:
		return "dr"
	case NAT:
		return "nat"
	case Tunnel:
		return "tun"
	}
	return fmt.Sprintf("forwarding(%d)", uint8(f))
}

// OnFailure says what happens to a real server that is down. The zero
// value, Inhibit, keeps it with weight 0 so established and persistent
// connections drain; Remove deletes it from the table.
type OnFailure uint8

// Failure handling.
const (
	Inhibit OnFailure = iota
	Remove
)

// Schedulers are the IPVS scheduler names lvsha accepts (twos needs a
// kernel >= 6.7; Debian bookworm's 6.1 rejects it when the service is made).
var Schedulers = []string{"rr", "wrr", "lc", "wlc", "lblc", "lblcr", "dh", "sh", "sed", "nq", "fo", "ovf", "mh", "twos"}

// Real is a real server of a service as the config and health checks see it.
type Real struct {
	Addr   netip.AddrPort
	Weight int
	// Up is the health check verdict.
	Up bool
}

// Service is the desired state of one virtual service.
type Service struct {
	Key         Key
	Scheduler   string
	Forwarding  Forwarding
	Persistence time.Duration // 0: not persistent
	SchedFlags  uint32        // MHFallback, MHPort
	// Quorum: when the sum of the weights of the real servers that are up
	// is below it, the sorry server (if any) replaces the real servers.
	Quorum    int
	Sorry     netip.AddrPort // zero: none
	OnFailure OnFailure
	Reals     []Real
}

// HasQuorum reports whether the real servers that are up weigh at least
// Quorum together.
func (s *Service) HasQuorum() bool {
	live := 0
	for _, rs := range s.Reals {
		if rs.Up {
			live += rs.Weight
		}
	}
	return live >= s.Quorum
}

// validate checks s; seen is scratch space (reused to spare allocations
// on every reload).
func (s *Service) validate(seen map[netip.AddrPort]bool) error {
	clear(seen)
	if err := s.Key.valid(); err != nil {
		return err
	}
	if !slices.Contains(Schedulers, s.Scheduler) {
		return fmt.Errorf("service %v: unknown scheduler %q", s.Key, s.Scheduler)
	}
	if s.Forwarding > Tunnel {
		return fmt.Errorf("service %v: bad forwarding %v", s.Key, s.Forwarding)
	}
	if s.Persistence < 0 || s.Persistence%time.Second != 0 {
		return fmt.Errorf("service %v: persistence %v is not whole seconds", s.Key, s.Persistence)
	}
	if s.Sorry.IsValid() && s.Sorry.Addr().Is6() != s.Key.IPv6() {
		return fmt.Errorf("service %v: sorry server %v is of the other address family", s.Key, s.Sorry)
	}
	for _, r := range s.Reals {
		if !r.Addr.IsValid() {
			return fmt.Errorf("service %v: real server without address", s.Key)
		}
		if seen[r.Addr] {
			return fmt.Errorf("service %v: real server %v listed twice", s.Key, r.Addr)
		}
		seen[r.Addr] = true
		// The kernel mixes families only for tunnels, and the sync
		// daemon not at all.
		if r.Addr.Addr().Is6() != s.Key.IPv6() {
			return fmt.Errorf("service %v: real server %v is of the other address family", s.Key, r.Addr)
		}
		if r.Weight < 0 || r.Weight > 65535 {
			return fmt.Errorf("service %v: real server %v: weight %d out of 0..65535", s.Key, r.Addr, r.Weight)
		}
	}
	return nil
}

// Scheduler flags of a service (IP_VS_SVC_F_SCHED1 and 2, which the mh
// scheduler reads; include/uapi/linux/ip_vs.h, ip_vs_mh.c).
const (
	// MHFallback: a flow whose real server has weight 0 goes to the next
	// one in the Maglev table instead of being dropped.
	MHFallback uint32 = 0x08
	// MHPort: the hash includes the source port, not only the address.
	MHPort uint32 = 0x10
	// schedFlagsMask covers IP_VS_SVC_F_SCHED1-3.
	schedFlagsMask uint32 = 0x38
)

// KService is a virtual service as the kernel holds it.
type KService struct {
	Key       Key
	Scheduler string
	// Timeout is the persistence timeout in seconds; 0 means not persistent.
	Timeout uint32
	// SchedFlags are the scheduler's flags (MHFallback, MHPort).
	SchedFlags uint32
	Stats      Stats
}

// KDest is a real server (destination) as the kernel holds it.
type KDest struct {
	Addr        netip.AddrPort
	Weight      int
	Forwarding  Forwarding
	ActiveConns int
	InactConns  int
	Stats       Stats
}

// Stats are IPVS counters. The kernel's counters lag up to ~2 s.
type Stats struct {
	Conns                 uint32
	PacketsIn, PacketsOut uint32
	BytesIn, BytesOut     uint64
}

// Reader reads the IPVS table of one network namespace; each call is one
// netlink request.
type Reader interface {
	Services() ([]KService, error)
	Destinations(Key) ([]KDest, error)
}

// Kernel is the IPVS table of one network namespace. Implementations need
// not be safe for concurrent use.
type Kernel interface {
	Reader
	// Write makes the changes in order, in as few system calls as it can,
	// and returns one error per change (nil for success). A failed change
	// does not stop the ones after it.
	Write([]Change) []error
}
