package director

import (
	"context"
	"log/slog"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/lvsha/lvsha/conf"
	"github.com/lvsha/lvsha/lvs"
)

// ipvsPart feeds the IPVS reconciler loop. The daemon's main goroutine hands
// it the newest desired table and never waits for the kernel; if IPVS cannot
// be opened (module missing), it keeps retrying and says so in logs and
// status, while VRRP and health checks go on.
type ipvsPart struct {
	log       *slog.Logger
	interval  time.Duration
	want      chan []lvs.Service // capacity 1: only the newest table matters
	open      func() (lvs.Kernel, func(), error)
	observe   func(rep lvs.Report, err error, repair bool)
	statePath string
	// oldStatePath is where an older lvsha kept statePath's content.
	oldStatePath string
	first        chan struct{} // closed when the first apply has been tried
	firstOnce    sync.Once
	cancel       context.CancelFunc
	done         chan struct{}

	mu      sync.Mutex
	loop    *lvs.Loop
	lastErr string
	// failed are the services whose changes the kernel refused in the
	// last apply or repair, with the reason, for status.
	failed  map[lvs.Key]string
	applied int // Apply calls that succeeded
	// programmed are the services the last apply left in the kernel as
	// desired (BGP announces only what they serve).
	programmed map[lvs.Key]bool
}

// newIPVSPart prepares the IPVS part; start runs it. It exists from New on,
// so status may ask it at any time without racing the daemon's start-up.
func newIPVSPart(cfg *conf.Config, log *slog.Logger, open func() (lvs.Kernel, func(), error)) *ipvsPart {
	if open == nil {
		open = func() (lvs.Kernel, func(), error) {
			k, err := lvs.OpenIPVS("")
			if err != nil {
				return nil, nil, err
			}
			return k, k.Close, nil
		}
	}
	return &ipvsPart{
		log:      log,
		interval: cfg.Global.IPVSRepairInterval.D(),
		want:     make(chan []lvs.Service, 1),
		done:     make(chan struct{}),
		open:     open,
		first:    make(chan struct{}),
		// Which services are ours must survive a restart, or one removed
		// from the config meanwhile would stay in the kernel for ever.
		statePath:    stateFile(cfg, ownedFile),
		oldStatePath: oldOwnedFile(cfg),
	}
}

// start runs the part until stop; observe hears of every apply and repair.
func (p *ipvsPart) start(ctx context.Context, observe func(rep lvs.Report, err error, repair bool)) {
	ctx, p.cancel = context.WithCancel(ctx)
	p.observe = observe
	go p.run(ctx)
}

func (p *ipvsPart) stop() {
	p.cancel()
	<-p.done
}

// set replaces the desired table; the applier picks up the newest.
func (p *ipvsPart) set(desired []lvs.Service) {
	select {
	case <-p.want:
	default:
	}
	p.want <- desired
}

func (p *ipvsPart) run(ctx context.Context) {
	defer close(p.done)
	var (
		loop     *lvs.Loop
		loopDone chan struct{}
		pending  []lvs.Service
		havePend bool
		failures int
		retry    <-chan time.Time
	)
	defer func() {
		if loopDone != nil {
			<-loopDone
		}
	}()
	for {
		fresh := false
		select {
		case <-ctx.Done():
			return
		case d := <-p.want:
			pending, havePend, fresh = d, true, true
		case <-retry:
			retry = nil
		}
		if !havePend {
			continue
		}
		// The back-off paces retries of a table that failed, and the
		// opening of IPVS. A new table (a health verdict, a reload) goes
		// to an open kernel at once: one service the kernel refuses must
		// not hold back every other service's weights for up to 30 s.
		if retry != nil && (!fresh || loop == nil) {
			continue
		}
		if loop == nil {
			if len(pending) == 0 {
				havePend = false // nothing to program: no need for IPVS at all
				p.settled()
				continue
			}
			k, closeK, err := p.open()
			if err != nil {
				p.fail("open IPVS failed", err, &failures, &retry)
				p.settled()
				continue
			}
			rec := lvs.NewReconciler(k, p.log)
			if p.statePath != "" {
				adoptOldOwned(p.statePath, p.oldStatePath, p.log)
				if err := rec.PersistOwned(p.statePath); err != nil {
					p.log.Warn("ipvs: cannot load the services a previous run owned", "err", err)
				}
			}
			loop = lvs.NewLoop(rec, p.interval, p.log)
			loop.OnRepair = func(rep lvs.Report, err error) {
				p.recordFailed(rep, err, nil)
				p.observe(rep, err, true)
			}
			loopDone = make(chan struct{})
			go func() {
				defer close(loopDone)
				defer closeK()
				_ = loop.Run(ctx)
			}()
			p.mu.Lock()
			p.loop = loop
			p.mu.Unlock()
		}
		rep, err := loop.Apply(ctx, pending)
		if err != nil {
			if ctx.Err() != nil {
				return
			}
			// Whatever the kernel accepted is applied (the reconciler
			// makes every change it can): only the rest is retried.
			what := "apply failed"
			if len(rep.Failed) > 0 {
				what = "applied except " + strings.Join(failedKeys(rep), ", ")
			}
			summary := what + ": " + err.Error()
			if len(rep.Failed) > 0 {
				p.recordProgrammed(pending, rep.Failed)
			}
			p.recordFailed(rep, err, &summary)
			p.observe(rep, err, false)
			p.fail(what, err, &failures, &retry)
			p.settled()
			continue
		}
		none := ""
		p.recordProgrammed(pending, nil)
		p.recordFailed(rep, nil, &none)
		p.observe(rep, nil, false)
		havePend, failures, retry = false, 0, nil
		p.settled()
		p.mu.Lock()
		p.applied++
		p.mu.Unlock()
	}
}

// failedKeys lists the services a report says failed, sorted.
func failedKeys(rep lvs.Report) []string {
	keys := make([]string, 0, len(rep.Failed))
	for k := range rep.Failed {
		keys = append(keys, k.String())
	}
	slices.Sort(keys)
	return keys
}

// recordFailed keeps which services the kernel refused, for status, and,
// if lastErr is not nil, the error status shows for the whole table: both
// under one lock, so that status never shows a service refused while
// ipvs_error is still empty, or the reverse. A failure with no per-service
// errors (the table could not be read) says nothing about the services, so
// the last known ones stay.
func (p *ipvsPart) recordFailed(rep lvs.Report, err error, lastErr *string) {
	keep := err != nil && len(rep.Failed) == 0
	var failed map[lvs.Key]string
	for k, e := range rep.Failed {
		if failed == nil {
			failed = make(map[lvs.Key]string, len(rep.Failed))
		}
		failed[k] = e.Error()
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	if !keep {
		p.failed = failed
	}
	if lastErr != nil {
		p.lastErr = *lastErr
	}
}

// recordProgrammed notes that the services of applied are in the kernel,
// but for those failed.
func (p *ipvsPart) recordProgrammed(applied []lvs.Service, failed map[lvs.Key]error) {
	m := make(map[lvs.Key]bool, len(applied))
	for i := range applied {
		if _, bad := failed[applied[i].Key]; !bad {
			m[applied[i].Key] = true
		}
	}
	p.mu.Lock()
	p.programmed = m
	p.mu.Unlock()
}

// isProgrammed reports whether the last apply put service k in the kernel.
func (p *ipvsPart) isProgrammed(k lvs.Key) bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.programmed[k]
}

// serviceError says why the kernel refused service k, "" if it did not.
func (p *ipvsPart) serviceError(k lvs.Key) string {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.failed[k]
}

// settled marks the end of the first attempt to program the kernel, done or
// failed, which is when the daemon tells systemd it is ready.
func (p *ipvsPart) settled() {
	p.firstOnce.Do(func() { close(p.first) })
}

func (p *ipvsPart) fail(what string, err error, failures *int, retry *<-chan time.Time) {
	wait := backoff(*failures)
	*failures++
	p.log.Error("ipvs: "+what+"; retrying", "err", err, "retry_in", wait)
	p.mu.Lock()
	p.lastErr = what + ": " + err.Error()
	p.mu.Unlock()
	*retry = time.After(wait)
}

// snapshot reads the kernel table; ok is false when IPVS is not open.
func (p *ipvsPart) snapshot(ctx context.Context) (lvs.Snapshot, string, bool) {
	p.mu.Lock()
	loop, lastErr := p.loop, p.lastErr
	p.mu.Unlock()
	if loop == nil {
		return lvs.Snapshot{}, lastErr, false
	}
	s, err := loop.Snapshot(ctx)
	if err != nil {
		return s, err.Error(), false
	}
	return s, lastErr, true
}

// desiredServices combines the config's IPVS services with the health
// verdicts, and adds the fwmark services of the via_vip marks.
func desiredServices(cfg *conf.Config, health map[string]bool, marks map[string]uint32) []lvs.Service {
	out := make([]lvs.Service, 0, len(cfg.Services)+len(marks))
	for i := range cfg.Services {
		vs := &cfg.Services[i]
		s := vs.IPVS
		s.Reals = make([]lvs.Real, len(vs.IPVS.Reals))
		for j, r := range vs.IPVS.Reals {
			up, checked := health[vs.Reals[j].ID]
			r.Up = up || !checked
			s.Reals[j] = r
		}
		out = append(out, s)
	}
	return append(out, viaServices(cfg, marks)...)
}

// reconcile hands IPVS the table the config and health now call for.
func (d *Daemon) reconcile(reason string) {
	d.mu.Lock()
	cfg, marks := d.cfg, d.marks
	d.mu.Unlock()
	health, _ := d.verdicts(cfg)
	desired := desiredServices(cfg, health, marks)
	d.log.Debug("ipvs: reconcile", "reason", reason, "services", len(desired))
	d.ipvs.set(desired)
}
