package director

import (
	"fmt"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
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
	lab, err := netns.NewLab(netns.UniquePrefix("lvg"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { lab.Close() })
	n1, err := lab.AddNode("d1", netip.MustParsePrefix("10.98.0.2/24"))
	if err != nil {
		t.Fatal(err)
	}
	n2, err := lab.AddNode("d2", netip.MustParsePrefix("10.98.0.3/24"))
	if err != nil {
		t.Fatal(err)
	}
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
