package realserver

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"net/netip"
	"strconv"
	"strings"
)

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
		case found && inPlace(prev):
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
