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
	if os.Getenv(rtChildEnv) != "" {
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
