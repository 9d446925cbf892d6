package director

import (
	"fmt"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"

	"github.com/lvsha/lvsha/internal/testenv/netns"
	"github.com/lvsha/lvsha/internal/testenv/testutil"
)

// insideLAN gives each node an eth1 (10.99.0.x/24) on a second bridge in the
// lab's bridge namespace: a NAT director's inside network.
func insideLAN(t *testing.T, lab *netns.Lab, nodes ...*netns.Node) {
	t.Helper()
	br := lab.Bridge.Name
	run := func(args ...string) {
		t.Helper()
		if out, err := exec.Command("ip", args...).CombinedOutput(); err != nil {
			t.Fatalf("ip %v: %v\n%s", args, err, out)
		}
	}
	run("-n", br, "link", "add", "br1", "type", "bridge", "mcast_snooping", "0")
	run("-n", br, "link", "set", "br1", "up")
	for i, n := range nodes {
		port := "q-" + n.Role
		run("-n", br, "link", "add", port, "type", "veth", "peer", "name", "eth1", "netns", n.Name)
		run("-n", br, "link", "set", port, "master", "br1", "up")
		run("-n", n.Name, "addr", "add", fmt.Sprintf("10.99.0.%d/24", i+2), "dev", "eth1")
		run("-n", n.Name, "link", "set", "eth1", "up")
	}
}

// TestSyncGroupFailsOverTogether: two directors, each with an outside
// instance on eth0 and an inside one on eth1 in one sync group. The
// master's inside link goes down: its outside instance follows it into
// FAULT (though its own link is fine) and both move to the other director;
// the link back up, both come back (preempt). The group's notify runs once
// per group transition with its name.
func TestSyncGroupFailsOverTogether(t *testing.T) {
	testutil.NeedRoot(t)
	bin := buildLvsha(t)
	lab, n1, n2 := pairLab(t, "lvg")
	insideLAN(t, lab, n1, n2)

	start := func(n *netns.Node, prio int) (*director, string) {
		dir := t.TempDir()
		log := filepath.Join(dir, "group.log")
		script := filepath.Join(dir, "notify")
		if err := os.WriteFile(script, fmt.Appendf(nil, "#!/bin/sh\necho \"$1 $2\" >> %s\n", log), 0o755); err != nil {
			t.Fatal(err)
		}
		return startDirectorWith(t, bin, n, prio, dir, fmt.Sprintf(`
[[vrrp_instance]]
name = "VI_in"
interface = "eth1"
virtual_router_id = 43
priority = %d
advert_interval = "100ms"
virtual_ipaddress = ["10.99.0.1/24"]

[[sync_group]]
name = "NAT"
instances = ["VI_1", "VI_in"]
notify = [%q]
`, prio, script)), log
	}
	d1, log1 := start(n1, 150)
	d2, log2 := start(n2, 100)
	states := func(d *director) string {
		st := d.status(t)
		if st == nil {
			return ""
		}
		var s []string
		for _, v := range st.VRRP {
			s = append(s, v.Name+"="+v.State)
		}
		return strings.Join(s, " ")
	}
	both := func(s1, s2 string) func() bool {
		return func() bool {
			return states(d1) == fmt.Sprintf("VI_1=%s VI_in=%s", s1, s1) && states(d2) == fmt.Sprintf("VI_1=%s VI_in=%s", s2, s2)
		}
	}
	waitCond(t, "d1 MASTER, d2 BACKUP", both("MASTER", "BACKUP"))

	if err := n1.SetLink("eth1", false); err != nil {
		t.Fatal(err)
	}
	waitCond(t, "d1 FAULT (both), d2 MASTER (both)", both("FAULT", "MASTER"))
	for _, v := range d1.status(t).VRRP {
		if v.Name == "VI_1" && !strings.Contains(v.LastCause, "sync group NAT: VI_in in FAULT") {
			t.Errorf("VI_1 FAULT cause %q", v.LastCause)
		}
	}
	waitCond(t, "the group FAULT in status", func() bool {
		st := d1.status(t)
		return st != nil && len(st.SyncGroups) == 1 && st.SyncGroups[0].State == "FAULT"
	})
	if m := scrapeIn(t, n1, "127.0.0.1:9610"); !strings.Contains(m, `lvsha_sync_group_state{state="FAULT",sync_group="NAT"} 1`) {
		t.Error("metrics lack the group's FAULT")
	}
	if out, err := n1.Run(bin, "status", "-S", d1.sock); err != nil || !strings.Contains(out, "NAT    FAULT  VI_1 VI_in") {
		t.Errorf("lvsha status: %v\n%s", err, out)
	}
	if ok, _ := n1.HasAddr("eth0", netip.MustParseAddr("10.98.0.100")); ok {
		t.Error("d1 kept the outside VIP")
	}
	if ok, _ := n2.HasAddr("eth1", netip.MustParseAddr("10.99.0.1")); !ok {
		t.Error("d2 lacks the inside VIP")
	}
	if err := n1.SetLink("eth1", true); err != nil {
		t.Fatal(err)
	}
	waitCond(t, "d1 MASTER again (both)", both("MASTER", "BACKUP"))

	read := func(p string) string { b, _ := os.ReadFile(p); return string(b) }
	waitCond(t, "group notifies", func() bool {
		return strings.HasSuffix(read(log1), "NAT MASTER\nNAT FAULT\nNAT BACKUP\nNAT MASTER\n") &&
			strings.HasSuffix(read(log2), "NAT BACKUP\nNAT MASTER\nNAT BACKUP\n")
	})
	// One notify per group transition: never the same state twice in a row.
	for _, l := range []string{read(log1), read(log2)} {
		lines := strings.Split(strings.TrimSpace(l), "\n")
		for i := 1; i < len(lines); i++ {
			if lines[i] == lines[i-1] {
				t.Errorf("group notify repeated: %q", l)
			}
		}
	}
}

// keepalivedGroup starts keepalived 2.2.7 in n with the same two instances
// and a vrrp_sync_group, at priority prio.
func keepalivedGroup(t *testing.T, n *netns.Node, prio int) {
	t.Helper()
	bin, err := exec.LookPath("keepalived")
	if err != nil {
		testutil.Unavailable(t, "keepalived not installed (make setup)")
	}
	dir := t.TempDir()
	conf := filepath.Join(dir, "keepalived.conf")
	inst := func(name, iface string, vrid int, vip string) string {
		return fmt.Sprintf(`vrrp_instance %s {
  state BACKUP
  interface %s
  virtual_router_id %d
  priority %d
  advert_int 0.1
  version 3
  garp_master_delay 1
  virtual_ipaddress {
    %s
  }
}
`, name, iface, vrid, prio, vip)
	}
	src := "global_defs {\n  router_id ka\n}\nvrrp_sync_group NAT {\n  group {\n    VI_1\n    VI_in\n  }\n}\n" +
		inst("VI_1", "eth0", 42, "10.98.0.100/24") + inst("VI_in", "eth1", 43, "10.99.0.1/24")
	if err := os.WriteFile(conf, []byte(src), 0o644); err != nil {
		t.Fatal(err)
	}
	log := &syncBuffer{}
	cmd := exec.Command(bin, "-n", "-l", "-D", "-P", "-f", conf, "-p", filepath.Join(dir, "k.pid"), "-r", filepath.Join(dir, "v.pid"))
	cmd.Stdout, cmd.Stderr = log, log
	// Its own process group: its VRRP child must die with it.
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	if err := n.Start(cmd); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		_ = syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL)
		_ = cmd.Wait()
		if t.Failed() {
			t.Logf("keepalived log:\n%s", log.String())
		}
	})
}

// TestSyncGroupKeepalivedInterop: the same NAT pair with keepalived 2.2.7
// and its vrrp_sync_group as the peer, in both roles. The master's inside
// link goes down: both of its instances go to FAULT and both move to the
// other director; the link back up, both come back (preempt).
func TestSyncGroupKeepalivedInterop(t *testing.T) {
	testutil.NeedRoot(t)
	bin := buildLvsha(t)
	outVIP, inVIP := netip.MustParseAddr("10.98.0.100"), netip.MustParseAddr("10.99.0.1")
	holds := func(n *netns.Node) (bool, bool) {
		o, _ := n.HasAddr("eth0", outVIP)
		i, _ := n.HasAddr("eth1", inVIP)
		return o, i
	}
	for _, lvshaMaster := range []bool{true, false} {
		t.Run(fmt.Sprintf("lvsha_master=%v", lvshaMaster), func(t *testing.T) {
			lab, n1, n2 := pairLab(t, "lvk")
			insideLAN(t, lab, n1, n2)
			lprio, kprio := 100, 150
			if lvshaMaster {
				lprio, kprio = 150, 100
			}
			d := startDirectorWith(t, bin, n1, lprio, t.TempDir(), fmt.Sprintf(`
[[vrrp_instance]]
name = "VI_in"
interface = "eth1"
virtual_router_id = 43
priority = %d
advert_interval = "100ms"
virtual_ipaddress = ["10.99.0.1/24"]

[[sync_group]]
name = "NAT"
instances = ["VI_1", "VI_in"]
`, lprio))
			keepalivedGroup(t, n2, kprio)
			master, backup := n1, n2
			if !lvshaMaster {
				master, backup = n2, n1
			}
			both := func(n *netns.Node, want bool) func() bool {
				return func() bool { o, i := holds(n); return o == want && i == want }
			}
			waitCond(t, "the master holds both VIPs", func() bool { return both(master, true)() && both(backup, false)() })
			if err := master.SetLink("eth1", false); err != nil {
				t.Fatal(err)
			}
			waitCond(t, "both VIPs moved to the other director", func() bool { return both(backup, true)() && both(master, false)() })
			if lvshaMaster {
				for _, v := range d.status(t).VRRP {
					if v.State != "FAULT" {
						t.Errorf("lvsha %s %s after its inside link went down, want FAULT", v.Name, v.State)
					}
				}
			}
			if err := master.SetLink("eth1", true); err != nil {
				t.Fatal(err)
			}
			waitCond(t, "both VIPs back on the master", func() bool { return both(master, true)() && both(backup, false)() })
		})
	}
}
