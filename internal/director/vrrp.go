package director

import (
	"context"
	"errors"
	"log/slog"
	"os/exec"
	"reflect"
	"sync"
	"time"

	"github.com/lvsha/lvsha/internal/director/control"
	"github.com/lvsha/lvsha/vrrp"
)

// vrrpRunner runs one VRRP instance and restarts it when it fails (a socket
// or netlink error), so one broken interface does not take the daemon down.
type vrrpRunner struct {
	name string
	log  *slog.Logger
	vips *vipRecord
	// start starts notify commands; onState hears the instance's
	// transitions (by instance name).
	start   func(*exec.Cmd) error
	onState func(string, vrrp.State)
	// prime hands a new instance what it follows besides its links;
	// onOwnFault hears its own fault cause (by instance name).
	prime      func(string, *vrrp.Instance)
	onOwnFault func(string, string)
	cancel     context.CancelFunc
	done       chan struct{}

	mu   sync.Mutex
	cfg  vrrp.Config // a reload may change it in place (update)
	inst *vrrp.Instance
	err  string // why the instance is not running, if it is not
}

func startVRRP(ctx context.Context, cfg vrrp.Config, log *slog.Logger, vips *vipRecord, start func(*exec.Cmd) error, onState func(string, vrrp.State),
	prime func(string, *vrrp.Instance), onOwnFault func(string, string)) *vrrpRunner {
	ctx, cancel := context.WithCancel(ctx)
	r := &vrrpRunner{name: cfg.Name, cfg: cfg, log: log, vips: vips, start: start, onState: onState,
		prime: prime, onOwnFault: onOwnFault, cancel: cancel, done: make(chan struct{})}
	go r.loop(ctx)
	return r
}

func (r *vrrpRunner) loop(ctx context.Context) {
	defer close(r.done)
	for failures := 0; ; failures++ {
		inst, err := vrrp.New(r.config(), r.log, vrrp.WithCommandStarter(r.start),
			vrrp.WithVIPRecorder(r.vips.recorder(r.name)),
			vrrp.WithStateListener(func(s vrrp.State) { r.onState(r.name, s) }),
			vrrp.WithOwnFaultListener(func(c string) { r.onOwnFault(r.name, c) }))
		if err == nil {
			r.mu.Lock()
			r.inst, r.err = inst, ""
			r.mu.Unlock()
			// After r.inst is set: a value that changes from now on is
			// pushed to it too.
			r.prime(r.name, inst)
			err = inst.Run(ctx)
		}
		if ctx.Err() != nil {
			return
		}
		if err == nil {
			err = errors.New("stopped by itself")
		}
		if errors.Is(err, vrrp.ErrInterfaceReplaced) {
			// Not a failure: run again at once, on the new interface.
			r.log.Warn("vrrp instance: starting again on the re-created interface", "instance", r.name, "err", err)
			failures = -1
			continue
		}
		wait := backoff(failures)
		r.log.Error("vrrp instance failed; restarting", "instance", r.name, "err", err, "retry_in", wait)
		r.mu.Lock()
		r.err = err.Error()
		r.mu.Unlock()
		select {
		case <-ctx.Done():
			return
		case <-time.After(wait):
		}
	}
}

// pushTracks hands the running instance the tracked values and its sync
// group's hold.
func (r *vrrpRunner) pushTracks() {
	r.mu.Lock()
	inst := r.inst
	r.mu.Unlock()
	if inst != nil {
		r.prime(r.name, inst)
	}
}

// stop shuts the instance down cleanly (priority 0, VIPs removed) and waits.
func (r *vrrpRunner) stop() {
	r.cancel()
	<-r.done
}

// config is the instance's current config.
func (r *vrrpRunner) config() vrrp.Config {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.cfg
}

// update applies a reload that vrrp.InPlace allows to the running
// instance, and to the ones a restart makes later.
func (r *vrrpRunner) update(cfg vrrp.Config) error {
	r.mu.Lock()
	r.cfg = cfg
	inst := r.inst
	r.mu.Unlock()
	if inst == nil {
		return nil
	}
	return inst.Update(cfg)
}

func (r *vrrpRunner) status() control.VRRPStatus {
	r.mu.Lock()
	inst, errText, cfg := r.inst, r.err, r.cfg
	r.mu.Unlock()
	st := control.VRRPStatus{Name: cfg.Name, Interface: cfg.Interface, VRID: int(cfg.VRID), State: "INIT", Priority: int(cfg.Priority)}
	for _, p := range cfg.VIPs {
		st.VIPs = append(st.VIPs, p.String())
	}
	if inst != nil {
		s := inst.Status()
		st.State = s.State.String()
		st.Priority = int(s.Priority)
		if s.Master.IsValid() {
			st.Master = s.Master.String()
		}
		st.Since, st.LastCause = s.Since, s.Cause
		st.AdvertsOut, st.AdvertsIn, st.Transitions = s.AdvertsSent, s.AdvertsReceived, s.Transitions
		st.Dropped = s.Dropped
		st.GARPSuppressed = s.GARPSuppressed
		st.SendErrors, st.LastSendError = s.SendErrors, s.LastSendError
	}
	if errText != "" {
		st.State, st.LastCause = "FAILED", errText
	}
	return st
}

// sameVRRP says whether a reload leaves an instance alone.
func sameVRRP(a, b vrrp.Config) bool {
	return reflect.DeepEqual(a, b)
}
