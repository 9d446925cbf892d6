package systemdtest

import (
	"bytes"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"text/template"
	"time"

	"github.com/lvsha/lvsha/internal/process"
	"github.com/lvsha/lvsha/internal/testenv/vm"
)

// The guest's network: a veth pair (the director's VRRP interface and a
// peer the real server side uses), nothing leaves the VM.
const (
	ifDirector = "lvsha0"
	ifPeer     = "lvsha0p"
	nodeAddr   = "10.94.0.2/24"
	vip        = "10.94.0.100"
	rsVIP      = "10.94.0.200" // added by lvsha-realserver.service
	rsKeptVIP  = "10.94.0.201" // on lo before the realserver unit starts
	cfgFile    = "/etc/lvsha/lvsha.toml"
	rsCfgFile  = "/etc/lvsha/realserver.toml"
	stateDir   = "/var/lib/lvsha" // the unit's StateDirectory=lvsha
	runDir     = "/run/lvsha"     // the unit's RuntimeDirectory=lvsha
	notifyBin  = "/usr/local/bin/lvsha-notify-dump"
)

// notifyScript is the instances' notify command: it records what a notify
// child runs with (capabilities, scheduling policy) where the sandbox lets
// it write, one file per state.
const notifyScript = `#!/bin/sh
# args: instance state priority
f=` + runDir + `/notify-$2
{ echo "args: $*"; grep Cap /proc/self/status; grep '^policy' /proc/self/sched; } >"$f.tmp" && mv "$f.tmp" "$f"
`

// director is the config the tests vary.
type director struct {
	Weight12 int  // weight of 10.94.0.12:80
	HTTPS    bool // the 10.94.0.100:443 service
	Alt      bool // the 10.94.0.100:8080 service
	Priority int
}

var cfgTmpl = template.Must(template.New("cfg").Parse(`[global]
router_id = "vm"
log_level = "info"

[[vrrp_instance]]
name = "VI_1"
interface = "` + ifDirector + `"
virtual_router_id = 51
priority = {{.Priority}}
advert_interval = "500ms"
virtual_ipaddress = ["` + vip + `/24"]
notify = ["` + notifyBin + `"]

[[virtual_server]]
address = "` + vip + `:80"
scheduler = "rr"
[[virtual_server.real_server]]
address = "10.94.0.11:80"
weight = 1
[[virtual_server.real_server]]
address = "10.94.0.12:80"
weight = {{.Weight12}}
{{if .HTTPS}}
[[virtual_server]]
address = "` + vip + `:443"
scheduler = "wlc"
[[virtual_server.real_server]]
address = "10.94.0.11:443"
weight = 1
{{end}}{{if .Alt}}
[[virtual_server]]
address = "` + vip + `:8080"
scheduler = "rr"
[[virtual_server.real_server]]
address = "10.94.0.13:8080"
weight = 3
{{end}}`))

var baseCfg = director{Weight12: 1, HTTPS: true, Priority: 150}

func writeConfig(t *testing.T, d director) {
	t.Helper()
	var b bytes.Buffer
	if err := cfgTmpl.Execute(&b, d); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(cfgFile, b.Bytes(), 0o644); err != nil {
		t.Fatal(err)
	}
}

// sh runs a shell command line in the guest.
func sh(cmd string) (string, error) {
	out, err := exec.Command("sh", "-c", cmd).CombinedOutput()
	return string(out), err
}

func must(t *testing.T, cmd string) string {
	t.Helper()
	out, err := sh(cmd)
	if err != nil {
		t.Fatalf("%s: %v\n%s", cmd, err, out)
	}
	return out
}

// diagnose is what a failing subtest prints: what systemd and the journal
// say about the units, and the kernel's state.
func diagnose() string {
	var b strings.Builder
	for _, c := range []string{
		"systemctl status lvsha.service lvsha-realserver.service --no-pager -l -n 0",
		"journalctl -u lvsha.service -u lvsha-realserver.service --no-pager -n 80 -o short-monotonic",
		"ipvsadm -Ln",
		"ip -br addr",
		"ls -l " + stateDir + " " + runDir,
	} {
		out, _ := sh(c + " 2>&1")
		fmt.Fprintf(&b, "\n$ %s\n%s", c, out)
	}
	return b.String()
}

// step runs one subtest; a failing one prints diagnose().
func step(t *testing.T, name string, f func(t *testing.T)) bool {
	return t.Run(name, func(t *testing.T) {
		t.Cleanup(func() {
			if t.Failed() {
				t.Log("diagnostics:" + diagnose())
			}
		})
		f(t)
	})
}

// waitFor polls cond every 50 ms until it holds or d passed.
func waitFor(t *testing.T, d time.Duration, what string, cond func() (bool, string)) {
	t.Helper()
	deadline := time.Now().Add(d)
	for {
		ok, last := cond()
		if ok {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s: not within %v; last: %s", what, d, last)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

func prop(t *testing.T, unit, name string) string {
	t.Helper()
	return strings.TrimSpace(must(t, "systemctl show -P "+name+" "+unit))
}

func mainPID(t *testing.T) string {
	t.Helper()
	pid := prop(t, "lvsha.service", "MainPID")
	if pid == "" || pid == "0" {
		t.Fatalf("lvsha.service has no main process (MainPID=%q)", pid)
	}
	return pid
}

func hasVIP(iface, addr string) (bool, string) {
	out, _ := sh("ip -4 -o addr show dev " + iface)
	return strings.Contains(out, " "+addr+"/"), out
}

// ipvs is `ipvsadm -Ln` of the guest's kernel.
func ipvs(t *testing.T) string {
	t.Helper()
	return must(t, "ipvsadm -Ln")
}

// service returns the lines of one virtual service in ipvsadm -Ln output
// (its own line and its real servers), or "" when it is not there.
func service(table, addr string) string {
	var b strings.Builder
	in := false
	for _, l := range strings.Split(table, "\n") {
		f := strings.Fields(l)
		if len(f) >= 2 && (f[0] == "TCP" || f[0] == "UDP" || f[0] == "FWM") {
			in = f[1] == addr
		}
		if in {
			b.WriteString(l + "\n")
		}
	}
	return b.String()
}

// realWeight is the weight ipvsadm shows for a real server of a service
// block, -1 when it is absent.
func realWeight(block, real string) int {
	for _, l := range strings.Split(block, "\n") {
		f := strings.Fields(l)
		if len(f) >= 4 && f[0] == "->" && f[1] == real {
			w, _ := strconv.Atoi(f[3])
			return w
		}
	}
	return -1
}

// capNames decodes a capability mask with capsh, e.g. 0x3000 ->
// "cap_net_admin,cap_net_raw".
func capNames(t *testing.T, hex string) string {
	t.Helper()
	out := must(t, "capsh --decode="+hex)
	_, names, _ := strings.Cut(strings.TrimSpace(out), "=")
	return names
}

// statusField returns a field of /proc/PID/status.
func statusField(status, key string) string {
	m := regexp.MustCompile(`(?m)^` + key + `:\s*(\S+)`).FindStringSubmatch(status)
	if m == nil {
		return ""
	}
	return m[1]
}

// unitCaps is a capability property of the unit as systemd parsed it, in
// capsh's form (comma-separated, in capability number order, as both list
// them).
func unitCaps(t *testing.T, p string) string {
	t.Helper()
	return strings.Join(strings.Fields(prop(t, "lvsha.service", p)), ",")
}

// TestGuestSystemd runs inside the VM under systemd (started by the
// image's lvsha-vm-run.service from TestSystemdUnits). Its subtests run in
// order and build on each other, as an operator's session would.
func TestGuestSystemd(t *testing.T) {
	if !vm.InGuest() {
		t.Skip("runs in the VM under systemd, started by TestSystemdUnits")
	}
	if !step(t, "install", testInstall) {
		t.FailNow() // nothing below means anything without the package
	}
	step(t, "start_ready_after_first_reconcile", testStart)
	step(t, "master_holds_vip_recorded_in_state_dir", testMaster)
	step(t, "sandbox_capabilities", testCaps)
	step(t, "sandbox_realtime_via_LimitRTPRIO", testRealtime)
	step(t, "sandbox_filesystem", testFilesystem)
	step(t, "notify_child_lacks_NET_ADMIN_NET_RAW", testNotifyCaps)
	step(t, "notify_child_normal_scheduling", testNotifySched)
	step(t, "reload_applies_changed_config", testReload)
	step(t, "restart_removes_service_dropped_from_config", testRestart)
	step(t, "stop_releases_vip", testStop)
	step(t, "sigkill_execstoppost_cleanup_then_restart", testKillRestart)
	step(t, "sigkill_stays_down_without_vip", testKillStaysDown)
	step(t, "realserver_up_down", testRealserver)
}

func testInstall(t *testing.T) {
	out := must(t, "dpkg -i /root/lvsha.deb")
	t.Log(strings.TrimSpace(out))
	frag := prop(t, "lvsha.service", "FragmentPath")
	if real, err := filepath.EvalSymlinks(frag); err != nil || real != "/usr/lib/systemd/system/lvsha.service" {
		t.Fatalf("lvsha.service comes from %q (%q, %v), not the package", frag, real, err)
	}
	for _, c := range []string{
		"ip link add " + ifDirector + " type veth peer name " + ifPeer,
		"ip addr add " + nodeAddr + " dev " + ifDirector,
		"ip link set " + ifDirector + " up",
		"ip link set " + ifPeer + " up",
	} {
		must(t, c)
	}
	if err := os.WriteFile(notifyBin, []byte(notifyScript), 0o755); err != nil {
		t.Fatal(err)
	}
	writeConfig(t, baseCfg)
	must(t, "lvsha -t -f "+cfgFile)
}

func testStart(t *testing.T) {
	if mods, _ := sh("lsmod | grep -c '^ip_vs'"); strings.TrimSpace(mods) != "0" {
		t.Fatalf("IPVS modules loaded before the unit's ExecStartPre: %s", mods)
	}
	ready, err := startNotifyProxy()
	if err != nil {
		t.Fatal(err)
	}
	dropin := "/run/systemd/system/lvsha.service.d/test-notify-proxy.conf"
	if err := os.MkdirAll(filepath.Dir(dropin), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(dropin, []byte(proxyDropIn), 0o644); err != nil {
		t.Fatal(err)
	}
	must(t, "systemctl daemon-reload")
	defer func() {
		// The daemon keeps the proxy (it lives as long as this test
		// binary); every later start is the unit as packaged.
		_ = os.Remove(dropin)
		must(t, "systemctl daemon-reload")
	}()
	// What an operator sees: IPVS programmed once systemctl start
	// returns (Type=notify: after READY=1).
	t0 := time.Now()
	out, err := sh("systemctl start lvsha.service && ipvsadm -Ln")
	if err != nil {
		t.Fatalf("systemctl start lvsha: %v\n%s", err, out)
	}
	t.Logf("systemctl start returned after %v", time.Since(t0).Round(time.Millisecond))
	var at readyTable
	select {
	case at = <-ready:
	case <-time.After(5 * time.Second):
		t.Fatalf("the notify proxy saw no READY=1 (is the daemon's NOTIFY_SOCKET the proxy's?)")
	}
	if at.err != nil {
		t.Fatalf("reading IPVS at READY=1: %v", at.err)
	}
	for _, c := range []struct{ when, table string }{{"at READY=1", at.table}, {"when systemctl start returned", out}} {
		for _, svc := range []string{vip + ":80", vip + ":443"} {
			if service(c.table, svc) == "" {
				t.Errorf("IPVS lacks %s %s:\n%s", svc, c.when, c.table)
			}
		}
		if w := realWeight(service(c.table, vip+":80"), "10.94.0.12:80"); w != 1 {
			t.Errorf("10.94.0.12:80 weight %d %s, want 1:\n%s", w, c.when, c.table)
		}
	}
	if s := prop(t, "lvsha.service", "ActiveState"); s != "active" {
		t.Errorf("ActiveState %s after start", s)
	}
	if out, err := sh("lvsha status"); err != nil {
		t.Errorf("lvsha status: %v\n%s", err, out)
	}
}

func testMaster(t *testing.T) {
	waitFor(t, 10*time.Second, "VIP "+vip+" on "+ifDirector, func() (bool, string) { return hasVIP(ifDirector, vip) })
	b, err := os.ReadFile(filepath.Join(stateDir, "vips.json"))
	if err != nil || !strings.Contains(string(b), vip) {
		t.Errorf("%s/vips.json does not record %s: %q %v", stateDir, vip, b, err)
	}
	if _, err := os.Stat(filepath.Join(stateDir, "ipvs-owned")); err != nil {
		t.Errorf("owned services file: %v", err)
	}
}

func testCaps(t *testing.T) {
	pid := mainPID(t)
	status := must(t, "cat /proc/"+pid+"/status")
	bnd, eff, amb := statusField(status, "CapBnd"), statusField(status, "CapEff"), statusField(status, "CapAmb")
	unitBnd, unitAmb := unitCaps(t, "CapabilityBoundingSet"), unitCaps(t, "AmbientCapabilities")
	t.Logf("daemon: CapBnd %s (%s) CapEff %s CapAmb %s; unit: CapabilityBoundingSet=%s AmbientCapabilities=%s",
		bnd, capNames(t, bnd), eff, amb, unitBnd, unitAmb)
	if got := capNames(t, bnd); got != unitBnd {
		t.Errorf("bounding set %s, the unit gives %s", got, unitBnd)
	}
	if got := capNames(t, amb); got != unitAmb {
		t.Errorf("ambient set %s, the unit gives %s", got, unitAmb)
	}
	effV, _ := strconv.ParseUint(eff, 16, 64)
	bndV, _ := strconv.ParseUint(bnd, 16, 64)
	if effV&^bndV != 0 {
		t.Errorf("effective set %s beyond the bounding set %s", eff, bnd)
	}
	for _, c := range []string{"cap_net_admin", "cap_net_raw"} {
		if !strings.Contains(capNames(t, eff), c) {
			t.Errorf("the daemon lacks %s, which it needs", c)
		}
	}
	for _, c := range []string{"cap_sys_admin", "cap_sys_module", "cap_dac_override", "cap_sys_nice"} {
		if strings.Contains(capNames(t, bnd), c) {
			t.Errorf("the daemon could gain %s", c)
		}
	}
	if nnp := statusField(status, "NoNewPrivs"); nnp != "1" {
		t.Errorf("NoNewPrivs %q, the unit sets NoNewPrivileges=yes", nnp)
	}
	// The daemon did its work with these: IPVS programmed (start), VIP
	// added and adverts sent (master) are the other subtests' proof.
	out, _ := sh("systemd-analyze security lvsha.service --no-pager 2>&1 | grep -E '✗|Overall'")
	t.Logf("systemd-analyze security lvsha.service, what it flags (for information):\n%s", out)
}

func testRealtime(t *testing.T) {
	pid := mainPID(t)
	if got := prop(t, "lvsha.service", "LimitRTPRIO"); got != "99" {
		t.Errorf("LimitRTPRIO=%s", got)
	}
	tasks, err := filepath.Glob("/proc/" + pid + "/task/*/sched")
	if err != nil || len(tasks) == 0 {
		t.Fatalf("no threads of %s: %v", pid, err)
	}
	rr, spawners := 0, 0
	for _, f := range tasks {
		b, err := os.ReadFile(f)
		if err != nil {
			continue // the thread ended
		}
		m := regexp.MustCompile(`(?m)^policy\s*:\s*(\d+)`).FindSubmatch(b)
		comm, _ := os.ReadFile(filepath.Join(filepath.Dir(f), "comm"))
		switch {
		case strings.TrimSpace(string(comm)) == process.SpawnerName:
			// The thread that starts notify commands switched itself
			// to SCHED_OTHER, which needs no CAP_SYS_NICE either.
			spawners++
			if m == nil || string(m[1]) != "0" {
				t.Errorf("spawner thread %s: policy %q, want 0 (SCHED_OTHER)", f, m)
			}
		case m == nil || string(m[1]) != "2": // SCHED_RR
			t.Errorf("thread %s: policy %q, want 2 (SCHED_RR)", f, m)
		default:
			rr++
		}
	}
	out, _ := sh("chrt -p " + pid)
	t.Logf("%d threads under SCHED_RR, %d spawner thread(s) under SCHED_OTHER; chrt: %s", rr, spawners, strings.TrimSpace(out))
	if j, _ := sh("journalctl -u lvsha.service --no-pager -b | grep -c 'cannot switch to real-time'"); strings.TrimSpace(j) != "0" {
		t.Errorf("the daemon logged that it could not switch to real-time scheduling")
	}
}

func testFilesystem(t *testing.T) {
	pid := mainPID(t)
	// In the daemon's mount namespace, as root with every capability: a
	// write refused there is refused by the mounts, i.e. the sandbox.
	in := "nsenter -t " + pid + " -m -- "
	for _, dir := range []string{stateDir, runDir, "/tmp"} {
		if out, err := sh(in + "sh -c 'echo x >" + dir + "/sandbox-probe && rm " + dir + "/sandbox-probe'"); err != nil {
			t.Errorf("the daemon cannot write %s: %v %s", dir, err, out)
		}
	}
	mounts, _ := sh("findmnt -N " + pid + " -l -o TARGET,OPTIONS | grep -E '^(/|/etc|/usr|/var/lib/lvsha|/run|/run/lvsha|/tmp|/home|/root) '")
	t.Logf("the daemon's mounts:\n%s", mounts)
	for _, dir := range []string{"/etc", "/etc/lvsha", "/usr", "/usr/sbin", "/var/lib", "/root", "/home", "/run"} {
		out, err := sh(in + "sh -c 'echo x >" + dir + "/sandbox-probe'")
		if err == nil {
			_, _ = sh("rm -f " + dir + "/sandbox-probe")
			t.Errorf("the daemon can write %s (ProtectSystem=strict, ProtectHome=yes)", dir)
		} else if !strings.Contains(out, "Read-only file system") && !strings.Contains(out, "No such file or directory") {
			t.Errorf("write to %s refused for another reason: %s", dir, out)
		}
	}
	if _, err := os.Stat("/tmp/sandbox-probe"); err == nil {
		t.Errorf("the daemon's /tmp is the host's (PrivateTmp=yes)")
	}
}

// notifyDump waits for the dump the notify command wrote on entering state.
func notifyDump(t *testing.T, state string) string {
	t.Helper()
	f := filepath.Join(runDir, "notify-"+state)
	var b []byte
	waitFor(t, 10*time.Second, "notify "+state+" dump "+f, func() (bool, string) {
		var err error
		b, err = os.ReadFile(f)
		return err == nil, fmt.Sprint(err)
	})
	return string(b)
}

// testNotifyCaps: notify commands run without CAP_NET_ADMIN (12) and
// CAP_NET_RAW (13), in neither the effective nor the bounding set.
func testNotifyCaps(t *testing.T) {
	dump := notifyDump(t, "MASTER")
	t.Logf("notify child:\n%s", dump)
	for _, set := range []string{"CapEff", "CapBnd", "CapPrm", "CapAmb"} {
		hex := statusField(dump, set)
		v, err := strconv.ParseUint(hex, 16, 64)
		if err != nil {
			t.Fatalf("%s %q: %v", set, hex, err)
		}
		for _, c := range []struct {
			bit  uint
			name string
		}{{12, "CAP_NET_ADMIN"}, {13, "CAP_NET_RAW"}} {
			if v&(1<<c.bit) != 0 {
				t.Errorf("notify child has %s in %s (%s)", c.name, set, hex)
			}
		}
	}
}

func testNotifySched(t *testing.T) {
	dump := notifyDump(t, "MASTER")
	m := regexp.MustCompile(`(?m)^policy\s*:\s*(\d+)`).FindStringSubmatch(dump)
	if m == nil || m[1] != "0" {
		t.Errorf("notify child scheduling policy %v, want 0 (SCHED_NORMAL):\n%s", m, dump)
	}
}

func testReload(t *testing.T) {
	pid := mainPID(t)
	writeConfig(t, director{Weight12: 5, HTTPS: true, Alt: true, Priority: 150})
	t0 := time.Now()
	must(t, "systemctl reload lvsha.service")
	took := time.Since(t0)
	// ExecReload sends SIGHUP and returns: systemctl reload does not wait
	// for the daemon to apply the file (systemd 252 has no
	// Type=notify-reload), so the change is waited for.
	var table string
	waitFor(t, 10*time.Second, "reloaded config in IPVS", func() (bool, string) {
		table = ipvs(t)
		return realWeight(service(table, vip+":80"), "10.94.0.12:80") == 5 && service(table, vip+":8080") != "", table
	})
	t.Logf("systemctl reload returned after %v; IPVS showed the change %v after it returned",
		took.Round(time.Millisecond), time.Since(t0.Add(took)).Round(time.Millisecond))
	if got := mainPID(t); got != pid {
		t.Errorf("reload replaced the daemon (pid %s -> %s)", pid, got)
	}
	if s := prop(t, "lvsha.service", "ActiveState"); s != "active" {
		t.Errorf("ActiveState %s after reload", s)
	}
	if ok, _ := hasVIP(ifDirector, vip); !ok {
		t.Errorf("the master lost its VIP on a reload that did not touch VRRP")
	}
}

func testRestart(t *testing.T) {
	// The :443 service leaves the config while the daemon runs; the one
	// that starts after the restart knows it owned it only from the
	// state directory (systemd empties the RuntimeDirectory on stop).
	writeConfig(t, director{Weight12: 5, Alt: true, Priority: 150})
	out, err := sh("systemctl restart lvsha.service && ipvsadm -Ln")
	if err != nil {
		t.Fatalf("systemctl restart: %v\n%s", err, out)
	}
	if service(out, vip+":443") != "" {
		t.Errorf("%s:443, removed from the config, is still in IPVS after the restart:\n%s", vip, out)
	}
	for _, svc := range []string{vip + ":80", vip + ":8080"} {
		if service(out, svc) == "" {
			t.Errorf("IPVS lacks %s after the restart:\n%s", svc, out)
		}
	}
	b, err := os.ReadFile(filepath.Join(stateDir, "ipvs-owned"))
	if err != nil || strings.Contains(string(b), ":443") {
		t.Errorf("owned services file after the restart: %q %v", b, err)
	}
}

func testStop(t *testing.T) {
	waitFor(t, 10*time.Second, "VIP back after the restart", func() (bool, string) { return hasVIP(ifDirector, vip) })
	must(t, "systemctl stop lvsha.service")
	if s := prop(t, "lvsha.service", "ActiveState"); s != "inactive" {
		t.Errorf("ActiveState %s after stop, want inactive (a clean stop is no failure)", s)
	}
	if ok, out := hasVIP(ifDirector, vip); ok {
		t.Errorf("VIP still on %s after stop:\n%s", ifDirector, out)
	}
	if b, err := os.ReadFile(filepath.Join(stateDir, "vips.json")); err == nil && strings.Contains(string(b), vip) {
		t.Errorf("vips.json still records %s after a clean stop: %s", vip, b)
	}
	if _, err := os.Stat(filepath.Join(runDir, "lvsha.sock")); err == nil {
		t.Errorf("control socket left behind")
	}
	// By design the table stays programmed on stop: a restart, or the
	// other director, loses no connection.
	if table := ipvs(t); service(table, vip+":80") == "" {
		t.Errorf("IPVS emptied on stop; the daemon leaves it programmed:\n%s", table)
	}
	j := must(t, "journalctl -u lvsha.service -b --no-pager -o cat")
	if !strings.Contains(j, "cleanup: removed 0 leftover VIPs") {
		t.Errorf("ExecStopPost (lvsha cleanup) did not report after the clean stop")
	}
}

// killMain waits until the daemon is master, then SIGKILLs it with
// `systemctl kill -s KILL` (every process of the unit).
func killMain(t *testing.T) {
	t.Helper()
	waitFor(t, 10*time.Second, "VIP on "+ifDirector+" before the kill", func() (bool, string) { return hasVIP(ifDirector, vip) })
	must(t, "systemctl kill -s KILL lvsha.service")
}

func testKillRestart(t *testing.T) {
	before, _ := strconv.Atoi(prop(t, "lvsha.service", "NRestarts"))
	must(t, "systemctl start lvsha.service")
	since := strings.TrimSpace(must(t, "date +@%s.%N"))
	killMain(t)
	// Restart=on-failure: SIGKILL is a failure, so it comes back
	// (RestartSec=2s later).
	waitFor(t, 20*time.Second, "restart after SIGKILL", func() (bool, string) {
		n, _ := strconv.Atoi(prop(t, "lvsha.service", "NRestarts"))
		s := prop(t, "lvsha.service", "ActiveState")
		return n == before+1 && s == "active", fmt.Sprintf("NRestarts %d, %s", n, s)
	})
	// Between the death and the restart the node was down: the journal
	// shows ExecStopPost removing the VIP in that window. (That the VIP
	// really is gone while the unit stays down is the next subtest's.)
	j := must(t, "journalctl -u lvsha.service --no-pager -o cat --since "+since)
	killed := strings.Index(j, "Main process exited, code=killed, status=9/KILL")
	cleaned := strings.Index(j, "cleanup: removed 1 leftover VIP")
	restarted := strings.Index(j, "Scheduled restart job")
	if killed < 0 || cleaned < killed || restarted < cleaned {
		t.Errorf("want SIGKILL, then ExecStopPost removing the VIP, then the restart; journal:\n%s", j)
	}
	waitFor(t, 10*time.Second, "VIP back after the restart", func() (bool, string) { return hasVIP(ifDirector, vip) })
}

func testKillStaysDown(t *testing.T) {
	if s := prop(t, "lvsha.service", "ActiveState"); s != "active" {
		must(t, "systemctl start lvsha.service")
	}
	// A config broken while the daemon runs: every restart after the
	// kill fails in ExecStartPre (lvsha -t), so the node stays down.
	writeConfig(t, director{Weight12: 5, Alt: true, Priority: 300})
	defer func() {
		writeConfig(t, director{Weight12: 5, Alt: true, Priority: 150})
		_, _ = sh("systemctl stop lvsha.service; systemctl reset-failed lvsha.service")
	}()
	killMain(t)
	waitFor(t, 5*time.Second, "the unit down after SIGKILL", func() (bool, string) {
		s := prop(t, "lvsha.service", "SubState")
		return s == "auto-restart" || s == "failed", s
	})
	// Long enough for a restart attempt (RestartSec=2s) to fail.
	deadline := time.Now().Add(5 * time.Second)
	for time.Now().Before(deadline) {
		if ok, out := hasVIP(ifDirector, vip); ok {
			t.Fatalf("VIP on %s while the unit is down:\n%s", ifDirector, out)
		}
		if s := prop(t, "lvsha.service", "ActiveState"); s == "active" {
			t.Fatalf("the unit became active with an invalid config")
		}
		time.Sleep(100 * time.Millisecond)
	}
	if n, _ := strconv.Atoi(prop(t, "lvsha.service", "NRestarts")); n < 1 {
		t.Errorf("no restart attempt after the kill (NRestarts %d)", n)
	}
	t.Logf("down: %s", must(t, "systemctl show -p ActiveState,SubState,Result,NRestarts lvsha.service | tr '\\n' ' '"))
}

var rsSysctls = []string{
	"net/ipv4/conf/all/arp_ignore", "net/ipv4/conf/all/arp_announce",
	"net/ipv4/conf/" + ifPeer + "/arp_ignore", "net/ipv4/conf/" + ifPeer + "/arp_announce",
}

func readSysctls(t *testing.T) map[string]string {
	t.Helper()
	m := map[string]string{}
	for _, k := range rsSysctls {
		b, err := os.ReadFile("/proc/sys/" + k)
		if err != nil {
			t.Fatal(err)
		}
		m[k] = strings.TrimSpace(string(b))
	}
	return m
}

func testRealserver(t *testing.T) {
	cfg := "[realserver]\ninterface = \"" + ifPeer + "\"\nvips = [\"" + rsVIP + "\", \"" + rsKeptVIP + "\"]\n"
	if err := os.WriteFile(rsCfgFile, []byte(cfg), 0o644); err != nil {
		t.Fatal(err)
	}
	// One of the VIPs is on lo already: down must leave it there.
	must(t, "ip addr add "+rsKeptVIP+"/32 dev lo scope host")
	before := readSysctls(t)
	must(t, "systemctl start lvsha-realserver.service")
	for _, a := range []string{rsVIP, rsKeptVIP} {
		if ok, out := hasVIP("lo", a); !ok {
			t.Errorf("%s not on lo after start:\n%s", a, out)
		}
	}
	up := readSysctls(t)
	for k, v := range up {
		want := "1"
		if strings.HasSuffix(k, "arp_announce") {
			want = "2"
		}
		if v != want {
			t.Errorf("%s = %s after start, want %s", k, v, want)
		}
	}
	state := filepath.Join(runDir, "realserver.json")
	if _, err := os.Stat(state); err != nil {
		t.Fatalf("realserver state: %v", err)
	}
	// The director's unit shares /run/lvsha: its stop must not take the
	// realserver state with it (RuntimeDirectoryPreserve=yes).
	must(t, "systemctl start lvsha.service && systemctl stop lvsha.service")
	if _, err := os.Stat(state); err != nil {
		t.Errorf("realserver state gone after the director's stop: %v", err)
	}
	must(t, "systemctl stop lvsha-realserver.service")
	if ok, _ := hasVIP("lo", rsVIP); ok {
		t.Errorf("%s still on lo after stop", rsVIP)
	}
	if ok, out := hasVIP("lo", rsKeptVIP); !ok {
		t.Errorf("%s, on lo before start, removed by stop:\n%s", rsKeptVIP, out)
	}
	if after := readSysctls(t); fmt.Sprint(after) != fmt.Sprint(before) {
		t.Errorf("sysctls after stop %v, before start %v", after, before)
	}
	if s := prop(t, "lvsha-realserver.service", "ActiveState"); s != "inactive" {
		t.Errorf("lvsha-realserver ActiveState %s after stop", s)
	}
}
