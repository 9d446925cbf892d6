package director

import (
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/lvsha/lvsha/internal/testenv/testutil"
)

// TestTrackedFileAndScriptHandOver runs two real directors in namespaces;
// the master (150) tracks a drain file (weight 1) and a script (weight -60,
// fall 2 every 100ms, timeout 300ms). A drain of -60 hands over to the
// backup (100, preempt) and its removal hands back; -254 is FAULT; the
// script failing hands over within fall x interval plus the backup's
// Master_Down_Interval; a hanging script, run under normal scheduling
// without network capabilities, is killed at its timeout and fails.
func TestTrackedFileAndScriptHandOver(t *testing.T) {
	testutil.NeedRoot(t)
	bin := buildLvsha(t)
	_, n1, n2 := pairLab(t, "lvt")
	dir := t.TempDir()
	drain := filepath.Join(dir, "run", "drain")
	if err := os.Mkdir(filepath.Dir(drain), 0o755); err != nil {
		t.Fatal(err)
	}
	ok, hang, pidFile := filepath.Join(dir, "gw-ok"), filepath.Join(dir, "hang"), filepath.Join(dir, "pid")
	script := filepath.Join(dir, "check-gw")
	if err := os.WriteFile(script, fmt.Appendf(nil, "#!/bin/sh\nif [ -e %s ]; then echo $$ > %s; exec sleep 60; fi\n[ -e %s ]\n", hang, pidFile, ok), 0o755); err != nil {
		t.Fatal(err)
	}
	touch := func(p, s string) {
		t.Helper()
		if err := os.WriteFile(p, []byte(s), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	rm := func(p string) {
		t.Helper()
		if err := os.Remove(p); err != nil {
			t.Fatal(err)
		}
	}
	touch(ok, "")
	const interval, fall = 100 * time.Millisecond, 2
	d1 := startDirectorWith(t, bin, n1, 150, dir, fmt.Sprintf(`track_file = ["drain"]
track_script = ["gw"]

[[track_file]]
name = "drain"
path = %q

[[track_script]]
name = "gw"
argv = [%q]
interval = "%s"
timeout = "300ms"
fall = %d
weight = -60
`, drain, script, interval, fall))
	d2 := startDirector(t, bin, n2, 100)
	// state is d1's state and priority (-1: any) and d2's state.
	state := func(want1, want2 string, prio1 int) func() bool {
		return func() bool {
			v1 := d1.vrrp(t)
			return v1.State == want1 && (prio1 < 0 || v1.Priority == prio1) && d2.vrrp(t).State == want2
		}
	}
	waitCond(t, "d1 MASTER 150, d2 BACKUP", state("MASTER", "BACKUP", 150))

	touch(drain, "-60\n")
	waitCond(t, "drained to 90: d2 MASTER", state("BACKUP", "MASTER", 90))
	m := scrapeIn(t, n1, "127.0.0.1:9610")
	for _, want := range []string{`lvsha_track_file_value{track_file="drain"} -60`, `lvsha_track_script_succeeding{track_script="gw"} 1`,
		`lvsha_vrrp_priority{vrrp_instance="VI_1"} 90`} {
		if !strings.Contains(m, want) {
			t.Errorf("metrics lack %s", want)
		}
	}
	if out, err := n1.Run(bin, "status", "-S", d1.sock); err != nil || !strings.Contains(out, "file    drain  1       -60") ||
		!strings.Contains(out, "script  gw     -60     succeeding  "+script) {
		t.Errorf("lvsha status: %v\n%s", err, out)
	}
	rm(drain)
	waitCond(t, "drain removed: d1 MASTER again", state("MASTER", "BACKUP", 150))
	touch(drain, "-254\n")
	waitCond(t, "drain -254: d1 FAULT", state("FAULT", "MASTER", -1))
	if c := d1.vrrp(t).LastCause; c != "tracked file drain: -254" {
		t.Errorf("FAULT cause %q", c)
	}
	rm(drain)
	waitCond(t, "drain removed: d1 MASTER again", state("MASTER", "BACKUP", 150))

	// The script fails: d1 drops to 90, and d2 takes over when its
	// master-down timer runs out (it ignores the lower adverts, RFC 9568
	// 6.4.2): at most one interval until the next run, fall runs, then
	// Master_Down_Interval (3 x 100ms + skew), plus slack for status polls.
	rm(ok)
	start := time.Now()
	waitCond(t, "script failing: d2 MASTER", state("BACKUP", "MASTER", 90))
	took := time.Since(start)
	t.Logf("takeover %v after the script started failing", took)
	if limit := interval + fall*interval + 400*time.Millisecond + 400*time.Millisecond; took > limit {
		t.Errorf("takeover took %v, want within %v", took, limit)
	}
	touch(ok, "")
	waitCond(t, "script succeeding: d1 MASTER again", state("MASTER", "BACKUP", 150))

	// A hanging script: killed at the timeout, counted as failing.
	touch(hang, "")
	var pid int
	waitCond(t, "the hanging script started", func() bool {
		b, err := os.ReadFile(pidFile)
		pid, _ = strconv.Atoi(strings.TrimSpace(string(b)))
		return err == nil && pid > 0
	})
	// It runs under normal scheduling (the daemon is SCHED_RR) and
	// without CAP_NET_ADMIN or CAP_NET_RAW.
	if attr, err := unix.SchedGetAttr(pid, 0); err != nil || attr.Policy != unix.SCHED_NORMAL {
		t.Errorf("script scheduling %+v %v, want SCHED_NORMAL", attr, err)
	}
	if eff := capEff(t, pid); eff&(1<<unix.CAP_NET_ADMIN|1<<unix.CAP_NET_RAW) != 0 {
		t.Errorf("script has network capabilities: CapEff %#x", eff)
	}
	waitCond(t, "hanging script killed at its timeout", func() bool {
		return unix.Kill(pid, 0) == unix.ESRCH || isZombie(pid)
	})
	waitCond(t, "hanging script failing: d2 MASTER", state("BACKUP", "MASTER", 90))
	rm(hang)
	waitCond(t, "script succeeding: d1 MASTER again", state("MASTER", "BACKUP", 150))
}

// capEff returns the effective capabilities of pid.
func capEff(t *testing.T, pid int) uint64 {
	t.Helper()
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		t.Fatal(err)
	}
	for _, l := range strings.Split(string(b), "\n") {
		if v, ok := strings.CutPrefix(l, "CapEff:"); ok {
			n, err := strconv.ParseUint(strings.TrimSpace(v), 16, 64)
			if err != nil {
				t.Fatal(err)
			}
			return n
		}
	}
	t.Fatal("no CapEff")
	return 0
}

// TestTrackRefWeightOverride: an instance's own weight for a tracked file
// ({name, weight}) is the one its priority follows: the file's weight 1
// would raise the master to 180 on "30"; the instance's -2 lowers it to 90
// and the backup (100) takes over.
func TestTrackRefWeightOverride(t *testing.T) {
	testutil.NeedRoot(t)
	bin := buildLvsha(t)
	_, n1, n2 := pairLab(t, "lvw")
	dir := t.TempDir()
	drain := filepath.Join(dir, "drain")
	d1 := startDirectorWith(t, bin, n1, 150, dir, fmt.Sprintf(`track_file = [{name = "drain", weight = -2}]

[[track_file]]
name = "drain"
path = %q
`, drain))
	d2 := startDirector(t, bin, n2, 100)
	waitCond(t, "d1 MASTER 150, d2 BACKUP", func() bool {
		v1 := d1.vrrp(t)
		return v1.State == "MASTER" && v1.Priority == 150 && d2.vrrp(t).State == "BACKUP"
	})
	if err := os.WriteFile(drain, []byte("30\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	waitCond(t, "d1 at 150 - 2*30 = 90, d2 MASTER", func() bool {
		v1 := d1.vrrp(t)
		return v1.State == "BACKUP" && v1.Priority == 90 && d2.vrrp(t).State == "MASTER"
	})
}
