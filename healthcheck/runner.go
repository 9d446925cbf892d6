package healthcheck

import (
	"context"
	"fmt"
	"net/netip"
	"runtime"
	"sync"
	"sync/atomic"
	"time"
)

// Run checks the targets until ctx is done, then cancels the running checks,
// waits for them and closes the Transitions channel.
func (m *Manager) Run(ctx context.Context) error {
	r := &runner{
		m:        m,
		s:        m.sched,
		ctx:      ctx,
		checkers: make(map[*Spec]*sharedChecker),
		inflight: make(map[*tracked]inflight),
		results:  make(chan result, m.maxInFlight),
		rxKick:   make(chan struct{}, 1),
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

// runner is Run's state: it starts the checks the schedule says are due,
// on the reactor or in goroutines, and feeds their results back.
type runner struct {
	m        *Manager
	s        *schedule
	ctx      context.Context
	checkers map[*Spec]*sharedChecker // by the schedule's shared Specs
	inflight map[*tracked]inflight    // running checks, to stop them
	results  chan result              // from checks run in goroutines
	goRuns   int                      // checks running in goroutines
	rx       *reactor                 // runs plain http and tcp probes; made on first use
	noRx     bool                     // the reactor could not be made: goroutines only

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
}

// sharedChecker is the Checker of one Spec, and how many targets use it
// (checkers hold no per-target state).
type sharedChecker struct {
	c    Checker
	refs int
}

// inflight is how to stop a running check: its context, or its reactor
// probe.
type inflight struct {
	cancel context.CancelFunc
	rxID   uint32
}

type result struct {
	t          *tracked
	err        error
	start, end time.Time
}

func (r *runner) loop() {
	timer := time.NewTimer(time.Hour)
	defer timer.Stop()
	r.applyUpdate()
	for {
		r.collect()
		now := time.Now()
		for i, t := range r.s.Due(now) {
			r.start(t)
			if i%64 == 63 {
				runtime.Gosched() // a long round must not hold up VRRP on one P
			}
		}
		r.starved.Store(r.s.Waiting())
		// Wake when checks fall due, and while reactor probes run at the
		// next round, to collect their results.
		wake := r.s.Next()
		if r.rxRunning > 0 {
			if q := r.s.NextRound(); wake.IsZero() || q.Before(wake) {
				wake = q
			}
		}
		var wait <-chan time.Time
		if !wake.IsZero() {
			timer.Reset(wake.Sub(now))
			wait = timer.C
		}
		var out chan<- Transition
		next, ok := r.s.Outgoing()
		if ok {
			out = r.m.out
		}
		select {
		case <-r.ctx.Done():
			r.shutdown()
			return
		case <-r.m.updates:
			r.applyUpdate()
		case res := <-r.results:
			r.goRuns--
			r.finish(res)
			// Drain what else has finished before rescheduling.
			for n := len(r.results); n > 0; n-- {
				r.goRuns--
				r.finish(<-r.results)
			}
		case <-wait:
		case <-r.rxKick:
		case out <- next:
			r.s.Delivered(next)
		}
	}
}

func (r *runner) start(t *tracked) {
	c := r.checkers[t.spec].c
	addr, via := t.addr, dialVia{}
	if t.via.set() {
		addr = netip.AddrPortFrom(t.via.VIP, t.addr.Port())
		via = dialVia{mark: t.via.Mark, real: t.addr.Addr()}
	}
	if p, ok := c.(prober); ok && p.reactorOK() && r.reactor() != nil {
		r.rxRunning++
		r.inflight[t] = inflight{rxID: r.rx.start(p, addr, via, t.spec.Timeout, t)}
		return
	}
	ctx, cancel := context.WithTimeout(withVia(r.ctx, via), t.spec.Timeout)
	r.inflight[t] = inflight{cancel: cancel}
	r.goRuns++
	go func() {
		start := time.Now()
		err := c.Check(ctx, addr)
		if err == nil && ctx.Err() != nil {
			err = ctx.Err() // finished, but too late to count
		}
		cancel()
		r.results <- result{t: t, err: err, start: start, end: time.Now()}
	}()
}

// stop cancels t's running check, if any; its result still comes.
func (r *runner) stop(t *tracked) {
	f, ok := r.inflight[t]
	if !ok {
		return
	}
	if f.cancel != nil {
		f.cancel()
	}
	if f.rxID != noID && r.rx != nil {
		r.rx.cancel(f.rxID)
	}
}

// reactor returns the epoll reactor, made on first use (so that a Manager
// with only exec or https checks, or fakes in tests, never has one).
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

// rxFinished receives the reactor's results (on its goroutine, or on the
// runner's from start and cancel).
func (r *runner) rxFinished(tag any, err error, start time.Time) {
	r.rxMu.Lock()
	r.rxDone = append(r.rxDone, result{t: tag.(*tracked), err: err, start: start, end: time.Now()})
	kick := len(r.rxDone) >= rxBatch || r.starved.Load()
	r.rxMu.Unlock()
	if kick {
		select {
		case r.rxKick <- struct{}{}:
		default:
		}
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

// finish feeds a check's result to the schedule.
func (r *runner) finish(res result) {
	t := res.t
	delete(r.inflight, t)
	if t.gone || r.ctx.Err() != nil {
		r.s.Abandon(t)
		return
	}
	ok := res.err == nil
	reason := Reason(res.err, t.spec.Timeout)
	if r.m.observe != nil {
		failure := ""
		if !ok {
			failure = FailureClass(t.spec.Type, res.err)
		}
		r.m.observe(t.id, res.end.Sub(res.start), failure)
	}
	r.m.mu.Lock()
	tr, changed := r.s.Result(res.end, t, ok, reason)
	r.m.mu.Unlock()
	if changed {
		r.m.log.Debug("real server state changed", "id", tr.ID, "up", tr.Up, "reason", tr.Reason)
	}
}

// applyUpdate hands the latest Update to the schedule, sets up the checkers
// of new checks and stops the checks of removed targets.
func (r *runner) applyUpdate() {
	r.m.mu.Lock()
	desired := r.m.desired
	r.m.desired = nil
	var added, removed []*tracked
	if desired != nil {
		added, removed = r.s.Update(time.Now(), desired)
	}
	r.m.mu.Unlock()
	if desired == nil {
		return
	}
	for _, t := range added {
		if sc := r.checkers[t.spec]; sc != nil {
			sc.refs++
			continue
		}
		c, err := r.m.newChecker(*t.spec)
		if err != nil {
			// Update validated the spec; only e.g. an unreadable CA file
			// gets here. Such a target fails every check, loudly.
			r.m.log.Error("health check not set up", "id", t.id, "err", err)
			c = CheckerFunc(func(context.Context, netip.AddrPort) error {
				return fmt.Errorf("check not set up: %w", err)
			})
		}
		r.checkers[t.spec] = &sharedChecker{c: c, refs: 1}
	}
	for _, t := range removed {
		r.stop(t)
		if sc := r.checkers[t.spec]; sc != nil {
			if sc.refs--; sc.refs == 0 {
				delete(r.checkers, t.spec)
			}
		}
	}
	r.m.log.Debug("health check targets updated", "targets", len(desired), "new", len(added))
}

func (r *runner) shutdown() {
	for t := range r.inflight {
		r.stop(t)
	}
	// A cancelled reactor probe reports at once (from cancel itself);
	// goroutine checks report when they notice.
	r.collect()
	for ; r.goRuns > 0; r.goRuns-- {
		<-r.results
	}
}
