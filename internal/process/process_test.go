package process

import (
	"fmt"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"unsafe"

	"golang.org/x/sys/unix"

	"github.com/lvsha/lvsha/internal/testenv/testutil"
)

const rtChildEnv = "LVSHA_PROCESS_RT_CHILD"

func TestMain(m *testing.M) {
	switch os.Getenv(rtChildEnv) {
	case "":
	case "report":
		a, err := unix.SchedGetAttr(0, 0)
		if err != nil {
			fmt.Println("error:", err)
			os.Exit(1)
		}
		status, _ := os.ReadFile("/proc/self/status")
		fmt.Printf("%d/%d %s", a.Policy, a.Priority, capsOf(string(status)))
		os.Exit(0)
	case "start":
		os.Exit(runStartChild())
	default:
		os.Exit(runRTChild())
	}
	os.Exit(m.Run())
}

// runRTChild is the child of TestSetRealtime: it switches itself to
// SCHED_RR and reports every thread's policy.
func runRTChild() int {
	if err := SetRealtime(7); err != nil {
		fmt.Println("error:", err)
		return 1
	}
	tasks, _ := os.ReadDir("/proc/self/task")
	var out []string
	for _, t := range tasks {
		tid, _ := strconv.Atoi(t.Name())
		a, err := unix.SchedGetAttr(tid, 0)
		if err != nil {
			continue
		}
		out = append(out, fmt.Sprintf("%d/%d", a.Policy, a.Priority))
	}
	fmt.Println(strings.Join(out, " "))
	return 0
}

func TestSetRealtime(t *testing.T) {
	if testing.Short() {
		testutil.Unavailable(t, "sets real-time scheduling in a child: not with -short")
	}
	testutil.NeedRoot(t)
	if err := SetRealtime(0); err == nil {
		t.Error("priority 0 accepted")
	}
	// In a child process: real-time scheduling must not leak into the
	// test binary.
	cmd := exec.Command("/proc/self/exe", "-test.run=^$")
	cmd.Env = append(os.Environ(), rtChildEnv+"=1")
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("child: %v\n%s", err, out)
	}
	threads := strings.Fields(strings.TrimSpace(string(out)))
	if len(threads) < 2 {
		t.Fatalf("child reported %q", out)
	}
	want := fmt.Sprintf("%d/7", unix.SCHED_RR)
	for _, th := range threads {
		if th != want {
			t.Errorf("thread policy/priority %s, want %s (all: %s)", th, want, out)
		}
	}
}

// runStartChild is the child of TestChildStarter: under SCHED_RR, as
// root, it starts a reporter with ChildStarter(0), one with
// ChildStarter(CAP_NET_ADMIN) and one with a plain Start (the negative
// control), then reports its own threads.
func runStartChild() int {
	if err := SetRealtime(7); err != nil {
		fmt.Println("error:", err)
		return 1
	}
	// Then, as under the packaged unit, without CAP_SYS_NICE (which, for
	// one, clearing a thread's reset-on-fork flag would need). The unit
	// gets SCHED_RR from LimitRTPRIO; this machine's root may not raise
	// that limit (no CAP_SYS_RESOURCE), hence this order.
	if err := dropSysNice(); err != nil {
		fmt.Println("error: drop CAP_SYS_NICE:", err)
		return 1
	}
	if err := raiseAmbient(); err != nil {
		fmt.Println("error: raise ambient:", err)
		return 1
	}
	report := func(start func(*exec.Cmd) error) string {
		cmd := exec.Command("/proc/self/exe", "-test.run=^$")
		cmd.Env = append(os.Environ(), rtChildEnv+"=report")
		var out strings.Builder
		cmd.Stdout = &out
		if err := start(cmd); err != nil {
			return "error:" + err.Error()
		}
		if err := cmd.Wait(); err != nil {
			return "error:" + err.Error()
		}
		return out.String()
	}
	var lines []string
	lines = append(lines, "none "+report(ChildStarter(0)))
	lines = append(lines, "netadmin "+report(ChildStarter(1<<unix.CAP_NET_ADMIN)))
	lines = append(lines, "again "+report(ChildStarter(0))) // the same spawner, reused
	lines = append(lines, "plain "+report((*exec.Cmd).Start))
	tasks, _ := os.ReadDir("/proc/self/task")
	for _, t := range tasks {
		tid, _ := strconv.Atoi(t.Name())
		a, err := unix.SchedGetAttr(tid, 0)
		if err != nil {
			continue
		}
		comm, _ := os.ReadFile("/proc/self/task/" + t.Name() + "/comm")
		status, _ := os.ReadFile("/proc/self/task/" + t.Name() + "/status")
		lines = append(lines, fmt.Sprintf("thread %s %d/%d %s", strings.TrimSpace(string(comm)), a.Policy, a.Priority, capsOf(string(status))))
	}
	fmt.Print(strings.Join(lines, "\n"))
	return 0
}

// raiseAmbient puts the network capabilities and CAP_SETPCAP in every
// thread's inheritable and ambient sets, as the packaged unit's
// AmbientCapabilities does, so that the test sees them taken from those
// sets too. The test binary links no cgo, so AllThreadsSyscall works.
func raiseAmbient() error {
	hdr := unix.CapUserHeader{Version: unix.LINUX_CAPABILITY_VERSION_3}
	var data [2]unix.CapUserData
	if err := unix.Capget(&hdr, &data[0]); err != nil {
		return err
	}
	data[0].Inheritable |= 1<<unix.CAP_NET_ADMIN | 1<<unix.CAP_NET_RAW | 1<<unix.CAP_SETPCAP
	if _, _, e := syscall.AllThreadsSyscall(syscall.SYS_CAPSET, uintptr(unsafe.Pointer(&hdr)), uintptr(unsafe.Pointer(&data[0])), 0); e != 0 {
		return fmt.Errorf("capset: %w", e)
	}
	for _, c := range []int{unix.CAP_NET_ADMIN, unix.CAP_NET_RAW, unix.CAP_SETPCAP} {
		if _, _, e := syscall.AllThreadsSyscall6(syscall.SYS_PRCTL, unix.PR_CAP_AMBIENT, unix.PR_CAP_AMBIENT_RAISE, uintptr(c), 0, 0, 0); e != 0 {
			return fmt.Errorf("ambient raise %d: %w", c, e)
		}
	}
	return nil
}

// dropSysNice takes CAP_SYS_NICE from every thread's effective and
// permitted sets.
func dropSysNice() error {
	hdr := unix.CapUserHeader{Version: unix.LINUX_CAPABILITY_VERSION_3}
	var data [2]unix.CapUserData
	if err := unix.Capget(&hdr, &data[0]); err != nil {
		return err
	}
	data[0].Effective &^= 1 << unix.CAP_SYS_NICE
	data[0].Permitted &^= 1 << unix.CAP_SYS_NICE
	if _, _, e := syscall.AllThreadsSyscall(syscall.SYS_CAPSET, uintptr(unsafe.Pointer(&hdr)), uintptr(unsafe.Pointer(&data[0])), 0); e != 0 {
		return fmt.Errorf("capset: %w", e)
	}
	return nil
}

// capsOf returns the capability sets of a /proc status file as
// "Inh:... Prm:... Eff:... Bnd:... Amb:...".
func capsOf(status string) string {
	var out []string
	for _, l := range strings.Split(status, "\n") {
		if k, v, ok := strings.Cut(l, ":\t"); ok && strings.HasPrefix(k, "Cap") {
			out = append(out, strings.TrimPrefix(k, "Cap")+":"+v)
		}
	}
	return strings.Join(out, " ")
}

// capSet parses one set ("Bnd") out of capsOf's text.
func capSet(t *testing.T, caps, set string) uint64 {
	t.Helper()
	for _, f := range strings.Fields(caps) {
		if k, v, ok := strings.Cut(f, ":"); ok && k == set {
			n, err := strconv.ParseUint(v, 16, 64)
			if err != nil {
				t.Fatalf("%s in %q: %v", set, caps, err)
			}
			return n
		}
	}
	t.Fatalf("no %s in %q", set, caps)
	return 0
}

// TestChildStarter: a real-time root process starts children under normal
// scheduling and without CAP_NET_ADMIN, CAP_NET_RAW and CAP_SETPCAP in
// any set (or with the one it keeps), while every one of its own threads
// but the spawners stays real-time with its capabilities. A plain Start,
// the negative control, passes both SCHED_RR and the capabilities on.
func TestChildStarter(t *testing.T) {
	if testing.Short() {
		testutil.Unavailable(t, "sets real-time scheduling in a child: not with -short")
	}
	testutil.NeedRoot(t)
	cmd := exec.Command("/proc/self/exe", "-test.run=^$")
	cmd.Env = append(os.Environ(), rtChildEnv+"=start")
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("child: %v\n%s", err, out)
	}
	const (
		admin   = 1 << unix.CAP_NET_ADMIN
		raw     = 1 << unix.CAP_NET_RAW
		setpcap = 1 << unix.CAP_SETPCAP
		all     = admin | raw | setpcap
	)
	normal, rr := fmt.Sprintf("%d/0", unix.SCHED_NORMAL), fmt.Sprintf("%d/7", unix.SCHED_RR)
	spawners, others := 0, 0
	for _, l := range strings.Split(string(out), "\n") {
		f := strings.SplitN(l, " ", 3)
		if len(f) < 3 {
			t.Fatalf("line %q in:\n%s", l, out)
		}
		kind, policy, caps := f[0], f[1], f[2]
		if kind == "thread" {
			g := strings.SplitN(f[2], " ", 2)
			policy, caps = g[0], g[1]
			if f[1] == SpawnerName {
				spawners++
				if policy != normal {
					t.Errorf("spawner thread runs %s, want %s", policy, normal)
				}
				continue
			}
			others++
			if policy != rr || capSet(t, caps, "Bnd")&all != all || capSet(t, caps, "Eff")&all != all {
				t.Errorf("a thread of the process lost real-time scheduling or capabilities: %s", l)
			}
			continue
		}
		want := map[string]uint64{"none": 0, "again": 0, "netadmin": admin, "plain": all}[kind]
		wantPolicy := normal
		if kind == "plain" {
			wantPolicy = rr
		}
		if policy != wantPolicy {
			t.Errorf("%s child runs %s, want %s", kind, policy, wantPolicy)
		}
		for _, set := range []string{"Prm", "Eff", "Bnd"} {
			if got := capSet(t, caps, set) & all; got != want {
				t.Errorf("%s child: %s has %#x of the network capabilities, want %#x (%s)", kind, set, got, want, caps)
			}
		}
		if kind == "plain" && capSet(t, caps, "Amb")&all != all {
			t.Errorf("plain child: ambient %s lacks the raised capabilities: the test sets nothing up", caps)
		}
		if got := capSet(t, caps, "Inh") | capSet(t, caps, "Amb"); got&all&^want != 0 {
			t.Errorf("%s child: inheritable/ambient hold %#x (%s)", kind, got, caps)
		}
	}
	// One spawner per distinct keep: "again" reused the first.
	if spawners != 2 || others < 2 {
		t.Errorf("%d spawner threads (want 2) and %d others:\n%s", spawners, others, out)
	}
}
