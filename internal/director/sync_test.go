package director

import (
	"fmt"
	"log/slog"
	"net/netip"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/lvsha/lvsha/conf"
	"github.com/lvsha/lvsha/lvs"
	"github.com/lvsha/lvsha/lvs/lvstest"
	"github.com/lvsha/lvsha/vrrp"
)

func syncConf(id uint8) *conf.Sync {
	return &conf.Sync{Instance: "VI_1", Runtime: lvs.SyncDaemon{Interface: "eth0", SyncID: id,
		Group: netip.MustParseAddr("224.0.0.81"), Port: 8848, TTL: 1}}
}

func TestWantSync(t *testing.T) {
	if got := wantSync(nil, true); got != nil {
		t.Errorf("sync off: %v", got)
	}
	c := syncConf(51)
	b := c.Runtime
	b.State = lvs.SyncBackup
	m := c.Runtime
	m.State = lvs.SyncMaster
	if got := wantSync(c, false); !slices.Equal(got, []lvs.SyncDaemon{b}) {
		t.Errorf("backup node: %v", got)
	}
	if got := wantSync(c, true); !slices.Equal(got, []lvs.SyncDaemon{m, b}) {
		t.Errorf("master node: %v (a master keeps its backup daemon too)", got)
	}
}

// syncHarness is a sync part over the fake kernel.
type syncHarness struct {
	f        *lvstest.Table
	p        *syncPart
	opens    atomic.Int32
	versions atomic.Int32
}

func newSyncHarness(t *testing.T, cfg *conf.Sync) *syncHarness {
	t.Helper()
	f, k := lvstest.New(t)
	h := &syncHarness{f: f}
	c := &conf.Config{Global: conf.Global{IPVSRepairInterval: conf.Duration(time.Hour)}, Sync: cfg}
	h.p = newSyncPart(c, slog.New(slog.DiscardHandler), func() (lvs.SyncControl, func(), error) {
		h.opens.Add(1)
		return k, func() {}, nil
	})
	h.p.setVersion = func() error { h.versions.Add(1); return nil }
	h.p.entries = func() (int, error) { return 7, nil }
	h.p.start(t.Context())
	return h
}

// await waits until the fake kernel runs the daemons described (state,
// interface, syncid), e.g. "master eth0 51, backup eth0 51".
func (h *syncHarness) await(t *testing.T, want string) {
	t.Helper()
	var got string
	for deadline := time.Now().Add(5 * time.Second); time.Now().Before(deadline); time.Sleep(5 * time.Millisecond) {
		var s []string
		for _, d := range h.f.Daemons() {
			s = append(s, fmt.Sprintf("%v %s %d", d.State, d.Interface, d.SyncID))
		}
		if got = strings.Join(s, ", "); got == want {
			return
		}
	}
	t.Fatalf("kernel runs %q, want %q", got, want)
}

// TestSyncFollowsVRRP: a backup daemon from the start, the master daemon
// while the followed instance is MASTER (another instance's state does not
// count), a reload that changes the settings replaces the daemons, one that
// does not leaves them alone, and a stop leaves the backup daemon.
func TestSyncFollowsVRRP(t *testing.T) {
	h := newSyncHarness(t, syncConf(51))
	h.await(t, "backup eth0 51")
	h.p.setState("VI_2", vrrp.Master)
	h.p.setState("VI_1", vrrp.Backup)
	h.p.setState("VI_1", vrrp.Master)
	h.await(t, "master eth0 51, backup eth0 51")
	if h.versions.Load() == 0 {
		t.Error("sync_version not set before the daemons started")
	}
	h.p.setState("VI_1", vrrp.Fault)
	h.await(t, "backup eth0 51")
	h.p.setState("VI_1", vrrp.Master)
	h.await(t, "master eth0 51, backup eth0 51")

	// An unchanged reload: the daemons are listed, not touched.
	h.f.Reset()
	h.p.setConfig(syncConf(51))
	time.Sleep(50 * time.Millisecond)
	for _, c := range h.f.Calls() {
		if c != "Daemons" {
			t.Errorf("unchanged reload made %q", c)
		}
	}
	h.p.setConfig(syncConf(52))
	h.await(t, "master eth0 52, backup eth0 52")

	st := h.p.status()
	if st == nil || st.Instance != "VI_1" || st.ConnEntries != 7 || len(st.Daemons) != 2 || st.Daemons[0].State != "master" || st.Error != "" {
		t.Errorf("status %+v", st)
	}

	// The shutdown: VRRP stops first (the master resigns: Init), then the
	// part; the backup daemon stays, like the IPVS table.
	h.p.setState("VI_1", vrrp.Init)
	h.p.stop()
	h.await(t, "backup eth0 52")
}

// TestSyncOff: no [sync], no IPVS opened; a reload that removes it stops
// the daemons it started.
func TestSyncOff(t *testing.T) {
	h := newSyncHarness(t, nil)
	h.p.setState("VI_1", vrrp.Master)
	time.Sleep(50 * time.Millisecond)
	if n := h.opens.Load(); n != 0 {
		t.Errorf("sync off opened IPVS %d times", n)
	}
	if st := h.p.status(); st != nil {
		t.Errorf("sync off has status %+v", st)
	}
	h.p.setConfig(syncConf(9))
	h.await(t, "master eth0 9, backup eth0 9")
	h.p.setConfig(nil)
	h.await(t, "")
	h.p.stop()
}

// TestSyncRetries: a kernel that refuses (the interface is not there yet)
// is retried, and status says why meanwhile.
func TestSyncRetries(t *testing.T) {
	f, k := lvstest.New(t)
	var refuse atomic.Bool
	refuse.Store(true)
	f.SetFail(func(c string) error {
		if strings.HasPrefix(c, "NewDaemon") && refuse.Load() {
			return syscall.ENODEV
		}
		return nil
	})
	c := &conf.Config{Global: conf.Global{IPVSRepairInterval: conf.Duration(time.Hour)}, Sync: syncConf(3)}
	p := newSyncPart(c, slog.New(slog.DiscardHandler), func() (lvs.SyncControl, func(), error) { return k, func() {}, nil })
	p.setVersion = func() error { return nil }
	p.entries = func() (int, error) { return 0, nil }
	p.start(t.Context())
	defer p.stop()
	for deadline := time.Now().Add(5 * time.Second); ; time.Sleep(5 * time.Millisecond) {
		if st := p.status(); st != nil && strings.Contains(st.Error, "no such device") {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("status shows no error: %+v", p.status())
		}
	}
	refuse.Store(false)
	h := &syncHarness{f: f}
	h.await(t, "backup eth0 3")
	for deadline := time.Now().Add(5 * time.Second); p.status().Error != ""; time.Sleep(5 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatalf("error stays after recovery: %+v", p.status())
		}
	}
}

// TestSyncStopAfterResign: the stop's last pass stops the master daemon
// of a master that resigned while a pass was still running, whether or
// not the loop got to the resignation (tried 20 times: which of the stop
// and the wake-up the loop sees first is up to select).
func TestSyncStopAfterResign(t *testing.T) {
	for i := range 20 {
		f, k := lvstest.New(t)
		g := &gatedSync{SyncControl: k}
		c := &conf.Config{Global: conf.Global{IPVSRepairInterval: conf.Duration(time.Hour)}, Sync: syncConf(51)}
		p := newSyncPart(c, slog.New(slog.DiscardHandler), func() (lvs.SyncControl, func(), error) { return g, func() {}, nil })
		p.setVersion = func() error { return nil }
		p.entries = func() (int, error) { return 0, nil }
		p.start(t.Context())
		p.setState("VI_1", vrrp.Master)
		h := &syncHarness{f: f}
		h.await(t, "master eth0 51, backup eth0 51")

		// A pass (a reload) is held inside its listing; meanwhile the
		// instance resigns and the daemon is told to stop.
		gate := make(chan struct{})
		g.hold(gate)
		p.setConfig(syncConf(51))
		<-g.held
		p.setState("VI_1", vrrp.Init)
		stopped := make(chan struct{})
		go func() { p.stop(); close(stopped) }()
		time.Sleep(time.Millisecond)
		g.hold(nil)
		close(gate)
		<-stopped
		var got []string
		for _, d := range f.Daemons() {
			got = append(got, d.State.String())
		}
		if strings.Join(got, ",") != "backup" {
			t.Fatalf("run %d: after the stop the kernel runs %v, want the backup daemon only", i, got)
		}
	}
}

// gatedSync holds Daemons calls while a gate is set.
type gatedSync struct {
	lvs.SyncControl
	mu   sync.Mutex
	gate chan struct{}
	held chan struct{}
}

func (g *gatedSync) hold(gate chan struct{}) {
	g.mu.Lock()
	defer g.mu.Unlock()
	g.gate = gate
	if gate != nil {
		g.held = make(chan struct{})
	}
}

func (g *gatedSync) Daemons() ([]lvs.SyncDaemon, error) {
	g.mu.Lock()
	gate, held := g.gate, g.held
	g.mu.Unlock()
	if gate != nil {
		close(held)
		<-gate
	}
	return g.SyncControl.Daemons()
}

// TestSyncActiveActive: a [sync] that follows no instance (directors under
// [bgp]) runs the master daemon beside the backup from the start, whatever
// VRRP does, and stops it at shutdown, leaving the backup.
func TestSyncActiveActive(t *testing.T) {
	c := syncConf(7)
	c.Instance = ""
	h := newSyncHarness(t, c)
	h.await(t, "master eth0 7, backup eth0 7")
	h.p.setState("VI_1", vrrp.Backup)
	h.p.setState("VI_1", vrrp.Fault)
	h.f.Reset()
	h.p.wake()
	// The pass after the transitions lists the daemons and changes none.
	waitFor(t, "a pass", func() bool { return len(h.f.Calls()) > 0 })
	for _, c := range h.f.Calls() {
		if c != "Daemons" {
			t.Errorf("a VRRP transition made %q", c)
		}
	}
	h.p.stop()
	h.await(t, "backup eth0 7")
}
