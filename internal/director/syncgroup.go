package director

import (
	"context"
	"fmt"
	"log/slog"
	"os/exec"
	"slices"
	"sync"

	"github.com/lvsha/lvsha/conf"
	"github.com/lvsha/lvsha/healthcheck"
	"github.com/lvsha/lvsha/vrrp"
)

// syncGroups makes the members of each sync group fail over together:
// while one member is in FAULT by its own link or tracking (its OwnFault),
// every other member is held in FAULT (vrrp.Instance.SetGroupFault). Only
// own faults count, so that members never hold each other down for ever.
// It also runs each group's notify at each change of the group's state.
type syncGroups struct {
	log   *slog.Logger
	start func(*exec.Cmd) error // of notify commands
	// changed hears that a member's hold changed (after it is recorded);
	// stepDown makes a MASTER instance BACKUP (vrrp.Instance.StepDown).
	changed  func()
	stepDown func(instance, cause string)

	mu     sync.Mutex
	groups []*syncGroup
	own    map[string]string     // instance: its own fault cause, "" none
	states map[string]vrrp.State // instance: its state
}

type syncGroup struct {
	cfg    conf.SyncGroup
	state  string        // last state notified, "" none yet
	notify chan []string // argv queue of the group's notify runner
}

func newSyncGroups(log *slog.Logger, start func(*exec.Cmd) error, changed func(), stepDown func(instance, cause string)) *syncGroups {
	return &syncGroups{log: log, start: start, changed: changed, stepDown: stepDown, own: map[string]string{}, states: map[string]vrrp.State{}}
}

// update takes a reload's groups; a group whose config is unchanged keeps
// its notify runner and last state.
func (s *syncGroups) update(ctx context.Context, groups []conf.SyncGroup) {
	s.mu.Lock()
	old := s.groups
	s.groups = nil
	for _, c := range groups {
		if i := slices.IndexFunc(old, func(g *syncGroup) bool { return g.cfg.Name == c.Name }); i >= 0 &&
			slices.Equal(old[i].cfg.Instances, c.Instances) && slices.Equal(old[i].cfg.Notify, c.Notify) {
			s.groups = append(s.groups, old[i])
			old = slices.Delete(old, i, i+1)
			continue
		}
		g := &syncGroup{cfg: c, notify: make(chan []string, 16)}
		go s.runNotify(ctx, g)
		s.groups = append(s.groups, g)
	}
	s.mu.Unlock()
	for _, g := range old {
		close(g.notify)
	}
	s.changed()
}

// hold says why instance is held in FAULT by its group, "" if it is not:
// the first other member with an own fault.
func (s *syncGroups) hold(instance string) string {
	s.mu.Lock()
	defer s.mu.Unlock()
	for _, g := range s.groups {
		if !slices.Contains(g.cfg.Instances, instance) {
			continue
		}
		for _, m := range g.cfg.Instances {
			if c := s.own[m]; m != instance && c != "" {
				return fmt.Sprintf("sync group %s: %s in FAULT (%s)", g.cfg.Name, m, c)
			}
		}
	}
	return ""
}

// ownFault records an instance's own fault cause ("" none).
func (s *syncGroups) ownFault(instance, cause string) {
	s.mu.Lock()
	changed := s.own[instance] != cause
	s.own[instance] = cause
	s.mu.Unlock()
	if changed {
		if cause != "" {
			s.log.Info("sync group: member in FAULT; holding the others down", "instance", instance, "cause", cause)
		}
		s.changed()
	}
}

// forget drops what is known of an instance that stopped.
func (s *syncGroups) forget(instance string) {
	s.mu.Lock()
	_, known := s.own[instance]
	delete(s.own, instance)
	delete(s.states, instance)
	s.mu.Unlock()
	if known {
		s.changed()
	}
}

// state records an instance's transition. A member gone from MASTER to
// BACKUP takes the group's other masters with it. The group's notify is
// queued if the group's state changed: FAULT if a member is, MASTER if all
// are, BACKUP if all are past INIT otherwise.
func (s *syncGroups) state(instance string, st vrrp.State) {
	var down []string
	var cause string
	defer func() {
		for _, m := range down {
			s.stepDown(m, cause)
		}
	}()
	s.mu.Lock()
	defer s.mu.Unlock()
	prev := s.states[instance]
	s.states[instance] = st
	for _, g := range s.groups {
		if !slices.Contains(g.cfg.Instances, instance) {
			continue
		}
		if prev == vrrp.Master && st == vrrp.Backup {
			cause = fmt.Sprintf("sync group %s: %s went BACKUP", g.cfg.Name, instance)
			for _, m := range g.cfg.Instances {
				if m != instance && s.states[m] == vrrp.Master {
					down = append(down, m)
				}
			}
		}
		gs := groupState(g.cfg.Instances, s.states)
		if gs == "" || gs == g.state {
			continue
		}
		g.state = gs
		s.log.Info("sync group: transition", "sync_group", g.cfg.Name, "state", gs, "after", instance+" "+st.String())
		if len(g.cfg.Notify) > 0 {
			select {
			case g.notify <- append(slices.Clone(g.cfg.Notify), g.cfg.Name, gs):
			default:
				s.log.Warn("sync group: notify queue full; dropping one", "sync_group", g.cfg.Name, "state", gs)
			}
		}
	}
}

func groupState(members []string, states map[string]vrrp.State) string {
	all := map[vrrp.State]int{}
	for _, m := range members {
		all[states[m]]++
	}
	switch {
	case all[vrrp.Fault] > 0:
		return "FAULT"
	case all[vrrp.Init] > 0:
		return ""
	case all[vrrp.Master] == len(members):
		return "MASTER"
	}
	return "BACKUP"
}

// snapshot returns each group's last state, by name.
func (s *syncGroups) snapshot() map[string]string {
	s.mu.Lock()
	defer s.mu.Unlock()
	out := map[string]string{}
	for _, g := range s.groups {
		out[g.cfg.Name] = g.state
	}
	return out
}

// runNotify runs a group's notify commands one at a time, in order.
func (s *syncGroups) runNotify(ctx context.Context, g *syncGroup) {
	for argv := range g.notify {
		rctx, cancel := context.WithTimeout(ctx, g.cfg.NotifyTimeout)
		if err := healthcheck.RunCommand(rctx, argv, nil, s.start); err != nil {
			s.log.Warn("sync group: notify failed", "sync_group", g.cfg.Name, "argv", argv, "err", err)
		}
		cancel()
	}
}

// stop ends the notify runners (queued commands still run).
func (s *syncGroups) stop() {
	s.mu.Lock()
	groups := s.groups
	s.groups = nil
	s.mu.Unlock()
	for _, g := range groups {
		close(g.notify)
	}
}
