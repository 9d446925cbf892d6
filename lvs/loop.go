package lvs

import (
	"context"
	"fmt"
	"log/slog"
	"net/netip"
	"slices"
	"strings"
	"time"
)

// Loop owns a Reconciler (and so its kernel handle) in the one goroutine
// that runs Run: Apply and Snapshot are requests to that goroutine. Every
// interval it re-reads the kernel and repairs drift, logging each repair.
type Loop struct {
	// OnRepair, if set before Run, is called on the loop's goroutine after
	// each periodic repair (e.g. for metrics).
	OnRepair func(Report, error)

	r        *Reconciler
	interval time.Duration
	log      *slog.Logger
	reqs     chan func()
}

// NewLoop returns a loop over r that repairs drift every interval (0: never).
func NewLoop(r *Reconciler, interval time.Duration, log *slog.Logger) *Loop {
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	return &Loop{r: r, interval: interval, log: log, reqs: make(chan func())}
}

// Run serves requests and repairs drift until ctx is done.
func (l *Loop) Run(ctx context.Context) error {
	var tick <-chan time.Time
	if l.interval > 0 {
		t := time.NewTicker(l.interval)
		defer t.Stop()
		tick = t.C
	}
	for {
		select {
		case <-ctx.Done():
			return nil
		case f := <-l.reqs:
			f()
		case <-tick:
			rep, err := l.r.Repair()
			for _, op := range rep.Ops {
				l.log.Warn("ipvs: repaired drift", "op", op.String())
			}
			if err != nil {
				l.log.Error("ipvs: drift repair failed", "err", err)
			}
			if l.OnRepair != nil {
				l.OnRepair(rep, err)
			}
		}
	}
}

// do runs f on the loop's goroutine and waits for it.
func (l *Loop) do(ctx context.Context, f func()) error {
	done := make(chan struct{})
	select {
	case l.reqs <- func() { f(); close(done) }:
	case <-ctx.Done():
		return fmt.Errorf("lvs: loop not running: %w", ctx.Err())
	}
	<-done
	return nil
}

// Apply applies desired on the loop's goroutine (see Reconciler.Apply) and
// logs the changes.
func (l *Loop) Apply(ctx context.Context, desired []Service) (Report, error) {
	var rep Report
	var err error
	if derr := l.do(ctx, func() { rep, err = l.r.Apply(desired) }); derr != nil {
		return rep, derr
	}
	for _, op := range rep.Ops {
		l.log.Info("ipvs: change", "op", op.String())
	}
	return rep, err
}

// Snapshot reads the kernel's table on the loop's goroutine.
func (l *Loop) Snapshot(ctx context.Context) (Snapshot, error) {
	var s Snapshot
	var err error
	if derr := l.do(ctx, func() { s, err = l.r.Snapshot() }); derr != nil {
		return s, derr
	}
	return s, err
}

// Snapshot is the kernel's IPVS table with counters, for status output.
type Snapshot struct {
	Services []SnapService
}

// SnapService is one virtual service of a Snapshot.
type SnapService struct {
	KService
	// Owned services are managed by this reconciler; the others are left
	// alone and shown for information.
	Owned      bool
	QuorumLost bool
	Dests      []KDest
}

// Snapshot reads every service of the kernel's table with its real servers
// and counters (which lag up to ~2 s in the kernel).
func (r *Reconciler) Snapshot() (Snapshot, error) {
	svcs, err := r.k.Services()
	if err != nil {
		return Snapshot{}, fmt.Errorf("lvs: list services: %w", err)
	}
	var s Snapshot
	for _, ks := range svcs {
		ds, err := r.k.Destinations(ks.Key)
		if err != nil {
			return Snapshot{}, fmt.Errorf("lvs: list destinations of %v: %w", ks.Key, err)
		}
		slices.SortFunc(ds, func(a, b KDest) int { return a.Addr.Compare(b.Addr) })
		s.Services = append(s.Services, SnapService{KService: ks, Owned: r.owned[ks.Key], QuorumLost: r.quorum[ks.Key], Dests: ds})
	}
	slices.SortFunc(s.Services, func(a, b SnapService) int { return strings.Compare(a.Key.String(), b.Key.String()) })
	return s, nil
}

// Find returns the service with key k.
func (s Snapshot) Find(k Key) (SnapService, bool) {
	for _, svc := range s.Services {
		if svc.Key == k {
			return svc, true
		}
	}
	return SnapService{}, false
}

// Dest returns the destination at a.
func (s SnapService) Dest(a netip.AddrPort) (KDest, bool) {
	for _, d := range s.Dests {
		if d.Addr == a {
			return d, true
		}
	}
	return KDest{}, false
}
