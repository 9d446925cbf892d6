package healthcheck

import (
	"errors"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"net/netip"
	"os/exec"
	"slices"
	"strings"
	"sync"
	"time"
)

// Target is one real server to check. ID is the stable key across reloads;
// the daemon uses the virtual service and the real server's address, e.g.
// "TCP 192.168.94.200:80 -> 192.168.94.134:80".
type Target struct {
	ID   string
	Addr netip.AddrPort
	Spec Spec
	// Via, if set, checks the real server through its virtual address
	// (see Via); Addr still names the real server.
	Via Via
	// Resume, if set, is the state the target starts in when it is new to
	// the Manager, instead of Spec.InitialUp: the verdict an earlier
	// checker (a checker process that was restarted) had reached, so a
	// server known DOWN does not come back UP untested. It plays no part in
	// deciding whether a target changed.
	Resume *Resume
}

// Resume is a verdict carried over from an earlier checker.
type Resume struct {
	Up bool
	// Since is when that checker last saw the state change; zero if
	// never. It becomes the target's LastChange.
	Since time.Time
}

// Transition is a change of a target's state.
type Transition struct {
	ID     string
	Addr   netip.AddrPort
	Up     bool
	Reason string // "ok", "status 503", "timeout after 1s (connect)", ...
	At     time.Time
}

// TargetState is a target's current state, for status output.
type TargetState struct {
	ID         string
	Addr       netip.AddrPort
	Up         bool
	LastOK     bool      // result of the last check (false before the first)
	LastError  string    // reason of the last failure, "" if none yet
	LastCheck  time.Time // end of the last check; zero before the first
	LastChange time.Time // last transition; zero if none yet
	Checks     uint64
	Failures   uint64
}

// DefaultMaxInFlight is the default bound on checks running at once.
const DefaultMaxInFlight = 256

// Option configures a Manager.
type Option func(*Manager)

// WithMaxInFlight bounds the number of checks running at once (default
// 256). Due checks beyond it wait in FIFO order. Only checks that hang until
// their timeout hold a slot for long (a refused or answered probe takes well
// under a millisecond), so the bound matters when many servers black-hole
// at once: raise it to at least (such servers x timeout / interval).
func WithMaxInFlight(n int) Option {
	return func(m *Manager) {
		if n > 0 {
			m.maxInFlight = n
		}
	}
}

// WithObserver calls f after every check (from the scheduling goroutine, so
// f must be quick): its target, how long it took and, for a failure, its
// class (FailureClass; "" when it passed). Metrics use it.
func WithObserver(f func(id string, took time.Duration, reason string)) Option {
	return func(m *Manager) { m.observe = f }
}

// WithCommandStarter starts exec checks' commands with start instead of
// exec.Cmd.Start: the checker process passes one that takes away the
// daemon's capabilities. start must not return before the command runs.
func WithCommandStarter(start func(*exec.Cmd) error) Option {
	return func(m *Manager) {
		m.newChecker = func(s Spec) (Checker, error) {
			c, err := NewChecker(s)
			if e, ok := c.(*execChecker); ok {
				e.start = start
			}
			return c, err
		}
	}
}

// Manager schedules the checks of a set of targets and emits their
// transitions. The rules (when checks are due, rise/fall, what a reload
// keeps, which transitions the reader gets) are the pure schedule's, see
// schedule.go; the Manager runs the checks and feeds it the time and the
// results. One goroutine (Run) does that: a min-heap of due times and a
// single timer, so 10,000 targets cost no goroutines or timers while idle.
// Plain http and tcp probes run on one epoll reactor (see reactor.go),
// https and exec checks in a goroutine each. Every check has its deadline,
// so a hung server only holds its own in-flight slot until its timeout.
type Manager struct {
	log         *slog.Logger
	maxInFlight int
	newChecker  func(Spec) (Checker, error)
	observe     func(id string, took time.Duration, reason string)

	out     chan Transition
	updates chan struct{} // capacity 1: "desired changed"

	// mu guards desired, and the part of sched that Snapshot reads: the
	// targets and their state, which change only in sched.Update and
	// sched.Result.
	mu      sync.Mutex
	desired []Target // latest Update, taken by Run
	sched   *schedule
}

// NewManager returns a Manager with no targets; call Update and Run.
func NewManager(log *slog.Logger, opts ...Option) *Manager {
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	m := &Manager{
		log:         log,
		maxInFlight: DefaultMaxInFlight,
		newChecker:  NewChecker,
		out:         make(chan Transition),
		updates:     make(chan struct{}, 1),
	}
	for _, o := range opts {
		o(m)
	}
	m.sched = newSchedule(m.maxInFlight, func(interval time.Duration) time.Duration { return rand.N(interval) })
	return m
}

// Transitions returns the stream of state changes. It is closed when Run
// returns. New targets start in Spec.InitialUp (or their Resume state)
// without a transition. A
// target whose spec or address changes (same ID) restarts in Spec.InitialUp;
// if that differs from the state last delivered for its ID, a transition
// with Reason "check changed" says so, so that a reader that follows
// transitions by ID is always right.
func (m *Manager) Transitions() <-chan Transition { return m.out }

// Update replaces the set of targets (a reload). Targets whose ID, address
// and Spec are unchanged keep their state and schedule; new ones start
// (after a random offset within their interval) in Spec.InitialUp or their
// Resume state; gone ones stop, a running check of theirs is cancelled. If
// any spec is invalid nothing changes and the error says which; a check
// that cannot be set up all the same (an unreadable CA file) is logged and
// fails every time with that reason. Update never blocks; it may be called
// before Run.
func (m *Manager) Update(targets []Target) error {
	norm, err := normalize(targets)
	if err != nil {
		return err
	}
	m.mu.Lock()
	m.desired = norm
	m.mu.Unlock()
	select {
	case m.updates <- struct{}{}:
	default:
	}
	return nil
}

// normalize validates the set.
func normalize(targets []Target) ([]Target, error) {
	var errs []error
	seen := make(map[string]bool, len(targets))
	norm := make([]Target, len(targets))
	for i, t := range targets {
		if seen[t.ID] {
			errs = append(errs, fmt.Errorf("target %s: duplicate id", t.ID))
		}
		seen[t.ID] = true
		if err := t.Spec.Validate(); err != nil {
			errs = append(errs, fmt.Errorf("target %s: %w", t.ID, err))
		}
		norm[i] = t
	}
	return norm, errors.Join(errs...)
}

// Snapshot returns the state of every target, sorted by ID.
func (m *Manager) Snapshot() []TargetState {
	m.mu.Lock()
	out := m.sched.Snapshot()
	m.mu.Unlock()
	slices.SortFunc(out, func(a, b TargetState) int { return strings.Compare(a.ID, b.ID) })
	return out
}
