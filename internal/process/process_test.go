package process

import (
	"fmt"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"testing"

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
		fmt.Printf("%d/%d", a.Policy, a.Priority)
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

// runStartChild is the child of TestStartNormal: under SCHED_RR it starts
// one reporter with StartNormal and one with a plain Start, and prints
// what each runs under, then its own threads' policies.
func runStartChild() int {
	if os.Getenv(noNiceEnv) != "" {
		if b, _ := os.ReadFile("/proc/self/status"); !strings.Contains(string(b), "CapEff:\t") || hasCap(string(b), unix.CAP_SYS_NICE) {
			fmt.Println("error: CAP_SYS_NICE not dropped")
			return 1
		}
	}
	if err := SetRealtime(7); err != nil {
		fmt.Println("error:", err)
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
	normal, plain := report(StartNormal), report((*exec.Cmd).Start)
	var threads []string
	tasks, _ := os.ReadDir("/proc/self/task")
	for _, t := range tasks {
		tid, _ := strconv.Atoi(t.Name())
		if a, err := unix.SchedGetAttr(tid, 0); err == nil {
			threads = append(threads, fmt.Sprintf("%d/%d", a.Policy, a.Priority))
		}
	}
	fmt.Println(normal, plain, strings.Join(threads, " "))
	return 0
}

// noNiceEnv tells the child of TestStartNormal it must lack CAP_SYS_NICE.
const noNiceEnv = "LVSHA_PROCESS_NO_SYS_NICE"

// hasCap reports whether the CapEff line of a /proc/PID/status has cap.
func hasCap(status string, cap int) bool {
	_, rest, _ := strings.Cut(status, "CapEff:\t")
	hex, _, _ := strings.Cut(rest, "\n")
	v, err := strconv.ParseUint(hex, 16, 64)
	return err == nil && v&(1<<cap) != 0
}

// TestStartNormal: a real-time process starts a child under normal
// scheduling with StartNormal (a plain Start would pass SCHED_RR on, the
// negative control), and keeps every one of its own threads real-time;
// as root, and as the packaged unit runs the daemon: without CAP_SYS_NICE,
// which an unprivileged thread needs to clear the reset-on-fork flag
// again (sched(7)).
func TestStartNormal(t *testing.T) {
	if testing.Short() {
		testutil.Unavailable(t, "sets real-time scheduling in a child: not with -short")
	}
	testutil.NeedRoot(t)
	exe, err := os.Executable() // setpriv's /proc/self/exe would be setpriv
	if err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		name string
		argv []string
		env  string
	}{
		{"root", []string{exe}, ""},
		// The packaged unit's daemon: real-time (there through
		// LimitRTPRIO=, here from chrt, since raising the limit needs
		// CAP_SYS_RESOURCE, which the build machines lack) without
		// CAP_SYS_NICE.
		{"unit_without_CAP_SYS_NICE", []string{"chrt", "-r", "7", "setpriv", "--bounding-set=-sys_nice", "--inh-caps=-sys_nice", "--", exe}, noNiceEnv + "=1"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			cmd := exec.Command(tc.argv[0], append(tc.argv[1:], "-test.run=^$")...)
			cmd.Env = append(os.Environ(), rtChildEnv+"=start", tc.env)
			out, err := cmd.CombinedOutput()
			if err != nil {
				t.Fatalf("child: %v\n%s", err, out)
			}
			f := strings.Fields(string(out))
			rr := fmt.Sprintf("%d/7", unix.SCHED_RR)
			if len(f) < 3 || f[0] != fmt.Sprintf("%d/0", unix.SCHED_NORMAL) || f[1] != rr {
				t.Fatalf("StartNormal's child, plain Start's child, threads: %q", out)
			}
			for _, th := range f[2:] {
				if th != rr {
					t.Errorf("a thread left real-time scheduling: %q", out)
				}
			}
		})
	}
}
