// Package realserver makes a host an LVS direct-routing real server: it puts
// each VIP on lo as a /32 with host scope, so the host accepts packets sent
// to the VIP, and sets ARP suppression (arp_ignore, arp_announce) so the host
// never answers ARP for the VIP nor announces it: only the director may own
// the VIP on the wire. Up applies that and records in a state file exactly
// what it changed; Down undoes exactly that and nothing else; Status
// compares the live host with the config.
package realserver

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"maps"
	"net/netip"
	"path"
	"slices"
	"strconv"
	"strings"
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

// onLo finds v as a /32 on lo.
func onLo(addrs []Addr, v netip.Addr) (Addr, bool) {
	want := netip.PrefixFrom(v, 32)
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

// Up configures the host as a real server for cfg. It is idempotent. What
// it is about to change is recorded in the state file before it changes
// anything: the VIPs it adds, the VIPs it moves from scope global to host
// (with their label and flags), the sysctls it writes (with their values
// before). What is already as it should be is left alone and not recorded,
// so Down leaves it too. A record from an earlier Up is kept as it is: the
// second Up sees the first one's VIP and sysctls in place, and they stay
// the first Up's changes, not things that were there before. If a step
// fails, Up undoes what it changed and returns an error naming the step.
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

	// Step 2: decide what to change and record it before changing anything.
	st, oldBytes, rerr := readState(statePath)
	switch {
	case errors.Is(rerr, fs.ErrNotExist):
		st = &state{Sysctls: map[string]string{}}
	case rerr != nil:
		return fmt.Errorf("realserver up: read state: %w", rerr)
	}
	var writes []managed
	for _, kp := range keys {
		n, _ := strconv.Atoi(current[kp.key])
		if kp.p.ok(n) {
			continue
		}
		writes = append(writes, kp)
		if _, ok := st.Sysctls[kp.key]; !ok {
			st.Sysctls[kp.key] = current[kp.key]
		}
	}
	// Each VIP is either left as it is, added, or rescoped: the global
	// address prev is replaced by the same one with scope host.
	type vipChange struct {
		v    netip.Addr
		prev Addr
		add  bool
	}
	var changes []vipChange
	for _, v := range vips(cfg.VIPs) {
		prev, found := onLo(addrs, v)
		recorded := st.records(v)
		switch {
		case found && prev.HostScope:
			if !recorded {
				log.Info("VIP already on lo with scope host: left as it is, down keeps it", "vip", v)
			}
		case found:
			changes = append(changes, vipChange{v: v, prev: prev})
			if !recorded {
				st.Rescoped = append(st.Rescoped, rescoped{VIP: v, Label: prev.Label, Flags: prev.Flags})
			}
		default:
			changes = append(changes, vipChange{v: v, add: true})
			if !recorded {
				st.VIPs = append(st.VIPs, v)
			}
		}
	}
	if err := ctx.Err(); err != nil {
		return fmt.Errorf("realserver up: %w", err)
	}
	if err := writeState(statePath, st); err != nil {
		return fmt.Errorf("realserver up: save state %s: %w", statePath, err)
	}
	undo = append(undo, func() error { return restoreFile(statePath, oldBytes) })

	// Step 3: ARP suppression before the VIPs exist, so there is no moment
	// when the host would answer ARP for a VIP on lo.
	for _, kp := range writes {
		if err := ctx.Err(); err != nil {
			return fmt.Errorf("realserver up: %w", err)
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
	for _, c := range changes {
		if err := ctx.Err(); err != nil {
			return fmt.Errorf("realserver up: %w", err)
		}
		want := vipAddr(c.v)
		if !c.add {
			// The kernel's replace does not change an address's scope:
			// remove the global one, then add it back with scope host,
			// keeping its label and flags.
			prev := c.prev
			if err := k.DelAddr(prev); err != nil {
				return fmt.Errorf("realserver up: rescope VIP %s on lo: %w", c.v, err)
			}
			undo = append(undo, func() error { return k.AddAddr(prev) })
			want.Label, want.Flags = prev.Label, prev.Flags
		}
		if err := k.AddAddr(want); err != nil {
			return fmt.Errorf("realserver up: add VIP %s to lo: %w", c.v, err)
		}
		undo = append(undo, func() error { return k.DelAddr(want) })
		if c.add {
			log.Info("added VIP", "vip", c.v, "interface", loopback)
		} else {
			log.Info("changed VIP scope from global to host", "vip", c.v, "interface", loopback)
		}
	}
	return nil
}

// Report says what Down did and what it left as it was.
type Report struct {
	// Removed are the VIPs Up had added, now gone from lo.
	Removed []netip.Addr
	// Rescoped are the VIPs that had scope global before Up and have it
	// again.
	Rescoped []netip.Addr
	// Restored are the sysctls put back, as KEY=VALUE in sysctl(8)'s
	// spelling.
	Restored []string
	// Left says, a sentence each, what Down did not touch and why.
	Left []string
}

func (r *Report) leave(format string, args ...any) {
	r.Left = append(r.Left, fmt.Sprintf(format, args...))
}

// Down undoes what Up recorded, and nothing else: it removes the VIPs Up
// added, gives back their global scope to the VIPs Up rescoped, and puts
// back each sysctl Up wrote that still holds the value Up wrote (one
// changed since is someone else's and stays). A VIP of cfg that Up found on
// lo stays there. Down does all it can when a step fails and keeps in the
// state file what is still to undo, so running it again finishes the job;
// while a VIP it should have removed is still on lo it leaves ARP
// suppression in place.
//
// Without a state file (a reboot cleared /run, or Down ran already) there
// is no telling what Up changed: Down changes nothing, says in the report
// what it left, and returns an error wrapping ErrNoState. Removing the
// VIPs could take away addresses someone else put there; restoring
// sysctls it never saw could make the host answer ARP for a VIP still on
// lo and steal the director's traffic.
func Down(ctx context.Context, cfg Config, opts Options) (Report, error) {
	var rep Report
	if err := cfg.validateVIPs(); err != nil {
		return rep, fmt.Errorf("realserver down: config: %w", err)
	}
	k, log, statePath, done, err := opts.env()
	if err != nil {
		return rep, fmt.Errorf("realserver down: %w", err)
	}
	defer done()
	unlock, err := lockState(statePath)
	if err != nil {
		return rep, fmt.Errorf("realserver down: state: %w", err)
	}
	defer unlock()

	st, _, err := readState(statePath)
	noState := errors.Is(err, fs.ErrNotExist)
	if err != nil && !noState {
		return rep, fmt.Errorf("realserver down: read state: %w", err)
	}
	addrs, err := k.Addrs()
	if err != nil {
		return rep, fmt.Errorf("realserver down: list addresses: %w", err)
	}
	if noState {
		for _, v := range vips(cfg.VIPs) {
			if _, ok := onLo(addrs, v); ok {
				rep.leave("VIP %s left on lo: no record that up added it", v)
			}
		}
		rep.leave("ARP sysctls left as they are: no record of their values before up")
		log.Warn("no state file: nothing undone", "path", statePath, "left", rep.Left)
		return rep, fmt.Errorf("realserver down: %s: %w", statePath, ErrNoState)
	}

	// left is what is still to undo when Down returns.
	left := &state{Sysctls: map[string]string{}}
	var errs []error
	// VIPs first, the reverse of Up, so there is no moment with a VIP Up
	// added on lo and ARP not suppressed.
	for _, v := range st.VIPs {
		if ctx.Err() != nil {
			left.VIPs = append(left.VIPs, v)
			continue
		}
		a, ok := onLo(addrs, v)
		if !ok {
			continue
		}
		if err := k.DelAddr(a); err != nil {
			left.VIPs = append(left.VIPs, v)
			errs = append(errs, fmt.Errorf("remove VIP %s from lo: %w", v, err))
			continue
		}
		rep.Removed = append(rep.Removed, v)
		log.Info("removed VIP", "vip", v, "interface", loopback)
	}
	for _, r := range st.Rescoped {
		if ctx.Err() != nil {
			left.Rescoped = append(left.Rescoped, r)
			continue
		}
		cur, ok := onLo(addrs, r.VIP)
		switch {
		case !ok:
			rep.leave("VIP %s is no longer on lo: not put back", r.VIP)
			continue
		case !cur.HostScope:
			continue // already global again
		}
		if err := k.DelAddr(cur); err != nil {
			left.Rescoped = append(left.Rescoped, r)
			errs = append(errs, fmt.Errorf("restore scope global of VIP %s on lo: %w", r.VIP, err))
			continue
		}
		if err := k.AddAddr(r.addr()); err != nil {
			// Put the host-scope VIP back so a retry finds it as Up left it.
			left.Rescoped = append(left.Rescoped, r)
			errs = append(errs, fmt.Errorf("restore scope global of VIP %s on lo: %w", r.VIP, err))
			if aerr := k.AddAddr(cur); aerr != nil {
				errs = append(errs, fmt.Errorf("put back VIP %s on lo: %w", r.VIP, aerr))
			}
			continue
		}
		rep.Rescoped = append(rep.Rescoped, r.VIP)
		log.Info("changed VIP scope back from host to global", "vip", r.VIP, "interface", loopback)
	}
	vipsLeft := len(left.VIPs) > 0 || len(left.Rescoped) > 0
	for _, key := range slices.Sorted(maps.Keys(st.Sysctls)) {
		prev := st.Sysctls[key]
		if err := ctx.Err(); err != nil || vipsLeft {
			// A VIP still on lo needs ARP suppression.
			left.Sysctls[key] = prev
			continue
		}
		cur, err := k.ReadSysctl(key)
		switch {
		case errors.Is(err, fs.ErrNotExist):
			rep.leave("%s no longer exists (interface gone): nothing to restore", displayKey(key))
			continue
		case err != nil:
			left.Sysctls[key] = prev
			errs = append(errs, fmt.Errorf("read %s: %w", displayKey(key), err))
			continue
		case cur == prev:
			continue
		}
		set, ok := setBy(key)
		switch {
		case !ok:
			rep.leave("%s left at %s: not a sysctl up manages", displayKey(key), cur)
			continue
		case cur != set:
			rep.leave("%s left at %s: up set it to %s (was %s), someone changed it since", displayKey(key), cur, set, prev)
			continue
		}
		if err := k.WriteSysctl(key, prev); err != nil {
			left.Sysctls[key] = prev
			errs = append(errs, fmt.Errorf("restore %s=%s: %w", displayKey(key), prev, err))
			continue
		}
		rep.Restored = append(rep.Restored, displayKey(key)+"="+prev)
		log.Info("restored sysctl", "key", displayKey(key), "from", cur, "to", prev)
	}
	for _, v := range vips(cfg.VIPs) {
		if _, ok := onLo(addrs, v); !ok || st.records(v) {
			continue
		}
		if len(rep.Restored) > 0 {
			rep.leave("VIP %s left on lo: up did not put it there (with ARP suppression undone the host answers ARP for it, as it did before up)", v)
		} else {
			rep.leave("VIP %s left on lo: up did not put it there", v)
		}
	}
	if vipsLeft && len(st.Sysctls) > 0 {
		errs = append(errs, errors.New("ARP sysctls not restored while a VIP up put on lo is still there"))
	}
	if err := ctx.Err(); err != nil {
		errs = append(errs, err)
	}

	var serr error
	if left.empty() {
		serr = restoreFile(statePath, nil)
	} else {
		serr = writeState(statePath, left)
	}
	if serr != nil {
		errs = append(errs, fmt.Errorf("save what is left to undo in %s: %w", statePath, serr))
	}
	if len(errs) > 0 {
		return rep, fmt.Errorf("realserver down: %w", errors.Join(errs...))
	}
	return rep, nil
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
