// Package realserver makes a host an LVS direct-routing real server: it puts
// each VIP on lo as a /32 with host scope, so the host accepts packets sent
// to the VIP, and sets ARP suppression (arp_ignore, arp_announce) so the host
// never answers ARP for the VIP nor announces it: only the director may own
// the VIP on the wire. Up applies that and remembers the sysctl values it
// found in a state file; Down removes the VIPs and restores those values;
// Status compares the live host with the config.
package realserver

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"maps"
	"net/netip"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
)

// DefaultStateDir is where the state file lives unless Options says otherwise.
const DefaultStateDir = "/run/lvsha"

// loopback is where the VIPs go.
const loopback = "lo"

// ErrNoState is returned (wrapped) by Down when there was no state file, so
// it removed the VIPs but could not restore the sysctls.
var ErrNoState = errors.New("no state file: sysctls not restored")

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

// sysctlKeys lists the keys Up manages for cfg, in the order it sets them.
func (c Config) sysctlKeys() []managed {
	var ks []managed
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
		case !u.Is4():
			return fmt.Errorf("VIP %s: only IPv4 VIPs are supported", v)
		case u.IsUnspecified() || u.IsLoopback() || u.IsMulticast() || u == netip.AddrFrom4([4]byte{255, 255, 255, 255}):
			return fmt.Errorf("VIP %s: not a unicast address", v)
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

func vipAddr(v netip.Addr) Addr {
	return Addr{Interface: loopback, Prefix: netip.PrefixFrom(v, 32), HostScope: true}
}

// env resolves Options into a kernel, a logger and the state path; done
// closes a kernel it opened.
func (o Options) env() (k Kernel, log *slog.Logger, statePath string, done func(), err error) {
	dir := o.StateDir
	if dir == "" {
		dir = DefaultStateDir
	}
	log = o.Logger
	if log == nil {
		log = slog.Default()
	}
	log = log.With("component", "realserver")
	if o.Kernel != nil {
		return o.Kernel, log, filepath.Join(dir, StateFile), func() {}, nil
	}
	h, err := NewHost()
	if err != nil {
		return nil, nil, "", nil, err
	}
	return h, log, filepath.Join(dir, StateFile), func() { h.Close() }, nil
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

// Up configures the host as a real server for cfg. It is idempotent. The
// sysctl values found before the first Up are saved before anything changes
// (a later Up keeps them). If a step fails, Up undoes what it changed and
// returns an error naming the step.
func Up(ctx context.Context, cfg Config, opts Options) (err error) {
	if err := cfg.Validate(); err != nil {
		return fmt.Errorf("realserver up: config: %w", err)
	}
	k, log, statePath, done, err := opts.env()
	if err != nil {
		return fmt.Errorf("realserver up: %w", err)
	}
	defer done()
	unlock, err := lockState(statePath)
	if err != nil {
		return fmt.Errorf("realserver up: state: %w", err)
	}
	defer unlock()

	// undo holds what this call changed, newest last; on failure it runs
	// backwards so the host ends as it was.
	var undo []func() error
	defer func() {
		if err == nil {
			return
		}
		var uerrs []error
		for i := len(undo) - 1; i >= 0; i-- {
			if uerr := undo[i](); uerr != nil {
				uerrs = append(uerrs, uerr)
			}
		}
		if len(uerrs) > 0 {
			err = errors.Join(err, fmt.Errorf("realserver up: undo incomplete: %w", errors.Join(uerrs...)))
		} else if len(undo) > 0 {
			log.Warn("undid partial changes after a failure", "steps", len(undo))
		}
	}()

	// Step 1: read what is there now. Nothing has changed yet.
	keys := cfg.sysctlKeys()
	current := make(map[string]string, len(keys))
	for _, kp := range keys {
		s, _, rerr := readInt(k, kp.key)
		if rerr != nil {
			if errors.Is(rerr, fs.ErrNotExist) && strings.HasPrefix(kp.key, confKey(cfg.Interface, "")) {
				return fmt.Errorf("realserver up: interface %s not found: %w", cfg.Interface, rerr)
			}
			return fmt.Errorf("realserver up: %w", rerr)
		}
		current[kp.key] = s
	}
	addrs, err := k.Addrs()
	if err != nil {
		return fmt.Errorf("realserver up: list addresses: %w", err)
	}

	// Step 2: remember the originals before changing them. A state file from
	// an earlier Up already holds the true originals: keep those.
	st, oldBytes, rerr := readState(statePath)
	switch {
	case errors.Is(rerr, fs.ErrNotExist):
		st = &state{Sysctls: map[string]string{}}
	case rerr != nil:
		return fmt.Errorf("realserver up: read state: %w", rerr)
	}
	for _, kp := range keys {
		if _, ok := st.Sysctls[kp.key]; !ok {
			st.Sysctls[kp.key] = current[kp.key]
		}
	}
	st.VIPs = vips(st.VIPs, cfg.VIPs)
	if err := ctx.Err(); err != nil {
		return fmt.Errorf("realserver up: %w", err)
	}
	if err := writeState(statePath, st); err != nil {
		return fmt.Errorf("realserver up: save state %s: %w", statePath, err)
	}
	undo = append(undo, func() error { return restoreFile(statePath, oldBytes) })

	// Step 3: ARP suppression before the VIPs exist, so there is no moment
	// when the host would answer ARP for a VIP on lo.
	for _, kp := range keys {
		if err := ctx.Err(); err != nil {
			return fmt.Errorf("realserver up: %w", err)
		}
		n, _ := strconv.Atoi(current[kp.key])
		if kp.p.ok(n) {
			continue
		}
		want := strconv.Itoa(kp.p.want)
		if err := k.WriteSysctl(kp.key, want); err != nil {
			return fmt.Errorf("realserver up: set %s=%s: %w", displayKey(kp.key), want, err)
		}
		old, key := current[kp.key], kp.key
		undo = append(undo, func() error { return k.WriteSysctl(key, old) })
		log.Info("set sysctl", "key", displayKey(kp.key), "from", old, "to", want)
	}

	// Step 4: the VIPs on lo.
	for _, v := range vips(cfg.VIPs) {
		if err := ctx.Err(); err != nil {
			return fmt.Errorf("realserver up: %w", err)
		}
		want := vipAddr(v)
		i := slices.IndexFunc(addrs, func(a Addr) bool { return a.Interface == loopback && a.Prefix == want.Prefix })
		if i >= 0 && addrs[i].HostScope {
			continue
		}
		if i >= 0 {
			// The kernel's replace does not change an address's scope:
			// remove the global-scope copy, then add ours.
			prev := addrs[i]
			if err := k.DelAddr(prev); err != nil {
				return fmt.Errorf("realserver up: rescope VIP %s on lo: %w", v, err)
			}
			undo = append(undo, func() error { return k.AddAddr(prev) })
		}
		if err := k.AddAddr(want); err != nil {
			return fmt.Errorf("realserver up: add VIP %s to lo: %w", v, err)
		}
		undo = append(undo, func() error { return k.DelAddr(want) })
		log.Info("added VIP", "vip", v, "interface", loopback)
	}
	return nil
}

// Down removes the VIPs (those of cfg and those Up recorded) from lo and
// restores the sysctls saved by Up, then deletes the state file. It does
// all it can even when a step fails and keeps the state file if a restore
// failed, so running it again finishes the job. Without a state file it
// still removes the VIPs and returns an error wrapping ErrNoState.
func Down(ctx context.Context, cfg Config, opts Options) error {
	if err := cfg.validateVIPs(); err != nil {
		return fmt.Errorf("realserver down: config: %w", err)
	}
	k, log, statePath, done, err := opts.env()
	if err != nil {
		return fmt.Errorf("realserver down: %w", err)
	}
	defer done()
	unlock, err := lockState(statePath)
	if err != nil {
		return fmt.Errorf("realserver down: state: %w", err)
	}
	defer unlock()

	st, _, err := readState(statePath)
	noState := errors.Is(err, fs.ErrNotExist)
	if err != nil && !noState {
		return fmt.Errorf("realserver down: read state: %w", err)
	}
	if noState {
		st = &state{}
	}

	var errs []error
	addrs, err := k.Addrs()
	if err != nil {
		return fmt.Errorf("realserver down: list addresses: %w", err)
	}
	for _, v := range vips(cfg.VIPs, st.VIPs) {
		a := vipAddr(v)
		if !slices.ContainsFunc(addrs, func(b Addr) bool { return b.Interface == loopback && b.Prefix == a.Prefix }) {
			continue
		}
		if err := k.DelAddr(a); err != nil {
			errs = append(errs, fmt.Errorf("remove VIP %s from lo: %w", v, err))
			continue
		}
		log.Info("removed VIP", "vip", v, "interface", loopback)
	}
	if err := ctx.Err(); err != nil {
		return fmt.Errorf("realserver down: %w", errors.Join(append(errs, err)...))
	}

	if noState {
		return fmt.Errorf("realserver down: %w", errors.Join(append(errs, fmt.Errorf("%s: %w", statePath, ErrNoState))...))
	}
	restoreFailed := false
	for _, key := range slices.Sorted(maps.Keys(st.Sysctls)) {
		want := st.Sysctls[key]
		cur, err := k.ReadSysctl(key)
		if err == nil && cur == want {
			continue
		}
		if err := k.WriteSysctl(key, want); err != nil {
			restoreFailed = true
			errs = append(errs, fmt.Errorf("restore %s=%s: %w", displayKey(key), want, err))
			continue
		}
		log.Info("restored sysctl", "key", displayKey(key), "from", cur, "to", want)
	}
	if !restoreFailed {
		if err := restoreFile(statePath, nil); err != nil {
			errs = append(errs, fmt.Errorf("remove state: %w", err))
		}
	}
	if len(errs) > 0 {
		return fmt.Errorf("realserver down: %w", errors.Join(errs...))
	}
	return nil
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
		i := slices.IndexFunc(onLo, func(a Addr) bool { return a.Prefix.Bits() == 32 })
		switch {
		case len(onLo) == 0:
			add("VIP %s missing on lo", v)
		case i < 0:
			add("VIP %s on lo is /%d, want /32", v, onLo[0].Prefix.Bits())
		case !onLo[i].HostScope:
			add("VIP %s on lo has scope global, want host", v)
		}
		for _, ifname := range elsewhere {
			// The host would answer ARP for it there and steal the
			// director's traffic.
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
