package lvs_test

import (
	"errors"
	"net/netip"
	"slices"
	"syscall"
	"testing"
	"time"

	"github.com/vishvananda/netlink"

	"github.com/lvsha/lvsha/internal/testenv/netns"
	"github.com/lvsha/lvsha/lvs"
)

// TestKernelSyncDaemon drives the real kernel's sync daemons: start both,
// list them back as the kernel reports them, the kernel's refusals, and a
// second process (what a restart after SIGKILL is: the daemons are kernel
// state that outlives lvsha) adopting or replacing what it finds.
func TestKernelSyncDaemon(t *testing.T) {
	needVM(t)
	ns, err := netns.New(netns.UniquePrefix("lvk") + "syn")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ns.Close() })
	h, err := ns.Handle()
	if err != nil {
		t.Fatal(err)
	}
	defer h.Close()
	veth := &netlink.Veth{LinkAttrs: netlink.LinkAttrs{Name: "s0"}, PeerName: "s1"}
	if err := h.LinkAdd(veth); err != nil {
		t.Fatal(err)
	}
	for _, n := range []string{"lo", "s0", "s1"} {
		l, err := h.LinkByName(n)
		if err != nil {
			t.Fatal(err)
		}
		if err := h.LinkSetUp(l); err != nil {
			t.Fatal(err)
		}
	}
	a, _ := netlink.ParseAddr("10.9.0.1/24")
	if err := h.AddrAdd(veth, a); err != nil {
		t.Fatal(err)
	}
	k, err := lvs.OpenIPVS(ns.Path())
	if err != nil {
		t.Fatal(err)
	}
	defer k.Close()

	m, b := master("s0", 51), backup("s0", 51)
	if err := k.StartDaemon(m); err != nil {
		t.Fatal(err)
	}
	if err := k.StartDaemon(b); err != nil {
		t.Fatal(err)
	}
	got, err := k.Daemons()
	if err != nil {
		t.Fatal(err)
	}
	// maxlen 0 = the kernel's: a 1500 MTU less the IPv4 and UDP headers.
	m.MaxLen, b.MaxLen = 1472, 1472
	if !slices.Equal(got, []lvs.SyncDaemon{m, b}) {
		t.Fatalf("kernel runs %v, want %v", got, []lvs.SyncDaemon{m, b})
	}
	if err := k.StartDaemon(master("s1", 1)); !errors.Is(err, syscall.EEXIST) {
		t.Errorf("second master: %v, want EEXIST", err)
	}
	if err := k.StopDaemon(lvs.SyncBackup); err != nil {
		t.Fatal(err)
	}
	if err := k.StartDaemon(backup("nope0", 1)); !errors.Is(err, syscall.ENODEV) {
		t.Errorf("backup on a missing interface: %v, want ENODEV", err)
	}
	// Every optional attribute, as the 6.1 kernel takes them.
	full := lvs.SyncDaemon{State: lvs.SyncBackup, Interface: "s0", SyncID: 200, MaxLen: 1200,
		Group: netip.MustParseAddr("239.0.0.9"), Port: 9999, TTL: 3}
	if err := k.StartDaemon(full); err != nil {
		t.Fatal(err)
	}
	if got, _ := k.Daemons(); !slices.Equal(got, []lvs.SyncDaemon{m, full}) {
		t.Fatalf("kernel runs %v, want %v", got, []lvs.SyncDaemon{m, full})
	}

	// The process that started them is gone without stopping them; a new
	// one (its own socket) adopts what matches and replaces what does not.
	k.Close()
	k2, err := lvs.OpenIPVS(ns.Path())
	if err != nil {
		t.Fatal(err)
	}
	defer k2.Close()
	changed, err := lvs.ApplySync(k2, []lvs.SyncDaemon{master("s0", 51), backup("s0", 51)})
	if err != nil {
		t.Fatal(err)
	}
	if len(changed) != 2 { // the backup: stopped and started
		t.Errorf("changes %q, want the backup replaced only", changed)
	}
	if got, _ := k2.Daemons(); !slices.Equal(got, []lvs.SyncDaemon{m, b}) {
		t.Fatalf("after the restart the kernel runs %v, want %v", got, []lvs.SyncDaemon{m, b})
	}
	if changed, err := lvs.ApplySync(k2, []lvs.SyncDaemon{master("s0", 51), backup("s0", 51)}); err != nil || len(changed) != 0 {
		t.Errorf("second apply: %q %v, want nothing to do", changed, err)
	}
	if _, err := lvs.ApplySync(k2, nil); err != nil {
		t.Fatal(err)
	}
	if got, _ := k2.Daemons(); len(got) != 0 {
		t.Errorf("after stopping all: %v", got)
	}
	if err := k2.StopDaemon(lvs.SyncMaster); !errors.Is(err, syscall.ESRCH) {
		t.Errorf("stop of no master: %v, want ESRCH", err)
	}

	// A VRRP flap: the master daemon started and stopped again at once.
	for i := range 20 {
		if err := k2.StartDaemon(master("s0", 51)); err != nil {
			t.Fatalf("flap %d: %v", i, err)
		}
		if i%2 == 0 {
			time.Sleep(time.Duration(i) * 10 * time.Millisecond)
		}
		if err := k2.StopDaemon(lvs.SyncMaster); err != nil {
			t.Fatalf("flap %d: %v", i, err)
		}
	}

	// The connection table of a fresh namespace is empty.
	err = ns.Do(func() error {
		n, err := lvs.ConnEntries()
		if err == nil && n != 0 {
			err = errors.New("entries in a fresh namespace")
		}
		return err
	})
	if err != nil {
		t.Error(err)
	}
}
