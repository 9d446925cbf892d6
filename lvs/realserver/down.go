package realserver

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"maps"
	"net/netip"
	"slices"
)

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
