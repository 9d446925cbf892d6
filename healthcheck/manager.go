package healthcheck

import (
	"container/heap"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"net/netip"
	"runtime"
	"slices"
	"sync"
	"sync/atomic"
	"time"
)

// Target is one real server to check. ID is the stable key across reloads,
// e.g. "192.168.94.200:80/tcp -> 192.168.94.134:80".
type Target struct {
	ID   string
	Addr netip.AddrPort
	Spec Spec
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
// f must be quick): its target, how long it took and, for a failure, the
// reason ("" when it passed). Metrics use it.
func WithObserver(f func(id string, took time.Duration, reason string)) Option {
	return func(m *Manager) { m.observe = f }
}

// WithCheckerFactory replaces NewChecker (tests, custom probes).
func WithCheckerFactory(f func(Spec) (Checker, error)) Option {
	return func(m *Manager) { m.newChecker = f }
}

// Manager schedules the checks of a set of targets and emits their
// transitions. One goroutine (Run) owns the schedule: a min-heap of due
// times and a single timer, so 10,000 targets cost no goroutines or timers
// while idle. Due checks start in rounds at most 20 ms apart; plain http and
// tcp probes then run on one epoll reactor (see reactor.go), https and exec
// checks in a goroutine each. At most maxInFlight checks run at once, and
// every one has its deadline, so a hung server only holds its own slot
// until its timeout; when more are due than the bound allows they wait in
// FIFO order (round robin under overload).
//
// Transitions are not buffered in a channel: Run keeps at most one pending
// transition per target and hands them out in order of occurrence while the
// reader keeps up. If the reader is slow, a target that changes again before
// its pending transition was read has the pending one replaced (and dropped
// altogether when the state is back to what the reader last saw), so a slow
// reader never stalls checking and always converges to the current state.
type Manager struct {
	log         *slog.Logger
	maxInFlight int
	newChecker  func(Spec) (Checker, error)
	observe     func(id string, took time.Duration, reason string)

	out     chan Transition
	updates chan struct{} // capacity 1: "desired changed"

	mu      sync.Mutex
	desired []Target          // latest Update, taken by Run
	entries map[string]*entry // guarded by mu (Run mutates, Snapshot reads)
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
		entries:     make(map[string]*entry),
	}
	for _, o := range opts {
		o(m)
	}
	return m
}

// Transitions returns the stream of state changes. It is closed when Run
// returns. New targets start in Spec.InitialUp without a transition. A
// target whose spec or address changes (same ID) restarts in Spec.InitialUp;
// if that differs from the state last delivered for its ID, a transition
// with Reason "check changed" says so, so that a reader that follows
// transitions by ID is always right.
func (m *Manager) Transitions() <-chan Transition { return m.out }

// Update replaces the set of targets (a reload). Targets whose ID, address
// and Spec are unchanged keep their state and schedule; new ones start
// (after a random offset within their interval) in Spec.InitialUp; gone
// ones stop, a running check of theirs is cancelled. If any spec is invalid
// (or its CA file unreadable) nothing changes and the error says which.
// Update never blocks; it may be called before Run.
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
	out := make([]TargetState, 0, len(m.entries))
	for _, e := range m.entries {
		out = append(out, TargetState{
			ID: e.id, Addr: e.addr, Up: e.up, LastOK: e.lastOK, LastError: e.lastErr,
			LastCheck: e.lastCheck, LastChange: e.lastChange, Checks: e.checks, Failures: e.failures,
		})
	}
	m.mu.Unlock()
	slices.SortFunc(out, func(a, b TargetState) int {
		if a.ID < b.ID {
			return -1
		}
		if a.ID > b.ID {
			return 1
		}
		return 0
	})
	return out
}

// entry is one target's schedule and state; owned by Run, fields read by
// Snapshot under Manager.mu.
type entry struct {
	id      string
	addr    netip.AddrPort
	spec    *Spec   // shared by the targets with equal specs
	checker Checker // likewise
	idx     int     // heap index, -1 when not in the heap
	due     time.Time
	running bool
	cancel  context.CancelFunc // of the running check, if in a goroutine
	rxID    uint32             // of the running check, if on the reactor
	gone    bool               // removed or replaced while running

	up     bool
	streak int // consecutive results disagreeing with up

	lastOK     bool
	lastErr    string
	lastCheck  time.Time
	lastChange time.Time
	checks     uint64
	failures   uint64
}

// stop cancels the entry's running check, if any.
func (e *entry) stop(rx *reactor) {
	if e.cancel != nil {
		e.cancel()
	}
	if e.rxID != 0 && rx != nil {
		rx.cancel(e.rxID)
	}
}

// observe applies one result to the hysteresis and reports whether the state
// changed: fall consecutive failures take an UP target DOWN, rise
// consecutive successes a DOWN one UP; a result that agrees with the state
// resets the count.
func (e *entry) observe(ok bool) bool {
	return hysteresis(&e.up, &e.streak, ok, e.spec.Rise, e.spec.Fall)
}

func hysteresis(up *bool, streak *int, ok bool, rise, fall int) bool {
	if ok == *up {
		*streak = 0
		return false
	}
	*streak++
	need := rise
	if *up {
		need = fall
	}
	if *streak < need {
		return false
	}
	*up, *streak = ok, 0
	return true
}

type result struct {
	e          *entry
	err        error
	start, end time.Time
}

// Run checks the targets until ctx is done, then cancels the running checks,
// waits for them and closes the Transitions channel.
func (m *Manager) Run(ctx context.Context) error {
	r := &runner{
		m:       m,
		ctx:     ctx,
		results: make(chan result, m.maxInFlight),
		rxKick:  make(chan struct{}, 1),
		pending: make(map[string]*pendingTransition),
		seen:    make(map[string]bool),
	}
	defer close(m.out)
	defer func() {
		if r.rx != nil {
			r.rx.close()
		}
	}()
	r.loop()
	return nil
}

type pendingTransition struct {
	tr        Transition
	cancelled bool // net no change since the reader last saw this target
	queued    bool // in runner.order
}

type runner struct {
	m       *Manager
	ctx     context.Context
	heap    entryHeap
	ready   []*entry // due but waiting for an in-flight slot
	running int
	results chan result // from checks run in goroutines
	rx      *reactor    // runs plain http and tcp probes; made on first use
	noRx    bool        // the reactor could not be made: goroutines only

	// The reactor's results wait in rxDone for the runner's next round
	// instead of waking it once each: transitions are at most a round
	// late, and the runner wakes per round rather than per check.
	// rxKick wakes it early when enough are waiting, or when due checks
	// wait for the slots those results would free (starved).
	rxMu      sync.Mutex
	rxDone    []result
	rxSpare   []result // the runner's: the slice collect last emptied
	rxRunning int      // reactor probes started and not yet finished
	starved   atomic.Bool
	rxKick    chan struct{}

	// Transition delivery, see Manager.
	pending map[string]*pendingTransition
	order   []string        // IDs with a pending transition, oldest first
	seen    map[string]bool // state the reader last received (or the initial one)
}

func (r *runner) loop() {
	timer := time.NewTimer(time.Hour)
	defer timer.Stop()
	r.applyUpdate()
	var lastRound time.Time
	for {
		// Due checks are started in rounds at most startQuantum apart, so
		// that probes go out (and their answers come back) in batches
		// rather than one wake-up each; slots freed by finished checks
		// serve the queue at once.
		r.collect()
		now := time.Now()
		if now.Sub(lastRound) >= startQuantum {
			r.popDue(now)
			lastRound = now
		}
		r.startReady()
		r.starved.Store(len(r.ready) > 0)
		var wait <-chan time.Time
		d := time.Duration(-1)
		if len(r.heap) > 0 {
			d = max(r.heap[0].due.Sub(now), lastRound.Add(startQuantum).Sub(now))
		}
		if r.rxRunning > 0 {
			if q := lastRound.Add(startQuantum).Sub(now); d < 0 || q < d {
				d = q
			}
		}
		if d >= 0 {
			timer.Reset(d)
			wait = timer.C
		}
		out, next := r.nextTransition()
		select {
		case <-r.ctx.Done():
			r.shutdown()
			return
		case <-r.m.updates:
			r.applyUpdate()
		case res := <-r.results:
			r.finish(res)
			// Drain what else has finished before rescheduling.
			for n := len(r.results); n > 0; n-- {
				r.finish(<-r.results)
			}
		case <-wait:
		case <-r.rxKick:
		case out <- next:
			r.delivered(next)
		}
	}
}

// startQuantum is the shortest time between two rounds of starting checks.
const startQuantum = 20 * time.Millisecond

// popDue moves the checks whose time has come to r.ready, in due order;
// startReady starts them as far as the in-flight bound allows.
func (r *runner) popDue(now time.Time) {
	for len(r.heap) > 0 && !r.heap[0].due.After(now) {
		e := heap.Pop(&r.heap).(*entry)
		r.ready = append(r.ready, e)
	}
}

func (r *runner) startReady() {
	n := 0
	for ; n < len(r.ready) && r.running < r.m.maxInFlight; n++ {
		r.start(r.ready[n])
		if n%64 == 63 {
			runtime.Gosched() // a long round must not hold up VRRP on one P
		}
	}
	if n > 0 {
		clear(r.ready[:n])
		r.ready = r.ready[n:]
		if len(r.ready) == 0 {
			r.ready = nil // let the backing array go after a burst
		}
	}
}

func (r *runner) start(e *entry) {
	r.running++
	e.running = true
	if p, ok := e.checker.(prober); ok && p.reactorOK() && r.reactor() != nil {
		r.rxRunning++
		e.rxID = r.rx.start(p, e.addr, e.spec.Timeout, e)
		return
	}
	ctx, cancel := context.WithTimeout(r.ctx, e.spec.Timeout)
	e.cancel = cancel
	go func() {
		start := time.Now()
		err := e.checker.Check(ctx, e.addr)
		if err == nil && ctx.Err() != nil {
			err = ctx.Err() // finished, but too late to count
		}
		cancel()
		r.results <- result{e: e, err: err, start: start, end: time.Now()}
	}()
}

// reactor returns the epoll reactor, made on first use (so that a Manager
// with only exec or https checks, or fakes in tests, never has one).
// rxFinished receives the reactor's results (on its goroutine, or on the
// runner's from start and cancel).
func (r *runner) rxFinished(tag any, err error, start time.Time) {
	r.rxMu.Lock()
	r.rxDone = append(r.rxDone, result{e: tag.(*entry), err: err, start: start, end: time.Now()})
	kick := len(r.rxDone) >= rxBatch || r.starved.Load()
	r.rxMu.Unlock()
	if kick {
		select {
		case r.rxKick <- struct{}{}:
		default:
		}
	}
}

func (r *runner) reactor() *reactor {
	if r.rx == nil && !r.noRx {
		rx, err := newReactor(r.rxFinished)
		if err != nil {
			r.m.log.Warn("health checks: no epoll reactor, one goroutine per check", "err", err)
			r.noRx = true
			return nil
		}
		r.rx = rx
	}
	return r.rx
}

func (r *runner) finish(res result) {
	r.running--
	e := res.e
	e.running, e.cancel, e.rxID = false, nil, 0
	if e.gone || r.ctx.Err() != nil {
		return
	}
	ok := res.err == nil
	reason := Reason(res.err, e.spec.Timeout)
	if r.m.observe != nil {
		failure := ""
		if !ok {
			failure = reason
		}
		r.m.observe(e.id, res.end.Sub(res.start), failure)
	}
	r.m.mu.Lock()
	e.checks++
	e.lastOK, e.lastCheck = ok, res.end
	if !ok {
		e.failures++
		e.lastErr = reason
	}
	changed := e.observe(ok)
	if changed {
		e.lastChange = res.end
	}
	r.m.mu.Unlock()
	if changed {
		r.m.log.Debug("real server state changed", "id", e.id, "up", e.up, "reason", reason)
		r.queueTransition(Transition{ID: e.id, Addr: e.addr, Up: e.up, Reason: reason, At: res.end})
	}
	// Keep the cadence; never overlap; no catch-up burst after a check
	// that took longer than the interval.
	// e.due is still the time this check was due: keeping to that grid
	// (not to the start, which rounds may delay) avoids drift.
	e.due = e.due.Add(e.spec.Interval)
	if e.due.Before(res.end) {
		e.due = res.end
	}
	heap.Push(&r.heap, e)
}

// applyUpdate reconciles the running set with the latest Update.
func (r *runner) applyUpdate() {
	r.m.mu.Lock()
	desired := r.m.desired
	r.m.desired = nil
	r.m.mu.Unlock()
	if desired == nil {
		return
	}
	now := time.Now()
	keep := make(map[string]bool, len(desired))
	replaced := make(map[string]bool)
	// Targets with equal specs share one Spec and one Checker (checkers
	// hold no per-target state): with 10,000 targets this saves megabytes.
	type shared struct {
		spec    *Spec
		checker Checker
	}
	cache := make(map[SpecKey]shared)
	for _, e := range r.m.entries {
		cache[e.spec.Key()] = shared{e.spec, e.checker}
	}
	var added []*entry
	for _, t := range desired {
		if old := r.m.entries[t.ID]; old != nil {
			if old.addr == t.Addr && old.spec.Key() == t.Spec.Key() {
				keep[t.ID] = true
				continue
			}
			replaced[t.ID] = true
		}
		key := t.Spec.Key()
		sh, ok := cache[key]
		if !ok {
			spec := t.Spec
			c, err := r.m.newChecker(spec)
			if err != nil {
				// Update validated the spec; only e.g. an unreadable CA file
				// gets here. Such a target fails every check, loudly.
				r.m.log.Error("health check not set up", "id", t.ID, "err", err)
				c = CheckerFunc(func(context.Context, netip.AddrPort) error {
					return fmt.Errorf("check not set up: %w", err)
				})
			}
			sh = shared{&spec, c}
			cache[key] = sh
		}
		e := &entry{id: t.ID, addr: t.Addr, spec: sh.spec, checker: sh.checker, idx: -1, up: t.Spec.InitialUp}
		if t.Resume != nil && !replaced[t.ID] {
			e.up, e.lastChange = t.Resume.Up, t.Resume.Since
		}
		e.due = now.Add(rand.N(t.Spec.Interval))
		added = append(added, e)
	}
	r.m.mu.Lock()
	for id, e := range r.m.entries {
		if keep[id] {
			continue
		}
		e.gone = true
		e.stop(r.rx)
		if e.idx >= 0 {
			heap.Remove(&r.heap, e.idx)
		}
		delete(r.m.entries, id)
		if p := r.pending[id]; p != nil {
			p.cancelled = true
		}
		if !replaced[id] {
			delete(r.seen, id)
		}
	}
	for _, e := range added {
		r.m.entries[e.id] = e
		if replaced[e.id] {
			r.queueTransition(Transition{ID: e.id, Addr: e.addr, Up: e.up, Reason: "check changed", At: now})
		} else {
			r.seen[e.id] = e.up
		}
		heap.Push(&r.heap, e)
	}
	r.m.mu.Unlock()
	if n := len(r.ready); n > 0 {
		r.ready = slices.DeleteFunc(r.ready, func(e *entry) bool { return e.gone })
	}
	r.m.log.Debug("health check targets updated", "targets", len(desired), "new", len(added))
}

func (r *runner) queueTransition(tr Transition) {
	p := r.pending[tr.ID]
	if p == nil {
		p = &pendingTransition{}
		r.pending[tr.ID] = p
	}
	p.tr = tr
	p.cancelled = tr.Up == r.seen[tr.ID]
	if !p.queued && !p.cancelled {
		p.queued = true
		r.order = append(r.order, tr.ID)
	}
}

// nextTransition returns the channel and value for the select: a nil
// channel when nothing is pending.
func (r *runner) nextTransition() (chan<- Transition, Transition) {
	for len(r.order) > 0 {
		id := r.order[0]
		p := r.pending[id]
		if p != nil && !p.cancelled {
			return r.m.out, p.tr
		}
		r.order = r.order[1:]
		if p != nil {
			delete(r.pending, id)
		}
	}
	r.order = nil
	return nil, Transition{}
}

func (r *runner) delivered(tr Transition) {
	delete(r.pending, tr.ID)
	r.order = r.order[1:]
	if _, ok := r.seen[tr.ID]; ok {
		r.seen[tr.ID] = tr.Up
	}
}

// rxBatch is how many reactor results wake the runner before its round.
const rxBatch = 32

// collect finishes the reactor's results gathered since the last call.
func (r *runner) collect() {
	r.rxMu.Lock()
	done := r.rxDone
	r.rxDone = r.rxSpare
	r.rxMu.Unlock()
	for _, res := range done {
		r.rxRunning--
		r.finish(res)
	}
	clear(done)
	r.rxSpare = done[:0]
}

func (r *runner) shutdown() {
	for _, e := range r.m.entries {
		e.stop(r.rx)
	}
	// A cancelled reactor probe reports at once (from cancel itself);
	// goroutine checks report when they notice.
	r.collect()
	for r.running > r.rxRunning {
		<-r.results
		r.running--
	}
}

// entryHeap orders entries by due time.
type entryHeap []*entry

func (h entryHeap) Len() int           { return len(h) }
func (h entryHeap) Less(i, j int) bool { return h[i].due.Before(h[j].due) }
func (h entryHeap) Swap(i, j int) {
	h[i], h[j] = h[j], h[i]
	h[i].idx, h[j].idx = i, j
}
func (h *entryHeap) Push(x any) {
	e := x.(*entry)
	e.idx = len(*h)
	*h = append(*h, e)
}
func (h *entryHeap) Pop() any {
	old := *h
	e := old[len(old)-1]
	old[len(old)-1] = nil
	e.idx = -1
	*h = old[:len(old)-1]
	return e
}
