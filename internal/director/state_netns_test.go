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

const leftoverConfig = `
[global]
control_socket = %q
state_dir = %q

[[vrrp_instance]]
name = %q
interface = "eth0"
virtual_router_id = 42
advert_interval = "100ms"
virtual_ipaddress = [%q]
`

// leftoverLab is one director's namespace and its files; each start runs
// the real binary on the same config file and state directory.
type leftoverLab struct {
	t          *testing.T
	bin        string
	node       *netns.Node
	file, sock string
	state      string
}

func (l *leftoverLab) write(instance, vip string) {
	l.t.Helper()
	if err := os.WriteFile(l.file, fmt.Appendf(nil, leftoverConfig, l.sock, l.state, instance, vip), 0o644); err != nil {
		l.t.Fatal(err)
	}
}

// start runs lvsha -f on the config as it is now.
func (l *leftoverLab) start() *director {
	l.t.Helper()
	d := &director{node: l.node, file: l.file, sock: l.sock, log: &syncBuffer{}, done: make(chan error, 1)}
	d.cmd = exec.Command(l.bin, "-f", l.file)
	d.cmd.Stdout, d.cmd.Stderr = d.log, d.log
	if err := l.node.Start(d.cmd); err != nil {
		l.t.Fatal(err)
	}
	go func() { d.done <- d.cmd.Wait() }()
	l.t.Cleanup(func() {
		if d.cmd.ProcessState == nil {
			_ = d.cmd.Process.Kill()
			<-d.done
		}
		if l.t.Failed() {
			l.t.Logf("log:\n%s", d.log.String())
		}
	})
	waitCond(l.t, "MASTER", func() bool { return d.vrrp(l.t).State == "MASTER" })
	return d
}

func (l *leftoverLab) holds(vip netip.Addr) bool {
	l.t.Helper()
	ok, err := l.node.HasAddr("eth0", vip)
	if err != nil {
		l.t.Fatal(err)
	}
	return ok
}

// kill SIGKILLs d: nothing releases its VIPs.
func (l *leftoverLab) kill(d *director) {
	l.t.Helper()
	_ = d.cmd.Process.Signal(syscall.SIGKILL)
	<-d.done
}

// TestLeftoverVIPsAfterKill runs the real lvsha in a namespace. A master
// killed with SIGKILL leaves its VIP on the interface, recorded in the
// state directory; `lvsha cleanup` (the unit's ExecStopPost) removes it;
// so does the next start, though its config no longer lists that VIP; a
// clean stop leaves nothing to clean.
func TestLeftoverVIPsAfterKill(t *testing.T) {
	if testing.Short() {
		testutil.Unavailable(t, "namespace tests do not run with -short")
	}
	testutil.NeedRoot(t)
	lab, err := netns.NewLab(netns.UniquePrefix("lvk"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { lab.Close() })
	node, err := lab.AddNode("d1", netip.MustParsePrefix("10.98.0.2/24"))
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	l := &leftoverLab{t: t, bin: buildLvsha(t), node: node, file: filepath.Join(dir, "lvsha.toml"),
		sock: filepath.Join(dir, "lvsha.sock"), state: filepath.Join(dir, "state")}
	vip1, vip2 := netip.MustParseAddr("10.98.0.100"), netip.MustParseAddr("10.98.0.101")
	record := filepath.Join(l.state, vipsFile)

	l.write("VI_1", "10.98.0.100/24")
	d := l.start()
	waitCond(t, "the VIP in the record", func() bool {
		held, err := readVIPRecord(record)
		return err == nil && held["VI_1"].Interface == "eth0" && fmt.Sprint(held["VI_1"].VIPs) == "[10.98.0.100/24]"
	})
	l.kill(d)
	if !l.holds(vip1) {
		t.Fatal("the killed master's VIP is gone by itself: nothing left to test")
	}
	out, err := node.Run(l.bin, "cleanup", "-f", l.file)
	if err != nil || !strings.Contains(out, "cleanup: removed 1 leftover VIP\n") || !strings.Contains(out, "vip=10.98.0.100/24") {
		t.Errorf("lvsha cleanup: %v\n%s", err, out)
	}
	if l.holds(vip1) {
		t.Error("lvsha cleanup left the killed master's VIP")
	}

	// Killed again (once the record, which cleanup emptied, names the VIP
	// again: it is written after MASTER); then the config names another
	// instance and VIP.
	d = l.start()
	waitCond(t, "the VIP in the record again", func() bool {
		held, err := readVIPRecord(record)
		return err == nil && fmt.Sprint(held["VI_1"].VIPs) == "[10.98.0.100/24]"
	})
	l.kill(d)
	if !l.holds(vip1) {
		t.Fatal("the killed master's VIP is gone by itself")
	}
	l.write("VI_2", "10.98.0.101/24")
	d = l.start()
	if l.holds(vip1) {
		t.Error("a start with a config without the VIP left the killed run's VIP")
	}
	if !l.holds(vip2) {
		t.Error("the new master does not hold its VIP")
	}
	if lg := d.log.String(); !strings.Contains(lg, "removing a VIP a previous run left") || !strings.Contains(lg, "vip=10.98.0.100/24") {
		t.Errorf("the removal is not logged:\n%s", lg)
	}

	// A clean stop releases and records it: nothing for cleanup.
	_ = d.cmd.Process.Signal(syscall.SIGTERM)
	if err := <-d.done; err != nil {
		t.Errorf("lvsha exited with %v after SIGTERM", err)
	}
	if l.holds(vip2) {
		t.Error("the VIP stayed after a clean stop")
	}
	if held, err := readVIPRecord(record); err != nil || len(held) != 0 {
		t.Errorf("record after a clean stop: %+v %v", held, err)
	}
	if out, err := node.Run(l.bin, "cleanup", "-f", l.file); err != nil || out != "cleanup: removed 0 leftover VIPs\n" {
		t.Errorf("lvsha cleanup after a clean stop: %v\n%s", err, out)
	}
}

const leftoverBGPConfig = `
[global]
control_socket = %[1]q
state_dir = %[2]q

[[virtual_server]]
address = "%[3]s:80"
[[virtual_server.real_server]]
address = "10.98.0.10:80"

[bgp]
asn = 65001
router_id = "10.98.0.2"
announce = [%[3]q]
drain_time = "0s"
[[bgp.neighbor]]
address = "10.98.0.254"
asn = 65000
`

// TestLeftoverBGPVIPsAfterKill: the VIPs [bgp] holds on lo are recorded
// like VRRP's, so a SIGKILLed director's VIP, since dropped from announce,
// is removed by the next start; a clean stop leaves nothing recorded.
func TestLeftoverBGPVIPsAfterKill(t *testing.T) {
	if testing.Short() {
		testutil.Unavailable(t, "namespace tests do not run with -short")
	}
	testutil.NeedRoot(t)
	lab, err := netns.NewLab(netns.UniquePrefix("lbk"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { lab.Close() })
	node, err := lab.AddNode("d1", netip.MustParsePrefix("10.98.0.2/24"))
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	bin := buildLvsha(t)
	file, sock, state := filepath.Join(dir, "lvsha.toml"), filepath.Join(dir, "lvsha.sock"), filepath.Join(dir, "state")
	record := filepath.Join(state, vipsFile)
	onLo := func(vip netip.Addr) bool {
		ok, err := node.HasAddr("lo", vip)
		if err != nil {
			t.Fatal(err)
		}
		return ok
	}
	start := func(vip string) *director {
		if err := os.WriteFile(file, fmt.Appendf(nil, leftoverBGPConfig, sock, state, vip), 0o644); err != nil {
			t.Fatal(err)
		}
		d := &director{node: node, file: file, sock: sock, log: &syncBuffer{}, done: make(chan error, 1)}
		d.cmd = exec.Command(bin, "-f", file)
		d.cmd.Stdout, d.cmd.Stderr = d.log, d.log
		if err := node.Start(d.cmd); err != nil {
			t.Fatal(err)
		}
		go func() { d.done <- d.cmd.Wait() }()
		t.Cleanup(func() {
			if d.cmd.ProcessState == nil {
				_ = d.cmd.Process.Kill()
				<-d.done
			}
			if t.Failed() {
				t.Logf("log:\n%s", d.log.String())
			}
		})
		waitCond(t, vip+" recorded and on lo", func() bool {
			held, err := readVIPRecord(record)
			return err == nil && held[bgpRecordKey].Interface == "lo" &&
				fmt.Sprint(held[bgpRecordKey].VIPs) == "["+vip+"/32]" && onLo(netip.MustParseAddr(vip))
		})
		return d
	}
	vip1, vip2 := netip.MustParseAddr("10.99.0.1"), netip.MustParseAddr("10.99.0.2")

	d := start(vip1.String())
	_ = d.cmd.Process.Signal(syscall.SIGKILL)
	<-d.done
	if !onLo(vip1) {
		t.Fatal("the killed director's VIP is gone by itself: nothing left to test")
	}
	d = start(vip2.String())
	if onLo(vip1) {
		t.Error("a start whose announce no longer lists the VIP left the killed run's VIP on lo")
	}
	if lg := d.log.String(); !strings.Contains(lg, "removing a VIP a previous run left") || !strings.Contains(lg, "vip=10.99.0.1/32") {
		t.Errorf("the removal is not logged:\n%s", lg)
	}
	_ = d.cmd.Process.Signal(syscall.SIGTERM)
	if err := <-d.done; err != nil {
		t.Errorf("lvsha exited with %v after SIGTERM", err)
	}
	if onLo(vip2) {
		t.Error("the VIP stayed on lo after a clean stop")
	}
	if held, err := readVIPRecord(record); err != nil || len(held) != 0 {
		t.Errorf("record after a clean stop: %+v %v", held, err)
	}
}
