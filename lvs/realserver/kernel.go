package realserver

import (
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"strings"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
)

// Addr is one address on one interface.
type Addr struct {
	Interface string
	Prefix    netip.Prefix
	// HostScope is true for scope host (RT_SCOPE_HOST), the scope Up gives a
	// VIP so the kernel never picks it as a source address for other traffic.
	HostScope bool
	// Label is the address label ("lo:vip"); "" is the default, the
	// interface's name.
	Label string
	// Flags are the IFA_F_* flags an administrator can set (noprefixroute,
	// ...), without those the kernel derives itself (secondary, permanent,
	// deprecated).
	Flags uint32
}

// Addresses is the part of the kernel that holds interface addresses.
type Addresses interface {
	// Addrs lists every address, IPv4 and IPv6, on every interface.
	Addrs() ([]Addr, error)
	// AddAddr adds a. An address with a's prefix already on the interface
	// keeps its scope, label and flags: the kernel's replace changes none
	// of them.
	AddAddr(a Addr) error
	// DelAddr removes the address with a's prefix from a's interface;
	// removing an absent address is not an error.
	DelAddr(a Addr) error
}

// derivedFlags are the IFA_F_* flags the kernel sets itself (from the order
// of addresses and their lifetimes); they are not part of what an address
// was configured with.
const derivedFlags = unix.IFA_F_SECONDARY | unix.IFA_F_PERMANENT | unix.IFA_F_DEPRECATED

// Sysctls reads and writes kernel parameters. Keys are paths below
// /proc/sys, e.g. "net/ipv4/conf/eth0/arp_ignore".
type Sysctls interface {
	ReadSysctl(key string) (string, error)
	WriteSysctl(key, value string) error
}

// Kernel is everything realserver mode changes on a host.
type Kernel interface {
	Addresses
	Sysctls
}

// Host is the real Kernel: addresses through rtnetlink, sysctls through
// /proc/sys. Both act on the network namespace of the calling process (for
// /proc/sys/net: of the calling thread), so a caller that wants another
// namespace runs the whole process there (`ip netns exec`).
type Host struct {
	h *netlink.Handle
}

var _ Kernel = (*Host)(nil)

// NewHost opens a route netlink socket in the current network namespace.
func NewHost() (*Host, error) {
	// Only NETLINK_ROUTE: the default also opens XFRM/NETFILTER sockets,
	// which fail on kernels without those subsystems.
	h, err := netlink.NewHandle(unix.NETLINK_ROUTE)
	if err != nil {
		return nil, fmt.Errorf("open netlink: %w", err)
	}
	return &Host{h: h}, nil
}

// Close releases the netlink socket.
func (h *Host) Close() error {
	h.h.Close()
	return nil
}

// dumpRetries bounds the retries of a netlink dump that the kernel
// interrupted because the table changed while it was being read.
const dumpRetries = 5

// Addrs lists every address, IPv4 and IPv6, on every interface.
func (h *Host) Addrs() ([]Addr, error) {
	var lastErr error
	for range dumpRetries {
		links, err := h.h.LinkList()
		if errors.Is(err, netlink.ErrDumpInterrupted) {
			lastErr = err
			continue
		}
		if err != nil {
			return nil, fmt.Errorf("list links: %w", err)
		}
		names := make(map[int]string, len(links))
		for _, l := range links {
			names[l.Attrs().Index] = l.Attrs().Name
		}
		addrs, err := h.h.AddrList(nil, netlink.FAMILY_ALL)
		if errors.Is(err, netlink.ErrDumpInterrupted) {
			lastErr = err
			continue
		}
		if err != nil {
			return nil, fmt.Errorf("list addresses: %w", err)
		}
		out := make([]Addr, 0, len(addrs))
		for _, a := range addrs {
			ip, ok := netip.AddrFromSlice(a.IP)
			if !ok {
				continue
			}
			ones, _ := a.Mask.Size()
			name, ok := names[a.LinkIndex]
			if !ok {
				// The link appeared between the two dumps: read again.
				lastErr = fmt.Errorf("address %s on unknown link %d", ip, a.LinkIndex)
				out = nil
				break
			}
			label := a.Label
			if label == name {
				label = ""
			}
			out = append(out, Addr{
				Interface: name,
				Prefix:    netip.PrefixFrom(ip.Unmap(), ones),
				HostScope: a.Scope == unix.RT_SCOPE_HOST,
				Label:     label,
				Flags:     uint32(a.Flags) &^ derivedFlags,
			})
		}
		if out != nil {
			return out, nil
		}
	}
	return nil, fmt.Errorf("list addresses: %w", lastErr)
}

func (h *Host) nlAddr(a Addr) (netlink.Link, *netlink.Addr, error) {
	link, err := h.h.LinkByName(a.Interface)
	if err != nil {
		return nil, nil, fmt.Errorf("interface %s: %w", a.Interface, err)
	}
	ip := a.Prefix.Addr().AsSlice()
	scope := unix.RT_SCOPE_UNIVERSE
	if a.HostScope {
		scope = unix.RT_SCOPE_HOST
	}
	return link, &netlink.Addr{
		IPNet: &net.IPNet{IP: ip, Mask: net.CIDRMask(a.Prefix.Bits(), 8*len(ip))},
		Scope: scope,
		Label: a.Label,
		Flags: int(a.Flags),
	}, nil
}

// AddAddr adds a (idempotent; see Addresses).
func (h *Host) AddAddr(a Addr) error {
	link, na, err := h.nlAddr(a)
	if err != nil {
		return err
	}
	if err := h.h.AddrReplace(link, na); err != nil {
		return fmt.Errorf("add %s to %s: %w", a.Prefix, a.Interface, err)
	}
	return nil
}

// DelAddr removes the address with a's prefix; an address that is not
// there is not an error.
func (h *Host) DelAddr(a Addr) error {
	// By prefix only: the kernel would also match a label, and a's may not
	// be the live address's.
	a.Label, a.Flags = "", 0
	link, na, err := h.nlAddr(a)
	if err != nil {
		return err
	}
	if err := h.h.AddrDel(link, na); err != nil && !errors.Is(err, unix.EADDRNOTAVAIL) {
		return fmt.Errorf("remove %s from %s: %w", a.Prefix, a.Interface, err)
	}
	return nil
}

func sysctlPath(key string) string { return filepath.Join("/proc/sys", filepath.Clean("/"+key)) }

// ReadSysctl reads /proc/sys/KEY without the trailing newline.
func (h *Host) ReadSysctl(key string) (string, error) {
	b, err := os.ReadFile(sysctlPath(key))
	if err != nil {
		return "", fmt.Errorf("read sysctl: %w", err)
	}
	return strings.TrimSpace(string(b)), nil
}

// WriteSysctl writes value to /proc/sys/KEY.
func (h *Host) WriteSysctl(key, value string) error {
	// No O_CREATE: a missing key (unknown interface) must fail, not create.
	f, err := os.OpenFile(sysctlPath(key), os.O_WRONLY|os.O_TRUNC, 0)
	if err != nil {
		return fmt.Errorf("write sysctl: %w", err)
	}
	if _, err := f.WriteString(value + "\n"); err != nil {
		f.Close()
		return fmt.Errorf("write sysctl %s: %w", key, err)
	}
	if err := f.Close(); err != nil {
		return fmt.Errorf("write sysctl %s: %w", key, err)
	}
	return nil
}
