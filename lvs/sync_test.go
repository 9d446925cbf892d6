package lvs_test

import (
	"errors"
	"net/netip"
	"slices"
	"strings"
	"syscall"
	"testing"

	"github.com/lvsha/lvsha/lvs"
	"github.com/lvsha/lvsha/lvs/lvstest"
)

var group = netip.MustParseAddr("224.0.0.81")

func backup(ifn string, id uint8) lvs.SyncDaemon {
	return lvs.SyncDaemon{State: lvs.SyncBackup, Interface: ifn, SyncID: id, Group: group, Port: 8848, TTL: 1}
}

func master(ifn string, id uint8) lvs.SyncDaemon {
	d := backup(ifn, id)
	d.State = lvs.SyncMaster
	return d
}

// TestSyncDaemonEncoding: every field production sends arrives in the fake
// kernel, decoded from the kernel's attribute numbers, and comes back in
// the dump.
func TestSyncDaemonEncoding(t *testing.T) {
	f, k := lvstest.New(t)
	want := lvs.SyncDaemon{State: lvs.SyncMaster, Interface: "eth0", SyncID: 251, MaxLen: 1400,
		Group: netip.MustParseAddr("239.1.2.3"), Port: 9000, TTL: 4}
	if err := k.StartDaemon(want); err != nil {
		t.Fatal(err)
	}
	v6 := lvs.SyncDaemon{State: lvs.SyncBackup, Interface: "bond0.100", SyncID: 0,
		Group: netip.MustParseAddr("ff02::81"), Port: 1, TTL: 255}
	if err := k.StartDaemon(v6); err != nil {
		t.Fatal(err)
	}
	v6.MaxLen = 1472 // the kernel's choice, reported back
	if got := f.Daemons(); !slices.Equal(got, []lvs.SyncDaemon{want, v6}) {
		t.Fatalf("kernel has\n%v\nwant\n%v", got, []lvs.SyncDaemon{want, v6})
	}
	got, err := k.Daemons()
	if err != nil {
		t.Fatal(err)
	}
	if !slices.Equal(got, []lvs.SyncDaemon{want, v6}) {
		t.Fatalf("dump %v, want %v", got, []lvs.SyncDaemon{want, v6})
	}
	if err := k.StopDaemon(lvs.SyncMaster); err != nil {
		t.Fatal(err)
	}
	if got := f.Daemons(); !slices.Equal(got, []lvs.SyncDaemon{v6}) {
		t.Fatalf("after stop: %v", got)
	}
	wantCalls := []string{
		"NewDaemon master eth0 syncid=251 maxlen=1400 group=239.1.2.3 port=9000 ttl=4",
		"NewDaemon backup bond0.100 syncid=0 maxlen=0 group=ff02::81 port=1 ttl=255",
		"Daemons",
		"DelDaemon master",
	}
	if got := f.Calls(); !slices.Equal(got, wantCalls) {
		t.Fatalf("calls\n%s\nwant\n%s", strings.Join(got, "\n"), strings.Join(wantCalls, "\n"))
	}
}

// TestSyncDaemonErrors: the kernel's errnos reach the caller; bad values
// are refused before they are sent.
func TestSyncDaemonErrors(t *testing.T) {
	f, k := lvstest.New(t)
	if err := k.StartDaemon(backup("eth0", 1)); err != nil {
		t.Fatal(err)
	}
	if err := k.StartDaemon(backup("eth1", 2)); !errors.Is(err, syscall.EEXIST) {
		t.Errorf("second backup: %v, want EEXIST", err)
	}
	if err := k.StopDaemon(lvs.SyncMaster); !errors.Is(err, syscall.ESRCH) {
		t.Errorf("stop of no master: %v, want ESRCH", err)
	}
	f.Reset()
	for _, d := range []lvs.SyncDaemon{
		{State: 3, Interface: "eth0"},
		{State: lvs.SyncMaster},
		{State: lvs.SyncMaster, Interface: "a-very-long-name"},
		{State: lvs.SyncMaster, Interface: "eth0", Group: netip.MustParseAddr("10.0.0.1")},
	} {
		if err := k.StartDaemon(d); err == nil {
			t.Errorf("%v: started", d)
		}
	}
	if c := f.Calls(); len(c) != 0 {
		t.Errorf("invalid daemons sent: %v", c)
	}
	f.SetFail(func(string) error { return syscall.EPERM })
	if _, err := k.Daemons(); !errors.Is(err, syscall.EPERM) {
		t.Errorf("failed dump: %v, want EPERM", err)
	}
}

// TestStopDaemonWithoutAck: the kernel sends no ack when stopping a master
// whose thread never ran (EINTR); the daemon is gone, and the listing
// shows it, so the stop succeeded. One still listed is an error.
func TestStopDaemonWithoutAck(t *testing.T) {
	f, k := lvstest.New(t)
	if err := f.StartDaemonBehind(master("eth0", 1)); err != nil {
		t.Fatal(err)
	}
	f.LoseAcks(true)
	if err := k.StopDaemon(lvs.SyncMaster); err != nil {
		t.Fatalf("stop without an ack: %v", err)
	}
	if err := f.StartDaemonBehind(master("eth0", 1)); err != nil {
		t.Fatal(err)
	}
	f.SetFail(func(c string) error {
		if c == "DelDaemon master" {
			return syscall.EIO // refused (not applied) and, acks lost, unanswered
		}
		return nil
	})
	if err := k.StopDaemon(lvs.SyncMaster); err == nil {
		t.Fatal("a master still running reported stopped")
	}
}

// TestApplySync: what a start after a crash, a state change and a reload
// do to the kernel's daemons.
func TestApplySync(t *testing.T) {
	f, k := lvstest.New(t)
	step := func(name string, want []lvs.SyncDaemon, wantCalls ...string) {
		t.Helper()
		f.Reset()
		if _, err := lvs.ApplySync(k, want); err != nil {
			t.Fatalf("%s: %v", name, err)
		}
		if got := f.Calls(); !slices.Equal(got, wantCalls) {
			t.Fatalf("%s: calls\n%s\nwant\n%s", name, strings.Join(got, "\n"), strings.Join(wantCalls, "\n"))
		}
		got := f.Daemons()
		for i := range got {
			if !want[i].Matches(got[i]) {
				t.Fatalf("%s: kernel runs %v, want %v", name, got, want)
			}
		}
		if len(got) != len(want) {
			t.Fatalf("%s: kernel runs %v, want %v", name, got, want)
		}
	}
	// A killed lvsha left a master and a backup: the backup matches and
	// stays, the master is not wanted any more.
	if err := f.StartDaemonBehind(backup("eth0", 51)); err != nil {
		t.Fatal(err)
	}
	if err := f.StartDaemonBehind(master("eth0", 51)); err != nil {
		t.Fatal(err)
	}
	step("adopt", []lvs.SyncDaemon{backup("eth0", 51)}, "Daemons", "DelDaemon master")
	step("enter master", []lvs.SyncDaemon{master("eth0", 51), backup("eth0", 51)},
		"Daemons", "NewDaemon master eth0 syncid=51 maxlen=0 group=224.0.0.81 port=8848 ttl=1")
	step("unchanged", []lvs.SyncDaemon{master("eth0", 51), backup("eth0", 51)}, "Daemons")
	step("new sync id", []lvs.SyncDaemon{master("eth0", 52), backup("eth0", 52)},
		"Daemons",
		"DelDaemon master", "NewDaemon master eth0 syncid=52 maxlen=0 group=224.0.0.81 port=8848 ttl=1",
		"DelDaemon backup", "NewDaemon backup eth0 syncid=52 maxlen=0 group=224.0.0.81 port=8848 ttl=1")
	step("leave master", []lvs.SyncDaemon{backup("eth0", 52)}, "Daemons", "DelDaemon master")
	step("off", nil, "Daemons", "DelDaemon backup")

	// Someone starts a backup between the listing and the start: it is
	// replaced, not an error for ever.
	if err := f.StartDaemonBehind(backup("eth9", 9)); err != nil {
		t.Fatal(err)
	}
	f.Reset()
	if _, err := lvs.ApplySync(staleList{k}, []lvs.SyncDaemon{backup("eth0", 1)}); err != nil {
		t.Fatalf("race: %v", err)
	}
	wantCalls := []string{"NewDaemon backup eth0 syncid=1 maxlen=0 group=224.0.0.81 port=8848 ttl=1",
		"DelDaemon backup", "NewDaemon backup eth0 syncid=1 maxlen=0 group=224.0.0.81 port=8848 ttl=1"}
	if got := f.Calls(); !slices.Equal(got, wantCalls) {
		t.Fatalf("race: calls\n%s\nwant\n%s", strings.Join(got, "\n"), strings.Join(wantCalls, "\n"))
	}
}

// staleList lists no daemons: the kernel's state changed after the listing.
type staleList struct{ lvs.SyncControl }

func (staleList) Daemons() ([]lvs.SyncDaemon, error) { return nil, nil }
