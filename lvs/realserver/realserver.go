// Package realserver makes a host an LVS direct-routing real server: it puts
// each VIP on lo (an IPv4 one as a /32 with host scope, an IPv6 one as a /128
// without duplicate address detection), so the host accepts packets sent to
// the VIP, and, for IPv4 VIPs, sets ARP suppression (arp_ignore,
// arp_announce) so the host never answers ARP for the VIP nor announces it:
// only the director may own the VIP on the wire. IPv6 needs no such setting:
// Linux answers a neighbour solicitation only for the addresses of the
// interface it arrives on. Up applies that and records in a state file exactly
// what it changed; Down undoes exactly that and nothing else; Status
// compares the live host with the config.
package realserver

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"net/netip"
	"path"
	"slices"
	"strconv"
	"strings"

	"golang.org/x/sys/unix"
)

// loopback is where the VIPs go.
const loopback = "lo"

// ErrNoState is returned (wrapped) by Down when there was no state file:
// with no record of what Up changed, Down changed nothing.
var ErrNoState = errors.New("no state file: nothing undone")

// Config is what a real server needs: its VIPs and the client-facing
// interface whose ARP behaviour must be suppressed.
type Config struct {
	VIPs      []netip.Addr
	Interface string
}

// Options carries the environment: where the state lives, the kernel and the
// logger. The zero value means /run/lvsha, the real host in the current
// network namespace and slog.Default().
type Options struct {
	StateDir string
	Kernel   Kernel
	Logger   *slog.Logger
}

// Problem is one way the live host differs from the config, as a sentence,
// e.g. "VIP 192.168.94.200 missing on lo".
type Problem string

// param is one ARP sysctl, the value Up writes and the values that are fine.
type param struct {
	name string
	want int
	ok   func(int) bool
}

// params are the sysctls Up sets, on "all" and on the interface: the kernel
// uses the maximum of the two, so both must be acceptable.
var params = []param{
	// arp_ignore 1, 2, 3 and 8 all refuse ARP for a scope-host address on lo;
	// 4-7 are reserved and the kernel then replies, like 0. Up keeps a
	// stricter value an administrator chose.
	{"arp_ignore", 1, func(v int) bool { return v == 1 || v == 2 || v == 3 || v == 8 }},
	// arp_announce: only 2 (best local source); above 2 the kernel acts as 0.
	{"arp_announce", 2, func(v int) bool { return v == 2 }},
}

func confKey(iface, name string) string { return "net/ipv4/conf/" + iface + "/" + name }

// displayKey writes a /proc/sys path the way sysctl(8) does:
// net/ipv4/conf/eth0.100/arp_ignore is net.ipv4.conf.eth0/100.arp_ignore.
func displayKey(key string) string {
	parts := strings.Split(key, "/")
	for i, p := range parts {
		parts[i] = strings.ReplaceAll(p, ".", "/")
	}
	return strings.Join(parts, ".")
}

// SuppressesARP says whether the config needs ARP suppression: it has an
// IPv4 VIP.
func (c Config) SuppressesARP() bool {
	return slices.ContainsFunc(c.VIPs, func(v netip.Addr) bool { return v.Unmap().Is4() })
}

// sysctlKeys lists the keys Up manages for cfg, in the order it sets them:
// none when every VIP is IPv6.
func (c Config) sysctlKeys() []managed {
	var ks []managed
	if !c.SuppressesARP() {
		return nil
	}
	for _, iface := range []string{"all", c.Interface} {
		for _, p := range params {
			ks = append(ks, managed{confKey(iface, p.name), p})
		}
	}
	return ks
}

// managed is one sysctl key Up manages and its rule.
type managed struct {
	key string
	p   param
}

// Validate says what is wrong with the config, if anything.
func (c Config) Validate() error {
	if err := c.validateVIPs(); err != nil {
		return err
	}
	if len(c.VIPs) == 0 {
		return errors.New("no VIP")
	}
	switch {
	case c.Interface == "":
		return errors.New("no interface")
	case c.Interface == loopback || c.Interface == "all" || c.Interface == "default":
		return fmt.Errorf("interface %q: must be the client-facing interface", c.Interface)
	case len(c.Interface) > 15 || strings.ContainsAny(c.Interface, "/ \t\n") || c.Interface == "." || c.Interface == "..":
		return fmt.Errorf("interface %q: not a valid interface name", c.Interface)
	}
	return nil
}

func (c Config) validateVIPs() error {
	for _, v := range c.VIPs {
		u := v.Unmap()
		switch {
		case !u.IsValid():
			return errors.New("VIP: no address")
		case u.IsUnspecified() || u.IsLoopback() || u.IsMulticast() || u == netip.AddrFrom4([4]byte{255, 255, 255, 255}):
			return fmt.Errorf("VIP %s: not a unicast address", v)
		case u.Is6() && (u.IsLinkLocalUnicast() || u.Zone() != ""):
			return fmt.Errorf("VIP %s: a link-local address cannot be a VIP", v)
		}
	}
	return nil
}

// vips returns the VIPs unmapped, deduplicated and sorted.
func vips(lists ...[]netip.Addr) []netip.Addr {
	var out []netip.Addr
	for _, l := range lists {
		for _, v := range l {
			out = append(out, v.Unmap())
		}
	}
	slices.SortFunc(out, netip.Addr.Compare)
	return slices.Compact(out)
}

// vipAddr is v as Up puts it on lo. IPv6 has no host scope for an address
// (the kernel derives the scope from the address); the host still prefers
// the outgoing interface's own address as a source (RFC 6724 rule 5).
// nodad: an address in duplicate address detection cannot be used, as
// keepalived knows.
func vipAddr(v netip.Addr) Addr {
	if v.Is6() {
		return Addr{Interface: loopback, Prefix: netip.PrefixFrom(v, 128), Flags: unix.IFA_F_NODAD}
	}
	return Addr{Interface: loopback, Prefix: netip.PrefixFrom(v, 32), HostScope: true}
}

// inPlace says whether a VIP found on lo is as Up would leave it: an IPv4
// one needs scope host, an IPv6 one is fine as it is.
func inPlace(a Addr) bool { return a.HostScope || a.Prefix.Addr().Is6() }

// env resolves Options into a kernel, a logger and the state path; done
// closes a kernel it opened.
func (o Options) env() (k Kernel, log *slog.Logger, path string, done func(), err error) {
	log = o.Logger
	if log == nil {
		log = slog.Default()
	}
	log = log.With("component", "realserver")
	if o.Kernel != nil {
		return o.Kernel, log, stateFileIn(o.StateDir), func() {}, nil
	}
	h, err := NewHost()
	if err != nil {
		return nil, nil, "", nil, err
	}
	return h, log, stateFileIn(o.StateDir), func() { h.Close() }, nil
}

// setBy is the value Up writes to key, false for a key Up does not manage.
func setBy(key string) (string, bool) {
	i := slices.IndexFunc(params, func(p param) bool { return p.name == path.Base(key) })
	if i < 0 {
		return "", false
	}
	return strconv.Itoa(params[i].want), true
}

// onLo finds v as a host prefix (/32, /128) on lo.
func onLo(addrs []Addr, v netip.Addr) (Addr, bool) {
	want := netip.PrefixFrom(v, v.BitLen())
	i := slices.IndexFunc(addrs, func(a Addr) bool { return a.Interface == loopback && a.Prefix == want })
	if i < 0 {
		return Addr{}, false
	}
	return addrs[i], true
}

// readInt reads a sysctl as an integer; a missing key of the interface
// means the interface does not exist.
func readInt(k Kernel, key string) (string, int, error) {
	s, err := k.ReadSysctl(key)
	if err != nil {
		return "", 0, fmt.Errorf("read %s: %w", displayKey(key), err)
	}
	n, err := strconv.Atoi(s)
	if err != nil {
		return s, 0, fmt.Errorf("read %s: %q is not a number", displayKey(key), s)
	}
	return s, n, nil
}

// Status compares the live host with cfg and lists every difference; an
// empty list means the host is a correctly configured real server. The
// error is for when the host could not be read at all.
func Status(ctx context.Context, cfg Config, opts Options) ([]Problem, error) {
	if err := cfg.Validate(); err != nil {
		return nil, fmt.Errorf("realserver status: config: %w", err)
	}
	k, _, _, done, err := opts.env()
	if err != nil {
		return nil, fmt.Errorf("realserver status: %w", err)
	}
	defer done()

	addrs, err := k.Addrs()
	if err != nil {
		return nil, fmt.Errorf("realserver status: list addresses: %w", err)
	}
	var ps []Problem
	add := func(format string, args ...any) { ps = append(ps, Problem(fmt.Sprintf(format, args...))) }
	for _, v := range vips(cfg.VIPs) {
		var onLo []Addr
		var elsewhere []string
		for _, a := range addrs {
			if a.Prefix.Addr() != v {
				continue
			}
			if a.Interface == loopback {
				onLo = append(onLo, a)
			} else if !slices.Contains(elsewhere, a.Interface) {
				elsewhere = append(elsewhere, a.Interface)
			}
		}
		i := slices.IndexFunc(onLo, func(a Addr) bool { return a.Prefix.Bits() == v.BitLen() })
		switch {
		case len(onLo) == 0:
			add("VIP %s missing on lo", v)
		case i < 0:
			add("VIP %s on lo is /%d, want /%d", v, onLo[0].Prefix.Bits(), v.BitLen())
		case !inPlace(onLo[i]):
			add("VIP %s on lo has scope global, want host", v)
		}
		for _, ifname := range elsewhere {
			// The host would answer ARP (or neighbour solicitations)
			// for it there and steal the director's traffic.
			add("VIP %s also on %s", v, ifname)
		}
	}
	if err := ctx.Err(); err != nil {
		return nil, fmt.Errorf("realserver status: %w", err)
	}
	for _, kp := range cfg.sysctlKeys() {
		_, n, err := readInt(k, kp.key)
		switch {
		case errors.Is(err, fs.ErrNotExist) && strings.HasPrefix(kp.key, confKey(cfg.Interface, "")):
			p := Problem(fmt.Sprintf("interface %s not found", cfg.Interface))
			if !slices.Contains(ps, p) {
				ps = append(ps, p)
			}
		case err != nil:
			return nil, fmt.Errorf("realserver status: %w", err)
		case !kp.p.ok(n):
			add("%s is %d, want %d", displayKey(kp.key), n, kp.p.want)
		}
	}
	return ps, nil
}
