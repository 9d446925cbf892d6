package director

import (
	"context"
	"fmt"
	"log/slog"
	"net/netip"
	"os"
	"os/exec"
	"os/signal"
	"os/user"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/lvsha/lvsha/conf"
	"github.com/lvsha/lvsha/internal/director/control"
	"github.com/lvsha/lvsha/internal/testenv/netns"
	"github.com/lvsha/lvsha/internal/testenv/testutil"
	"github.com/lvsha/lvsha/lvs"
)

// This host's kernel has no IPVS, so the directors of TestBGPWithFRR run
// with the in-memory IPVS table (lvstest), which the daemon programs
// through its production path: "can serve" is then "the daemon programmed
// the service and its quorum is up", exactly the rule it follows on a real
// kernel. Everything else is real: GoBGP, FRR's bgpd and zebra, the kernel
// routes they install, the VIPs on lo, the processes and their signals.

const (
	childConfEnv = "LVSHA_BGP_CHILD_CONF"
	childMuteEnv = "LVSHA_BGP_CHILD_MUTE" // 1: sessions come up, nothing is announced
)

// mutedSpeaker is a real speaker whose announcements are dropped: the
// negative control of the route assertions.
type mutedSpeaker struct{ Speaker }

func (mutedSpeaker) Announce(netip.Prefix) error { return nil }

// TestBGPDirectorChild is a director process of TestBGPWithFRR (started as
// this test binary with childConfEnv set); on its own it does nothing.
func TestBGPDirectorChild(t *testing.T) {
	file := os.Getenv(childConfEnv)
	if file == "" {
		return
	}
	cfg, _, err := conf.Load(file)
	if err != nil {
		t.Fatal(err)
	}
	k := newFakeIPVS(t)
	opts := Options{Version: "test", OpenIPVS: func() (lvs.Kernel, func(), error) { return k, func() {}, nil }}
	if os.Getenv(childMuteEnv) == "1" {
		opts.OpenBGP = func(c conf.BGP) (Speaker, error) {
			sp, err := openGoBGP(slog.Default())(c)
			if err != nil {
				return nil, err
			}
			return mutedSpeaker{sp}, nil
		}
	}
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM)
	defer stop()
	hup := make(chan os.Signal, 1)
	signal.Notify(hup, syscall.SIGHUP)
	opts.Reload = hup
	if err := New(cfg, slog.New(slog.NewTextHandler(os.Stderr, nil)), opts).Run(ctx); err != nil {
		t.Fatal(err)
	}
}

const bgpDirectorConfig = `
[global]
control_socket = "%[1]s/lvsha.sock"
state_dir = "%[1]s/state"
realtime_priority = 0

[[virtual_server]]
address = "10.99.0.1:80"
scheduler = "rr"
[virtual_server.check]
type = "exec"
argv = ["/bin/sh", "-c", "! test -e %[1]s/down"]
interval = "500ms"
timeout = "400ms"
rise = 1
fall = 1
[[virtual_server.real_server]]
address = "10.0.0.100:80"

[bgp]
asn = 65001
router_id = "%[2]s"
announce = ["10.99.0.1"]
drain_time = "2s"
[[bgp.neighbor]]
address = "10.0.0.254"
asn = 65000
hold_time = "3s"
connect_retry = "1s"
`

const frrBGPConfig = `frr defaults datacenter
hostname r
router bgp 65000
 bgp router-id 10.0.0.254
 no bgp ebgp-requires-policy
 neighbor 10.0.0.1 remote-as 65001
 neighbor 10.0.0.2 remote-as 65001
 address-family ipv4 unicast
  maximum-paths 4
 exit-address-family
`

type bgpDirector struct {
	node *netns.Node
	dir  string
	cmd  *exec.Cmd
	log  *syncBuffer
	done chan error
}

func startBGPDirector(t *testing.T, node *netns.Node, dir string, mute bool) *bgpDirector {
	t.Helper()
	return startBGPDirectorConf(t, node, dir, fmt.Sprintf(bgpDirectorConfig, dir, node.Addr.Addr()), mute)
}

// startBGPDirectorConf runs a director of config (its files in dir).
func startBGPDirectorConf(t *testing.T, node *netns.Node, dir, config string, mute bool) *bgpDirector {
	t.Helper()
	d := &bgpDirector{node: node, dir: dir, log: &syncBuffer{}, done: make(chan error, 1)}
	file := filepath.Join(dir, "lvsha.toml")
	if err := os.WriteFile(file, []byte(config), 0o644); err != nil {
		t.Fatal(err)
	}
	d.cmd = exec.Command(os.Args[0], "-test.run=^TestBGPDirectorChild$", "-test.count=1")
	d.cmd.Env = append(os.Environ(), childConfEnv+"="+file)
	if mute {
		d.cmd.Env = append(d.cmd.Env, childMuteEnv+"=1")
	}
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
			t.Logf("%s log:\n%s", node.Role, d.log.String())
		}
	})
	return d
}

func (d *bgpDirector) status() *control.Status {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	st, err := control.QueryStatus(ctx, filepath.Join(d.dir, "lvsha.sock"))
	if err != nil {
		return nil
	}
	return st
}

func (d *bgpDirector) established() bool {
	st := d.status()
	return st != nil && st.BGP != nil && len(st.BGP.Neighbors) == 1 && st.BGP.Neighbors[0].State == "established"
}

func (d *bgpDirector) exited() bool {
	select {
	case err := <-d.done:
		d.done <- err
		return true
	default:
		return false
	}
}

// nextHops are the next hops of the router's kernel route to the VIP.
func nextHops(t *testing.T, r *netns.Node) []string {
	t.Helper()
	out, err := r.Run("ip", "-4", "route", "show", "10.99.0.1")
	if err != nil {
		t.Fatalf("ip route: %v: %s", err, out)
	}
	var hops []string
	for f := range strings.FieldsSeq(out) {
		if strings.HasPrefix(f, "10.0.0.") {
			hops = append(hops, f)
		}
	}
	slices.Sort(hops)
	return hops
}

func waitHops(t *testing.T, r *netns.Node, want string, timeout time.Duration) bool {
	t.Helper()
	return netns.WaitFor(timeout, 50*time.Millisecond, func() bool { return strings.Join(nextHops(t, r), " ") == want })
}

// TestBGPWithFRR: two directors peer with FRR's bgpd; the router's kernel
// route to the VIP has both as next hops (ECMP); a muted director (session
// up, no announcement) is not one of them (the negative control: the
// assertion can fail); a director whose service loses quorum withdraws;
// a director stopped cleanly withdraws before it exits; a SIGKILLed one is
// dropped when the hold time runs out.
func TestBGPWithFRR(t *testing.T) {
	if testing.Short() {
		t.Skip("namespaces and FRR: not in -short")
	}
	testutil.NeedRoot(t)
	lab, err := netns.NewLab(netns.UniquePrefix("bgp"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = lab.Close() })
	r, err := lab.AddNode("r", netip.MustParsePrefix("10.0.0.254/24"))
	if err != nil {
		t.Fatal(err)
	}
	var nodes [2]*netns.Node
	for i := range nodes {
		if nodes[i], err = lab.AddNode(fmt.Sprintf("d%d", i+1), netip.MustParsePrefix(fmt.Sprintf("10.0.0.%d/24", i+1))); err != nil {
			t.Fatal(err)
		}
	}

	startFRR(t, r, frrBGPConfig)

	dirs := [2]string{t.TempDir(), t.TempDir()}
	// d1 muted (its session comes up, it announces nothing), d2 normal.
	d1 := startBGPDirector(t, nodes[0], dirs[0], true)
	d2 := startBGPDirector(t, nodes[1], dirs[1], false)
	if !waitHops(t, r, "10.0.0.2", 20*time.Second) {
		t.Fatalf("route to the VIP via d2: next hops %v", nextHops(t, r))
	}
	if !netns.WaitFor(10*time.Second, 50*time.Millisecond, d1.established) {
		t.Fatal("muted d1: session not established")
	}
	// Negative control: with d1's announcements off, the two-hop
	// assertion used below fails.
	if waitHops(t, r, "10.0.0.1 10.0.0.2", 3*time.Second) {
		t.Fatalf("two next hops while d1 announces nothing: the route assertion cannot fail")
	}
	_ = d1.cmd.Process.Signal(syscall.SIGTERM)
	<-d1.done
	d1.done <- nil

	d1 = startBGPDirector(t, nodes[0], dirs[0], false)
	if !waitHops(t, r, "10.0.0.1 10.0.0.2", 20*time.Second) {
		t.Fatalf("ECMP route: next hops %v, want 10.0.0.1 and 10.0.0.2", nextHops(t, r))
	}

	// d2's only real server fails: quorum lost, d2 withdraws.
	down := filepath.Join(dirs[1], "down")
	if err := os.WriteFile(down, nil, 0o644); err != nil {
		t.Fatal(err)
	}
	if !waitHops(t, r, "10.0.0.1", 10*time.Second) {
		t.Fatalf("after d2's quorum loss: next hops %v, want 10.0.0.1 only", nextHops(t, r))
	}
	if st := d2.status(); st == nil || st.BGP == nil || st.BGP.LastWithdraw == nil || !strings.HasPrefix(st.BGP.LastWithdraw.Reason, "quorum lost") {
		t.Errorf("d2 status does not say it withdrew for quorum: %+v", st)
	}
	if err := os.Remove(down); err != nil {
		t.Fatal(err)
	}
	if !waitHops(t, r, "10.0.0.1 10.0.0.2", 10*time.Second) {
		t.Fatalf("after d2's recovery: next hops %v", nextHops(t, r))
	}

	// A clean stop withdraws first: one next hop while d1 still runs
	// (draining, 2 s), then it exits.
	_ = d1.cmd.Process.Signal(syscall.SIGTERM)
	if !waitHops(t, r, "10.0.0.2", time.Second) {
		t.Fatalf("d1 stopping: next hops %v, want 10.0.0.2 only within 1s", nextHops(t, r))
	}
	if d1.exited() {
		t.Fatal("d1 exited before its route was withdrawn and drained")
	}
	select {
	case err := <-d1.done:
		if err != nil {
			t.Errorf("d1 exit: %v", err)
		}
		d1.done <- err
	case <-time.After(10 * time.Second):
		t.Fatal("d1 did not exit after its drain time")
	}

	// SIGKILL: the kernel closes the dead process's TCP session, so the
	// router drops d2's route at once, well within the hold time.
	startBGPDirector(t, nodes[0], dirs[0], false)
	if !waitHops(t, r, "10.0.0.1 10.0.0.2", 20*time.Second) {
		t.Fatalf("ECMP route again: next hops %v", nextHops(t, r))
	}
	killed := time.Now()
	_ = d2.cmd.Process.Kill()
	if !waitHops(t, r, "10.0.0.1", 4*time.Second) {
		t.Fatalf("d2 killed: next hops %v, want 10.0.0.1 within the hold time", nextHops(t, r))
	}
	t.Logf("SIGKILLed director's route removed after %s (hold time 3s)", time.Since(killed).Round(10*time.Millisecond))

	// A director cut off (a host crash or a dead link: no FIN reaches
	// the router) is dropped when the hold time (3 s) runs out.
	startBGPDirector(t, nodes[1], dirs[1], false)
	if !waitHops(t, r, "10.0.0.1 10.0.0.2", 20*time.Second) {
		t.Fatalf("ECMP route before the cut: next hops %v", nextHops(t, r))
	}
	if err := lab.Isolate("d1", true); err != nil {
		t.Fatal(err)
	}
	cut := time.Now()
	if !waitHops(t, r, "10.0.0.2", 6*time.Second) {
		t.Fatalf("d1 cut off: next hops %v, want 10.0.0.2 once the hold time ran out", nextHops(t, r))
	}
	took := time.Since(cut)
	t.Logf("cut-off director's route removed after %s (hold time 3s)", took.Round(10*time.Millisecond))
	if took < 2*time.Second {
		t.Errorf("route removed after %s: sooner than the hold time allows, so not by it", took)
	}
}

// startFRR runs FRR's zebra and bgpd with bgpdConf in the router's
// namespace, all their files in one directory. FRR drops to user frr (as
// root it insists on the frrvty group): its directory must be frr's,
// under a parent it can enter.
func startFRR(t *testing.T, r *netns.Node, bgpdConf string) {
	t.Helper()
	for _, bin := range []string{"/usr/lib/frr/bgpd", "/usr/lib/frr/zebra"} {
		if _, err := os.Stat(bin); err != nil {
			testutil.Unavailable(t, "FRR is not installed (internal/testenv/setup.sh installs it): "+err.Error())
		}
	}
	fdir, err := os.MkdirTemp("", "lvsha-frr-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = os.RemoveAll(fdir) })
	if uid, gid := frrIDs(t); os.Chown(fdir, uid, gid) != nil {
		t.Fatal("chown the FRR directory")
	}
	if err := os.WriteFile(filepath.Join(fdir, "bgpd.conf"), []byte(bgpdConf), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(fdir, "zebra.conf"), []byte("hostname r\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	zsock := filepath.Join(fdir, "zserv.api")
	var frrLog syncBuffer
	for _, daemon := range []string{"zebra", "bgpd"} {
		cmd := exec.Command("/usr/lib/frr/"+daemon, "-u", "frr", "-g", "frr", "-z", zsock, "--vty_socket", fdir,
			"-i", filepath.Join(fdir, daemon+".pid"), "-f", filepath.Join(fdir, daemon+".conf"), "--log", "stdout")
		cmd.Stdout, cmd.Stderr = &frrLog, &frrLog
		if err := r.Start(cmd); err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() {
			_ = cmd.Process.Kill()
			_ = cmd.Wait()
		})
		if daemon == "zebra" && !netns.WaitFor(5*time.Second, 20*time.Millisecond, func() bool { _, err := os.Stat(zsock); return err == nil }) {
			t.Fatalf("zebra did not start:\n%s", frrLog.String())
		}
	}
	t.Cleanup(func() {
		if t.Failed() {
			t.Logf("FRR log:\n%s", frrLog.String())
		}
	})
}

// frrIDs are the uid and gid of the frr user the package creates.
func frrIDs(t *testing.T) (int, int) {
	t.Helper()
	u, err := user.Lookup("frr")
	if err != nil {
		testutil.Unavailable(t, "no frr user (install frr): "+err.Error())
	}
	uid, _ := strconv.Atoi(u.Uid)
	gid, _ := strconv.Atoi(u.Gid)
	return uid, gid
}

const bgpDirectorConfig6 = `
[global]
control_socket = "%[1]s/lvsha.sock"
state_dir = "%[1]s/state"
realtime_priority = 0

[[virtual_server]]
address = "[fd99::1]:80"
scheduler = "rr"
[virtual_server.check]
type = "exec"
argv = ["/bin/sh", "-c", "! test -e %[1]s/down"]
interval = "500ms"
timeout = "400ms"
rise = 1
fall = 1
[[virtual_server.real_server]]
address = "[fd00::100]:80"
%[3]s
[bgp]
asn = 65001
router_id = "%[2]s"
announce = [%[4]s]
drain_time = "2s"
[[bgp.neighbor]]
address = "fd00::254"
asn = 65000
hold_time = "3s"
connect_retry = "1s"
`

const frrBGPConfig6 = `frr defaults datacenter
hostname r
router bgp 65000
 bgp router-id 10.0.0.254
 no bgp ebgp-requires-policy
 neighbor fd00::1 remote-as 65001
 neighbor fd00::2 remote-as 65001
 address-family ipv6 unicast
  neighbor fd00::1 activate
  neighbor fd00::2 activate
  maximum-paths 4
 exit-address-family
`

// TestBGPWithFRRIPv6: directors peering with FRR over IPv6 announce an
// IPv6 VIP as a /128 with next-hop self; the router's kernel route has one
// next hop per director that can serve it, and loses each one on a quorum
// loss and on a clean stop. A reload adds and removes a VIP live.
func TestBGPWithFRRIPv6(t *testing.T) {
	if testing.Short() {
		t.Skip("namespaces and FRR: not in -short")
	}
	testutil.NeedRoot(t)
	lab, err := netns.NewLab(netns.UniquePrefix("bg6"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = lab.Close() })
	addNode := func(role string, n int) *netns.Node {
		node, err := lab.AddNode(role, netip.MustParsePrefix(fmt.Sprintf("10.0.0.%d/24", n)))
		if err != nil {
			t.Fatal(err)
		}
		if out, err := node.Run("ip", "-6", "addr", "add", fmt.Sprintf("fd00::%d/64", n), "dev", "eth0", "nodad"); err != nil {
			t.Fatalf("%s: %v %s", role, err, out)
		}
		return node
	}
	r := addNode("r", 254)
	d1n, d2n := addNode("d1", 1), addNode("d2", 2)
	startFRR(t, r, frrBGPConfig6)

	hops := func(vip string) string {
		out, err := r.Run("ip", "-6", "route", "show", vip)
		if err != nil {
			t.Fatalf("ip route: %v: %s", err, out)
		}
		var hs []string
		for f := range strings.FieldsSeq(out) {
			if strings.HasPrefix(f, "fd00::") {
				hs = append(hs, f)
			}
		}
		slices.Sort(hs)
		return strings.Join(hs, " ")
	}
	wait := func(vip, want string, timeout time.Duration) {
		t.Helper()
		if !netns.WaitFor(timeout, 50*time.Millisecond, func() bool { return hops(vip) == want }) {
			t.Fatalf("route to %s: next hops %q, want %q", vip, hops(vip), want)
		}
	}
	config := func(dir string, node *netns.Node, second bool) string {
		extra, announce := "", `"fd99::1"`
		if second {
			extra = "[[virtual_server]]\naddress = \"[fd99::2]:80\"\n[[virtual_server.real_server]]\naddress = \"[fd00::100]:80\"\n"
			announce += `, "fd99::2"`
		}
		return fmt.Sprintf(bgpDirectorConfig6, dir, node.Addr.Addr(), extra, announce)
	}
	start := func(node *netns.Node) *bgpDirector {
		dir := t.TempDir()
		return startBGPDirectorConf(t, node, dir, config(dir, node, false), false)
	}
	d1 := start(d1n)
	wait("fd99::1", "fd00::1", 20*time.Second)
	d2 := start(d2n)
	wait("fd99::1", "fd00::1 fd00::2", 20*time.Second)
	if st := d2.status(); st == nil || st.BGP == nil || len(st.BGP.VIPs) != 1 || st.BGP.VIPs[0].Prefix != "fd99::1/128" || !st.BGP.VIPs[0].Announced {
		t.Errorf("d2 status does not show fd99::1/128 announced: %+v", st)
	}

	// A reload adds a VIP to d2's announce, then removes it: the router
	// gains and loses that route, and the other VIP's two next hops stay.
	reload := func(second bool) {
		t.Helper()
		if err := os.WriteFile(filepath.Join(d2.dir, "lvsha.toml"), []byte(config(d2.dir, d2n, second)), 0o644); err != nil {
			t.Fatal(err)
		}
		_ = d2.cmd.Process.Signal(syscall.SIGHUP)
	}
	reload(true)
	wait("fd99::2", "fd00::2", 10*time.Second)
	if ok, err := d2n.HasAddr("lo", netip.MustParseAddr("fd99::2")); err != nil || !ok {
		t.Errorf("d2 does not hold the reloaded VIP on lo: %v %v", ok, err)
	}
	reload(false)
	wait("fd99::2", "", 10*time.Second)
	wait("fd99::1", "fd00::1 fd00::2", time.Second)
	if ok, err := d2n.HasAddr("lo", netip.MustParseAddr("fd99::2")); err != nil || ok {
		t.Errorf("d2 still holds the VIP removed by the reload on lo: %v %v", ok, err)
	}
	if err := os.WriteFile(filepath.Join(d2.dir, "down"), nil, 0o644); err != nil {
		t.Fatal(err)
	}
	wait("fd99::1", "fd00::1", 10*time.Second)
	_ = d1.cmd.Process.Signal(syscall.SIGTERM)
	wait("fd99::1", "", 2*time.Second)
	if d1.exited() {
		t.Error("d1 exited before its drain time: the route went with the process, not with the withdrawal")
	}
}
