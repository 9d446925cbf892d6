// Package director wires lvsha's parts into the director daemon: VRRP
// instances, health checks and the IPVS reconciler, the control socket that
// `lvsha status` asks, and reload on SIGHUP.
//
// Both directors run health checks and program IPVS all the time, whatever
// their VRRP state, so a takeover needs nothing but the VIPs to move.
package director

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"reflect"
	"runtime/debug"
	"sync"
	"sync/atomic"
	"time"

	"github.com/lvsha/lvsha/conf"
	"github.com/lvsha/lvsha/healthcheck"
	"github.com/lvsha/lvsha/internal/director/checker"
	"github.com/lvsha/lvsha/internal/process"
	"github.com/lvsha/lvsha/lvs"
	"github.com/lvsha/lvsha/vrrp"
)

// Options are the daemon's settings that do not come from the config file.
type Options struct {
	Version string
	// Reload delivers a value for each reload request (SIGHUP).
	Reload <-chan os.Signal
	// OpenIPVS opens the IPVS table; nil means the kernel's in the current
	// network namespace. Tests pass an in-memory one.
	OpenIPVS func() (lvs.Kernel, func(), error)
	// OpenSync opens the kernel's sync daemon control; nil means the
	// kernel's in the current network namespace. Tests pass a fake.
	OpenSync func() (lvs.SyncControl, func(), error)
	// CheckerCommand starts the health checker process; nil means this
	// binary as `lvsha checker` (checker.Command).
	CheckerCommand func() *exec.Cmd
	// OpenBGP starts the BGP speaker of [bgp]; nil means the embedded
	// GoBGP. Tests pass a fake.
	OpenBGP func(conf.BGP) (Speaker, error)
	// HoldBGPVIPs adds (add) or removes the VIPs of [bgp] on their
	// interface; nil means the kernel's. Tests without root pass a fake.
	HoldBGPVIPs func(iface string, vips []netip.Prefix, add bool) error
	// WriteSysctl sets a sysctl (key as in sysctl(8), net.ipv4.vs.x);
	// nil means /proc/sys. Tests pass a recorder.
	WriteSysctl func(key, value string) error
}

// Daemon is a running director.
type Daemon struct {
	log  *slog.Logger
	opts Options

	mu      sync.Mutex
	cfg     *conf.Config
	marks   map[string]uint32 // via_vip marks of cfg's real servers, by ID
	started time.Time
	vrrp    map[string]*vrrpRunner // by instance name
	// hc owns the real servers' health verdicts (hc.Verdicts, by real
	// server ID; absent = no check, so up); set by New: status may ask
	// it before Run starts it.
	hc *checker.Client
	// ipvs programs the kernel; set by New too, for the same reason.
	ipvs *ipvsPart
	// syncp runs the kernel's connection sync daemons; set by New.
	syncp *syncPart
	// bgpp announces the VIPs of [bgp]; nil when there is none.
	bgpp *bgpPart
	// arp probes the VIPs this node is master of for ARP leaks; set by New.
	// arpChanged hears of each change of what it reports; arpDown are the
	// real servers global.arp_leak = "fail" took out when the main loop
	// last applied one (main loop only).
	arp        *arpWatch
	arpChanged chan struct{}
	arpDown    map[string]string
	metrics    *metrics
	// vips records the VIPs the instances hold; set by Run.
	vips *vipRecord
	// tracks reads the tracked files and runs the tracked scripts; set by
	// New.
	tracks *tracker
	// groups makes sync groups fail over together; set by New.
	groups *syncGroups
	// notifyCaps is global.notify_capabilities, read at each start so that
	// a reload applies to the next notify command.
	notifyCaps atomic.Uint64
}

// startNotify starts a notify command: normal scheduling, and no
// capabilities of the daemon's but those the config lets it keep.
func (d *Daemon) startNotify(cmd *exec.Cmd) error {
	return process.ChildStarter(process.Caps(d.notifyCaps.Load()))(cmd)
}

// New returns a daemon for a validated config.
func New(cfg *conf.Config, log *slog.Logger, opts Options) *Daemon {
	cmd := opts.CheckerCommand
	if cmd == nil {
		cmd = checker.Command(cfg.Global.LogLevel, cfg.Global.LogFormat)
	}
	d := &Daemon{cfg: cfg, log: log, opts: opts, vrrp: map[string]*vrrpRunner{},
		hc: checker.NewClient(log, cmd), ipvs: newIPVSPart(cfg, log, opts.OpenIPVS),
		syncp: newSyncPart(cfg, log, opts.OpenSync)}
	if cfg.BGP != nil {
		d.bgpp = newBGPPart(*cfg.BGP, log, opts.OpenBGP, opts.HoldBGPVIPs, d.bgpVerdicts)
		if opts.WriteSysctl != nil {
			d.bgpp.sysctl = opts.WriteSysctl
		}
	}
	// Tracked scripts check and report: normal scheduling, and none of
	// the daemon's capabilities.
	d.tracks = newTracker(log, process.ChildStarter(0), d.pushTracks)
	d.groups = newSyncGroups(log, d.startNotify, d.pushTracks, d.stepDown)
	d.arpChanged = make(chan struct{}, 1)
	d.arp = newARPWatch(log, d.masterConfigs, func() {
		select {
		case d.arpChanged <- struct{}{}:
		default:
		}
	})
	return d
}

// bgpVerdicts applies bgpVerdicts to the running config, the health
// verdicts and what IPVS holds.
func (d *Daemon) bgpVerdicts(vips []netip.Prefix) map[netip.Prefix]string {
	d.mu.Lock()
	cfg, marks := d.cfg, d.marks
	d.mu.Unlock()
	health, _ := d.verdicts(cfg)
	desired := desiredServices(cfg, health, marks)
	return bgpVerdicts(vips, desired, d.ipvs.isProgrammed)
}

// pushTracks hands the tracked values and the sync groups' holds to every
// instance (each acts only on what changed for it).
func (d *Daemon) pushTracks() {
	for _, r := range d.vrrpRunners() {
		r.pushTracks()
	}
}

// stepDown makes a MASTER instance BACKUP for its sync group.
func (d *Daemon) stepDown(instance, cause string) {
	d.mu.Lock()
	r := d.vrrp[instance]
	d.mu.Unlock()
	if r == nil {
		return
	}
	r.mu.Lock()
	inst := r.inst
	r.mu.Unlock()
	if inst != nil {
		inst.StepDown(cause)
	}
}

// prime hands an instance what it follows besides its links: the tracked
// values and its sync group's hold. Neither call blocks.
func (d *Daemon) prime(name string, inst *vrrp.Instance) {
	d.tracks.replay(inst)
	inst.SetGroupFault(d.groups.hold(name))
}

// Run starts every part, runs until ctx is done, then shuts down in order:
// VRRP first (a master hands over at once with a priority-0 advert and
// drops its VIPs), then health checks; IPVS is left programmed so a restart
// or the other director loses no connection.
func (d *Daemon) Run(ctx context.Context) error {
	d.mu.Lock() // status may already be asking
	d.started = time.Now()
	d.mu.Unlock()
	cfg := d.config()
	d.log.Info("lvsha starting", "version", d.opts.Version, "config", cfg.File,
		"vrrp_instances", len(cfg.VRRP), "virtual_services", len(cfg.Services))

	ctl, err := d.listenControl(cfg.Global.ControlSocket)
	if err != nil {
		return err
	}
	srv := &http.Server{Handler: d.controlHandler(), ReadHeaderTimeout: 5 * time.Second}
	go func() {
		if err := srv.Serve(ctl); err != nil && !errors.Is(err, http.ErrServerClosed) {
			d.log.Error("control socket stopped", "err", err)
		}
	}()
	defer func() {
		_ = srv.Close()
		_ = os.Remove(cfg.Global.ControlSocket)
	}()

	// VIPs a killed run left would answer for addresses the other
	// director holds now, and a VIP since removed from the config would
	// stay for good: remove what the record names before any instance
	// starts (the control socket above proved no other daemon runs). A
	// failure must not keep the pair from serving: it is logged.
	if n, err := RemoveLeftoverVIPs(cfg.Global.StateDir, d.log); err != nil {
		d.log.Error("cannot remove every VIP a previous run left", "removed", n, "err", err)
	}
	d.notifyCaps.Store(cfg.Global.NotifyCaps)
	if err := process.CheckChildCaps(); err != nil {
		d.log.Warn("child processes keep network capabilities", "err", err,
			"fix", "give the daemon CAP_SETPCAP (the packaged unit does)")
	}
	d.vips = newVIPRecord(stateFile(cfg, vipsFile), d.log)
	defer d.vips.close() // after the instances stopped (deferred later): their releases are written

	d.metrics = newMetrics(d)
	if listen := cfg.Global.MetricsListen; listen != "" {
		stopMetrics, err := d.serveMetrics(ctx, listen)
		if err != nil {
			return err
		}
		defer stopMetrics()
	}

	// Health checks first, so IPVS starts from their initial verdicts.
	marks := assignMarks(nil, cfg)
	d.mu.Lock()
	d.marks = marks
	d.mu.Unlock()
	acceptLocal(cfg, marks, d.log)
	targets := healthTargets(cfg, marks)
	hcCtx, hcStop := context.WithCancel(context.WithoutCancel(ctx))
	if err := d.hc.Update(targets); err != nil {
		hcStop()
		return fmt.Errorf("health checks: %w", err)
	}
	hcDone := make(chan struct{})
	go func() {
		defer close(hcDone)
		_ = d.hc.Run(hcCtx)
	}()
	defer func() {
		hcStop()
		<-hcDone
	}()

	d.ipvs.start(ctx, func(rep lvs.Report, err error, repair bool) {
		d.metrics.observeApply(rep, err, repair)
		if d.bgpp != nil {
			d.bgpp.poke() // what IPVS holds may have changed
		}
	})
	defer d.ipvs.stop()
	d.reconcile("start")
	// READY means the table is programmed (or failed loudly and is being
	// retried): a unit ordered after lvsha finds IPVS in place.
	select {
	case <-d.ipvs.first:
	case <-ctx.Done():
	}
	// BGP stops (withdraw, drain) before IPVS, and after VRRP (deferred
	// later), so the director serves until the routers moved its flows.
	if d.bgpp != nil {
		d.bgpp.record = d.vips.recorder(bgpRecordKey)
		d.bgpp.start()
		defer d.bgpp.stop()
	}
	if err := sdNotify("READY=1"); err != nil {
		d.log.Warn("systemd notify", "err", err)
	}
	// Loading a big config is the daemon's one burst of garbage (10,000
	// real servers: about a third of its heap); give it back now rather
	// than carry it for as long as the runtime's scavenger takes.
	debug.FreeOSMemory()

	vctx := context.WithoutCancel(ctx) // stopped explicitly, in order
	// The sync daemons follow VRRP, so they stop after it (deferred
	// first): the last pass sees a master that has resigned.
	d.syncp.start(vctx)
	defer d.syncp.stop()
	// Tracking stops after VRRP (deferred first): an instance never
	// runs without its values.
	d.tracks.update(vctx, cfg)
	defer d.tracks.stop()
	d.groups.update(vctx, cfg.SyncGroups)
	defer d.groups.stop()
	for _, in := range cfg.VRRP {
		r := startVRRP(vctx, in.Runtime, d.log, d.vips, d.startNotify, d.onVRRPState, d.prime, d.groups.ownFault)
		d.mu.Lock()
		d.vrrp[in.Name] = r
		d.mu.Unlock()
	}
	defer d.stopVRRP()
	arpCtx, arpStop := context.WithCancel(vctx)
	arpDone := make(chan struct{})
	go func() { defer close(arpDone); d.arp.run(arpCtx) }()
	defer func() { arpStop(); <-arpDone }() // before VRRP stops: no probe of a VIP being released

	for {
		select {
		case <-ctx.Done():
			d.log.Info("lvsha stopping", "cause", context.Cause(ctx))
			_ = sdNotify("STOPPING=1")
			return nil
		case <-d.opts.Reload:
			_ = sdNotify("RELOADING=1")
			d.reload(vctx)
			_ = sdNotify("READY=1")
			debug.FreeOSMemory()
		case <-d.arpChanged:
			d.onARPLeaks()
		case tr, ok := <-d.hc.Transitions():
			if !ok {
				return errors.New("health checks stopped")
			}
			d.onHealth(tr)
		}
	}
}

func (d *Daemon) stopVRRP() {
	var wg sync.WaitGroup
	for _, r := range d.vrrpRunners() {
		wg.Go(r.stop)
	}
	wg.Wait()
}

func (d *Daemon) vrrpRunners() []*vrrpRunner {
	d.mu.Lock()
	defer d.mu.Unlock()
	out := make([]*vrrpRunner, 0, len(d.vrrp))
	for _, r := range d.vrrp {
		out = append(out, r)
	}
	return out
}

func (d *Daemon) config() *conf.Config {
	d.mu.Lock()
	defer d.mu.Unlock()
	return d.cfg
}

func (d *Daemon) onHealth(tr healthcheck.Transition) {
	if _, known := d.hc.Verdict(tr.ID); !known {
		return // a target removed by a reload
	}
	state := "DOWN"
	if tr.Up {
		state = "UP"
	}
	d.log.Info("real server "+state, "real_server", tr.ID, "reason", tr.Reason)
	d.reconcile("health " + tr.ID + " " + state)
}

// reload reads the config file again. An invalid file, or one whose checks
// cannot start, changes nothing. A valid one is applied as a difference:
// unchanged VRRP instances keep running (a master stays master), unchanged
// real servers keep their health state, IPVS gets only the changes.
func (d *Daemon) reload(vctx context.Context) {
	old := d.config()
	cfg, warnings, err := conf.Load(old.File)
	if err != nil {
		var inv *conf.InvalidError
		if errors.As(err, &inv) {
			for _, dg := range inv.Diags {
				d.log.Error("reload: config problem", "problem", dg.Format(old.File))
			}
		}
		d.log.Error("reload rejected: keeping the running config", "config", old.File, "err", err)
		d.metrics.observeReload(false)
		return
	}
	for _, w := range warnings {
		d.log.Warn("reload: config warning", "warning", w.Format(old.File))
	}
	if g, o := &cfg.Global, &old.Global; g.ControlSocket != o.ControlSocket || g.MetricsListen != o.MetricsListen || g.StateDir != o.StateDir {
		d.log.Warn("reload: control_socket, metrics_listen and state_dir changes need a restart; keeping the old ones")
		g.ControlSocket, g.MetricsListen, g.StateDir = o.ControlSocket, o.MetricsListen, o.StateDir
	}
	bgpChanged := !reflect.DeepEqual(cfg.BGP, old.BGP)
	if why := bgpRestartNeeded(old.BGP, cfg.BGP); bgpChanged && why != "" {
		d.log.Warn("reload: "+why+"; keeping the running [bgp]", "config", old.File)
		cfg.BGP, bgpChanged = old.BGP, false
	}
	d.mu.Lock()
	marks := assignMarks(d.marks, cfg)
	d.mu.Unlock()
	targets := healthTargets(cfg, marks)
	if err := d.hc.Update(targets); err != nil {
		d.log.Error("reload rejected: keeping the running config", "config", old.File, "err", err)
		d.metrics.observeReload(false)
		return
	}
	d.mu.Lock()
	d.cfg, d.marks = cfg, marks
	d.mu.Unlock()
	acceptLocal(cfg, marks, d.log)
	d.notifyCaps.Store(cfg.Global.NotifyCaps)

	if bgpChanged {
		// Before IPVS: a VIP leaving announce (its service too, perhaps)
		// is withdrawn as early as can be.
		d.bgpp.update(*cfg.BGP)
	}
	d.noteARPFailed(cfg) // arp_leak may have changed
	d.reconcile("reload")
	d.tracks.update(vctx, cfg)
	d.groups.update(vctx, cfg.SyncGroups)
	d.reloadVRRP(vctx, cfg)
	d.syncp.setConfig(cfg.Sync)
	d.metrics.observeReload(true)
	d.log.Info("reload applied", "config", cfg.File)
}

func (d *Daemon) reloadVRRP(vctx context.Context, cfg *conf.Config) {
	want := map[string]bool{}
	for _, in := range cfg.VRRP {
		want[in.Name] = true
	}
	// Removed instances go first: a new one's start-up removes VIPs of its
	// own left on the interface, and a renamed instance's VIPs are still
	// held by the old name until it stops.
	for _, r := range d.vrrpRunners() {
		if !want[r.name] {
			d.log.Info("reload: vrrp instance removed; stopping it", "instance", r.name)
			r.stop()
			d.mu.Lock()
			delete(d.vrrp, r.name)
			d.mu.Unlock()
			d.groups.forget(r.name)
		}
	}
	for _, in := range cfg.VRRP {
		vc := in.Runtime
		d.mu.Lock()
		cur := d.vrrp[in.Name]
		d.mu.Unlock()
		switch {
		case cur == nil:
			d.log.Info("reload: new vrrp instance", "instance", in.Name)
		case sameVRRP(cur.config(), vc):
			continue
		case vrrp.InPlace(cur.config(), vc):
			// notify, garp_* and what is tracked: a restart would be
			// a failover and back for an edit that needs neither.
			err := cur.update(vc)
			if err == nil {
				d.log.Info("reload: vrrp instance changed; applied in place", "instance", in.Name)
				continue
			}
			d.log.Warn("reload: vrrp instance change not applied in place; restarting it", "instance", in.Name, "err", err)
			cur.stop()
		default:
			d.log.Info("reload: vrrp instance changed; restarting it", "instance", in.Name)
			cur.stop()
		}
		r := startVRRP(vctx, vc, d.log, d.vips, d.startNotify, d.onVRRPState, d.prime, d.groups.ownFault)
		d.mu.Lock()
		d.vrrp[in.Name] = r
		d.mu.Unlock()
	}
}

// listenControl opens the control socket, 0600 so only root can ask.
func (d *Daemon) listenControl(path string) (net.Listener, error) {
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		return nil, fmt.Errorf("control socket: %w", err)
	}
	// A socket left by a crashed run would make Listen fail; a live daemon
	// answers on it, so refuse to steal it.
	if controlAnswers(path) {
		return nil, fmt.Errorf("control socket %s: another lvsha is running", path)
	}
	_ = os.Remove(path)
	l, err := net.Listen("unix", path)
	if err != nil {
		return nil, fmt.Errorf("control socket: %w", err)
	}
	if err := os.Chmod(path, 0o600); err != nil {
		_ = l.Close()
		return nil, fmt.Errorf("control socket: %w", err)
	}
	return l, nil
}
