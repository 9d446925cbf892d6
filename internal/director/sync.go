package director

import (
	"context"
	"fmt"
	"log/slog"
	"net/netip"
	"os"
	"sync"
	"time"

	"github.com/lvsha/lvsha/conf"
	"github.com/lvsha/lvsha/internal/director/control"
	"github.com/lvsha/lvsha/lvs"
	"github.com/lvsha/lvsha/vrrp"
)

// syncVersionSysctl selects the sync protocol. Version 1 carries fwmark
// services, timeouts and IPv6, which version 0 cannot.
const syncVersionSysctl = "/proc/sys/net/ipv4/vs/sync_version"

// wantSync is the daemons a director runs: a backup all the time, so that
// whichever node is master, the other one has its connections and a
// failback loses none (keepalived's lvs_sync_daemon with an instance swaps
// them and so loses every connection on failback, keepalived #1966); and a
// master while the followed instance is MASTER. nil cfg: sync is off.
func wantSync(cfg *conf.Sync, master bool) []lvs.SyncDaemon {
	if cfg == nil {
		return nil
	}
	b := cfg.Runtime
	b.State = lvs.SyncBackup
	if !master {
		return []lvs.SyncDaemon{b}
	}
	m := cfg.Runtime
	m.State = lvs.SyncMaster
	return []lvs.SyncDaemon{m, b}
}

// syncMaster says whether the master daemon runs: while the followed VRRP
// instance is MASTER, and all the time without one (active-active
// directors under [bgp]: each syncs the connections it serves to the
// others, and takes theirs as a backup).
func syncMaster(cfg *conf.Sync, masters map[string]bool) bool {
	return cfg != nil && (cfg.Instance == "" || masters[cfg.Instance])
}

// syncPart keeps the kernel's sync daemons as wantSync says, from its own
// goroutine: a VRRP transition only records the state and wakes it. It
// re-reads the daemons every interval (someone ran ipvsadm
// --stop-daemon) and retries a failure (the interface does not exist yet).
type syncPart struct {
	log      *slog.Logger
	interval time.Duration
	open     func() (lvs.SyncControl, func(), error)
	// setVersion sets sync_version=1 before a daemon starts.
	setVersion func() error
	// entries counts the IPVS connection table's entries, for status.
	entries func() (int, error)
	kick    chan struct{}
	cancel  context.CancelFunc
	done    chan struct{}

	mu  sync.Mutex
	cfg *conf.Sync
	// masters says which VRRP instances are MASTER, as their transitions
	// said (an instance's status is updated after its actions run).
	masters map[string]bool
	running []lvs.SyncDaemon // as the kernel last listed them
	lastErr string
	// used is set once lvsha has wanted a daemon: only then is there
	// anything to stop, and only then is IPVS opened for it.
	used bool
}

func newSyncPart(cfg *conf.Config, log *slog.Logger, open func() (lvs.SyncControl, func(), error)) *syncPart {
	if open == nil {
		open = func() (lvs.SyncControl, func(), error) {
			k, err := lvs.OpenIPVS("")
			if err != nil {
				return nil, nil, err
			}
			return k, k.Close, nil
		}
	}
	return &syncPart{
		log: log, interval: cfg.Global.IPVSRepairInterval.D(), open: open, cfg: cfg.Sync,
		setVersion: func() error { return os.WriteFile(syncVersionSysctl, []byte("1\n"), 0o644) },
		entries:    lvs.ConnEntries,
		kick:       make(chan struct{}, 1), done: make(chan struct{}), masters: map[string]bool{},
	}
}

func (p *syncPart) start(ctx context.Context) {
	ctx, p.cancel = context.WithCancel(ctx)
	go p.run(ctx)
}

// stop ends the part after a last pass with the state as it is then: the
// VRRP instances stop first, so a master has left MASTER and its master
// daemon is stopped here. The backup daemon stays, like the IPVS table it
// fills: a restarted lvsha (or this node becoming master while lvsha is
// down for an upgrade) finds the connections the peer synced meanwhile.
func (p *syncPart) stop() {
	p.cancel()
	<-p.done
}

// setState records a VRRP instance's transition; one of the followed
// instance into or out of MASTER wakes the part.
func (p *syncPart) setState(instance string, s vrrp.State) {
	p.mu.Lock()
	was := p.masters[instance]
	p.masters[instance] = s == vrrp.Master
	followed := p.cfg != nil && p.cfg.Instance == instance
	p.mu.Unlock()
	if followed && was != (s == vrrp.Master) {
		p.wake()
	}
}

// setConfig applies a reload's [sync]; settings the running daemons
// already have change nothing in the kernel (ApplySync compares).
func (p *syncPart) setConfig(cfg *conf.Sync) {
	p.mu.Lock()
	p.cfg = cfg
	p.mu.Unlock()
	p.wake()
}

func (p *syncPart) wake() {
	select {
	case p.kick <- struct{}{}:
	default:
	}
}

func (p *syncPart) run(ctx context.Context) {
	defer close(p.done)
	var (
		k        lvs.SyncControl
		closeK   func()
		failures int
	)
	defer func() {
		if k != nil {
			p.pass(&k, &closeK, true) // the master daemon of a node no longer master
			closeK()
		}
	}()
	p.wake()
	tick := time.NewTimer(p.interval)
	defer tick.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-p.kick:
		case <-tick.C:
		}
		wait := p.interval
		if err := p.pass(&k, &closeK, false); err != nil {
			wait = min(backoff(failures), p.interval)
			failures++
		} else {
			failures = 0
		}
		tick.Reset(wait)
	}
}

// pass brings the kernel's daemons to what is wanted now; final is the
// pass at shutdown, which stops any master daemon.
func (p *syncPart) pass(k *lvs.SyncControl, closeK *func(), final bool) error {
	p.mu.Lock()
	cfg := p.cfg
	want := wantSync(cfg, !final && syncMaster(cfg, p.masters))
	if len(want) > 0 {
		p.used = true
	}
	used := p.used
	p.mu.Unlock()
	if !used {
		return nil // sync never on: no need for IPVS at all
	}
	err := p.apply(k, closeK, want)
	p.mu.Lock()
	defer p.mu.Unlock()
	if err != nil {
		if msg := err.Error(); msg != p.lastErr {
			p.log.Error("ipvs sync: cannot run the sync daemons; retrying", "err", err)
		}
		p.lastErr = err.Error()
		return err
	}
	if p.lastErr != "" {
		p.log.Info("ipvs sync: daemons running as configured")
	}
	p.lastErr = ""
	return nil
}

func (p *syncPart) apply(k *lvs.SyncControl, closeK *func(), want []lvs.SyncDaemon) error {
	if *k == nil {
		c, cl, err := p.open()
		if err != nil {
			return fmt.Errorf("open IPVS: %w", err)
		}
		*k, *closeK = c, cl
	}
	if len(want) > 0 {
		if err := p.setVersion(); err != nil {
			return fmt.Errorf("set sync_version=1: %w", err)
		}
	}
	changed, err := lvs.ApplySync(*k, want)
	for _, c := range changed {
		p.log.Info("ipvs sync: daemon " + c)
	}
	running, lerr := (*k).Daemons()
	if lerr == nil {
		p.mu.Lock()
		p.running = running
		p.mu.Unlock()
	}
	if err != nil {
		return err
	}
	return lerr
}

// status is what `lvsha status` shows of sync; nil when it is off and no
// daemon of ours runs.
func (p *syncPart) status() *control.SyncStatus {
	p.mu.Lock()
	cfg, running, lastErr, used := p.cfg, p.running, p.lastErr, p.used
	p.mu.Unlock()
	if cfg == nil && !used {
		return nil
	}
	st := &control.SyncStatus{Error: lastErr, Daemons: []control.SyncDaemonStatus{}, ConnEntries: -1}
	if cfg != nil {
		st.Instance = cfg.Instance
	}
	for _, d := range running {
		st.Daemons = append(st.Daemons, control.SyncDaemonStatus{
			State: d.State.String(), Interface: d.Interface, SyncID: int(d.SyncID),
			Group: d.Group.String(), Port: int(d.Port), TTL: int(d.TTL), MaxLen: int(d.MaxLen),
		})
	}
	if n, err := p.entries(); err == nil {
		st.ConnEntries = n
	} else if st.Error == "" {
		st.Error = err.Error()
	}
	return st
}

// onVRRPState hears every instance's transitions; the followed one's
// decides whether the master daemon runs.
func (d *Daemon) onVRRPState(instance string, s vrrp.State) {
	d.syncp.setState(instance, s)
	d.groups.state(instance, s)
	if s == vrrp.Master {
		var vips []netip.Prefix // nil, as a new runner may not be recorded yet
		d.mu.Lock()
		r := d.vrrp[instance]
		d.mu.Unlock()
		if r != nil {
			vips = r.config().VIPs
		}
		d.arp.takeover(vips)
	}
}
