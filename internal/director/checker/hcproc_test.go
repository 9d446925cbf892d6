package checker

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/lvsha/lvsha/healthcheck"
	"github.com/lvsha/lvsha/healthcheck/hctest"
	"github.com/lvsha/lvsha/internal/testenv/testutil"
)

// TestMain makes this test binary a checker process when started as one
// (the Client under test starts /proc/self/exe checker), or a daemon
// stand-in for TestChildExitsWhenDaemonDies.
func TestMain(m *testing.M) {
	RunChildIfAsked()
	if os.Getenv("HCPROC_TEST_PARENT") == "1" {
		os.Exit(fakeDaemon())
	}
	os.Exit(m.Run())
}

// fakeDaemon runs a Client, prints its checker's pid and waits to be killed.
func fakeDaemon() int {
	c := NewClient(nil, Command("info", "text"))
	spec := &healthcheck.Spec{Type: healthcheck.TypeTCP, Interval: time.Second, Timeout: time.Second, Rise: 1, Fall: 1}
	if err := c.Update([]Target{{ID: "x", Addr: netip.MustParseAddrPort("127.0.0.1:1"), Spec: spec}}); err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	go func() {
		for c.Pid() == 0 {
			time.Sleep(time.Millisecond)
		}
		fmt.Println(c.Pid())
	}()
	_ = c.Run(context.Background())
	return 1
}

// newWeb is a loopback HTTP server answering 200 or 503, as the test
// changes it.
func newWeb(t *testing.T, code int) *hctest.Server {
	if code == 200 {
		return hctest.NewServer(t, hctest.Always(hctest.OK))
	}
	return hctest.NewServer(t, hctest.Always(hctest.Unavailable))
}

func target(id string, w *hctest.Server, initialUp bool) Target {
	return Target{ID: id, Addr: w.Addr, Group: "svc", Spec: &healthcheck.Spec{
		Type: healthcheck.TypeHTTP, Method: "GET", Path: "/", Status: []healthcheck.StatusRange{{Lo: 200, Hi: 299}}, MaxBody: 64 << 10,
		Interval: 50 * time.Millisecond, Timeout: time.Second,
		Rise: 1, Fall: 1, InitialUp: initialUp,
	}}
}

// run starts c and stops it at the end of the test, checking that its
// child is gone then.
func run(t *testing.T, c *Client) {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- c.Run(ctx) }()
	pid := waitPid(t, c, 0)
	t.Cleanup(func() {
		pid := c.Pid()
		cancel()
		if err := <-done; err != nil {
			t.Errorf("Run: %v", err)
		}
		if pid != 0 && alive(pid) {
			t.Errorf("checker %d still running after Run returned", pid)
		}
	})
	if cmd, _ := os.ReadFile(fmt.Sprintf("/proc/%d/cmdline", pid)); !strings.Contains(string(cmd), "\x00"+ChildArg+"\x00") {
		t.Errorf("checker command line %q", cmd)
	}
}

func newClient(t *testing.T) *Client {
	return NewClient(slog.New(slog.NewTextHandler(t.Output(), nil)), Command("debug", "text"))
}

// waitPid waits for a checker whose pid is not old.
func waitPid(t *testing.T, c *Client, old int) int {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for {
		if pid := c.Pid(); pid != 0 && pid != old {
			return pid
		}
		if time.Now().After(deadline) {
			t.Fatalf("no new checker process (old pid %d)", old)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

func alive(pid int) bool {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return false
	}
	// A zombie waiting for init to reap it has exited.
	f := strings.Fields(string(b[strings.LastIndexByte(string(b), ')')+1:]))
	return len(f) > 0 && f[0] != "Z"
}

// waitExit waits for any process (not only a child of ours) to exit, by
// polling its pidfd.
func waitExit(t *testing.T, pid int, within time.Duration) {
	t.Helper()
	fd, err := unix.PidfdOpen(pid, 0)
	if errors.Is(err, unix.ESRCH) {
		return
	}
	if err != nil {
		t.Fatal(err)
	}
	defer unix.Close(fd)
	fds := []unix.PollFd{{Fd: int32(fd), Events: unix.POLLIN}}
	for {
		n, err := unix.Poll(fds, int(within.Milliseconds()))
		if errors.Is(err, unix.EINTR) {
			continue
		}
		if err != nil || n == 0 {
			t.Fatalf("process %d did not exit within %v (%v)", pid, within, err)
		}
		return
	}
}

func next(t *testing.T, c *Client) healthcheck.Transition {
	t.Helper()
	select {
	case tr := <-c.Transitions():
		return tr
	case <-time.After(10 * time.Second):
		t.Fatal("no transition")
	}
	panic("unreachable")
}

func TestChildChecksAndReports(t *testing.T) {
	a, b := newWeb(t, 200), newWeb(t, 503)
	c := newClient(t)
	if err := c.Update([]Target{target("a", a, false), target("b", b, true)}); err != nil {
		t.Fatal(err)
	}
	run(t, c)
	got := map[string]healthcheck.Transition{}
	for range 2 {
		tr := next(t, c)
		got[tr.ID] = tr
	}
	if tr := got["a"]; !tr.Up || tr.Reason != "ok" || tr.Addr != a.Addr {
		t.Errorf("a: %+v, want UP ok", tr)
	}
	if tr := got["b"]; tr.Up || tr.Reason != "status 503" {
		t.Errorf("b: %+v, want DOWN status 503", tr)
	}

	ctx := t.Context()
	snap, err := c.Snapshot(ctx)
	if err != nil || len(snap) != 2 || !snap[0].Up || snap[1].Up || snap[1].LastError != "status 503" || snap[1].Checks == 0 {
		t.Fatalf("snapshot %+v %v", snap, err)
	}
	st, err := c.Stats(ctx)
	if err != nil {
		t.Fatal(err)
	}
	h := st.Durations["svc"]
	if h == nil || len(st.Durations) != 1 || h.Count < snap[0].Checks+snap[1].Checks || h.Sum <= 0 {
		t.Fatalf("durations %+v for checks %d+%d", st.Durations, snap[0].Checks, snap[1].Checks)
	}
	for i := 1; i < len(h.Counts); i++ {
		if h.Counts[i] < h.Counts[i-1] || h.Counts[i] > h.Count {
			t.Fatalf("buckets not cumulative: %v (count %d)", h.Counts, h.Count)
		}
	}
	if len(st.Failures) != 1 || st.Failures[0].ID != "b" || st.Failures[0].Reason != healthcheck.ClassStatus || st.Failures[0].N == 0 {
		t.Errorf("failures %+v", st.Failures)
	}

	// An invalid set is refused by the child: nothing changes.
	bad := target("c", a, true)
	bad.Spec.Interval = 0
	if err := c.Update([]Target{target("a", a, false), bad}); err == nil || !strings.Contains(err.Error(), "target c") {
		t.Errorf("invalid update: %v", err)
	}
	if snap, _ := c.Snapshot(ctx); len(snap) != 2 {
		t.Errorf("after an invalid update: %+v", snap)
	}

	// A regular expression crosses the process boundary; b goes away, and
	// its failure counts with it.
	withRe := target("r", a, true)
	withRe.Spec.BodyRegex = regexp.MustCompile("^never$")
	if err := c.Update([]Target{target("a", a, false), withRe}); err != nil {
		t.Fatal(err)
	}
	if tr := next(t, c); tr.ID != "r" || tr.Up || !strings.Contains(tr.Reason, "match") {
		t.Errorf("transition %+v, want r DOWN: body did not match", tr)
	}
	st, err = c.Stats(ctx)
	if err != nil {
		t.Fatal(err)
	}
	for _, f := range st.Failures {
		if f.ID == "b" {
			t.Errorf("failures of a removed target kept: %+v", f)
		}
	}
}

// TestRestartKeepsVerdicts kills the checker: the client starts another,
// which carries on from the verdicts reached so far. b was DOWN and stays
// DOWN (a fresh start would begin UP, its initial state, and report DOWN
// again); its next transition is the UP of its recovery.
func TestRestartKeepsVerdicts(t *testing.T) {
	a, b := newWeb(t, 200), newWeb(t, 503)
	c := newClient(t)
	if err := c.Update([]Target{target("a", a, true), target("b", b, true)}); err != nil {
		t.Fatal(err)
	}
	run(t, c)
	down := next(t, c)
	if down.ID != "b" || down.Up {
		t.Fatalf("transition %+v, want b DOWN", down)
	}
	if up, known := c.Verdict("b"); up || !known {
		t.Fatalf("verdict of b %v (known %v), want DOWN", up, known)
	}
	old := c.Pid()
	if err := syscall.Kill(old, syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	pid := waitPid(t, c, old)
	if c.Restarts() != 1 {
		t.Errorf("restarts %d, want 1", c.Restarts())
	}
	// Let the new checker check b a few times while it still fails.
	deadline := time.Now().Add(10 * time.Second)
	for {
		snap, err := c.Snapshot(t.Context())
		if err == nil && len(snap) == 2 && snap[1].Checks >= 3 {
			if !snap[0].Up || snap[1].Up || !snap[1].LastChange.Equal(down.At) {
				t.Fatalf("after the restart: %+v, want b DOWN since %v", snap, down.At)
			}
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("the new checker (pid %d) did not check: %+v %v", pid, snap, err)
		}
		time.Sleep(20 * time.Millisecond)
	}
	b.Set(hctest.OK)
	if tr := next(t, c); tr.ID != "b" || !tr.Up {
		t.Errorf("transition %+v, want b UP (recovered)", tr)
	}
}

// TestWedgedChildIsReplaced stops the checker (SIGSTOP): it no longer
// answers pings, so the client kills it and starts another.
func TestWedgedChildIsReplaced(t *testing.T) {
	a := newWeb(t, 200)
	c := newClient(t)
	c.pingEvery, c.pingTimeout = 20*time.Millisecond, 200*time.Millisecond
	if err := c.Update([]Target{target("a", a, true)}); err != nil {
		t.Fatal(err)
	}
	run(t, c)
	old := c.Pid()
	if err := syscall.Kill(old, syscall.SIGSTOP); err != nil {
		t.Fatal(err)
	}
	waitPid(t, c, old)
	waitExit(t, old, 5*time.Second)
	if snap, err := c.Snapshot(t.Context()); err != nil || len(snap) != 1 {
		t.Errorf("new checker: %+v %v", snap, err)
	}
}

// TestChildExitsWhenDaemonDies kills a daemon (this test binary running a
// Client) with SIGKILL: its checker sees its socket close and exits, so no
// orphaned checker keeps probing.
func TestChildExitsWhenDaemonDies(t *testing.T) {
	cmd := exec.Command("/proc/self/exe", "-test.run=^$")
	cmd.Env = append(os.Environ(), "HCPROC_TEST_PARENT=1")
	cmd.Stderr = t.Output()
	out, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = cmd.Process.Kill(); _ = cmd.Wait() })
	// Bounded: a stand-in that never prints must not hang the test.
	timer := time.AfterFunc(10*time.Second, func() { _ = cmd.Process.Kill() })
	defer timer.Stop()
	line, err := bufio.NewReader(out).ReadString('\n')
	if err != nil {
		t.Fatal(err)
	}
	pid, err := strconv.Atoi(strings.TrimSpace(line))
	if err != nil {
		t.Fatal(err)
	}
	if !alive(pid) {
		t.Fatalf("checker %d not running", pid)
	}
	_ = cmd.Process.Kill()
	waitExit(t, pid, 5*time.Second)
}

// TestNotStartedByHand: `lvsha checker` without the daemon's socket says
// what it is and exits 2.
func TestNotStartedByHand(t *testing.T) {
	cmd := exec.Command("/proc/self/exe", ChildArg)
	out, err := cmd.CombinedOutput()
	var ee *exec.ExitError
	if !errors.As(err, &ee) || ee.ExitCode() != 2 || !strings.Contains(string(out), "started by the lvsha daemon only") {
		t.Errorf("lvsha checker by hand: %v\n%s", err, out)
	}
}

// TestExecCheckDiesWithChecker: a command a check is running when its
// checker is killed does not live on unsupervised.
func TestExecCheckDiesWithChecker(t *testing.T) {
	c := newClient(t)
	spec := &healthcheck.Spec{Type: healthcheck.TypeExec, Argv: []string{"sleep", "300"},
		Interval: 50 * time.Millisecond, Timeout: time.Hour, Rise: 1, Fall: 1, InitialUp: true}
	if err := c.Update([]Target{{ID: "x", Addr: netip.MustParseAddrPort("127.0.0.1:1"), Spec: spec, Group: "svc"}}); err != nil {
		t.Fatal(err)
	}
	run(t, c)
	checker := c.Pid()
	var sleeper int
	deadline := time.Now().Add(10 * time.Second)
	for sleeper == 0 {
		tasks, _ := os.ReadDir(fmt.Sprintf("/proc/%d/task", checker))
		for _, task := range tasks {
			b, _ := os.ReadFile(fmt.Sprintf("/proc/%d/task/%s/children", checker, task.Name()))
			if f := strings.Fields(string(b)); len(f) > 0 {
				sleeper, _ = strconv.Atoi(f[0])
			}
		}
		if time.Now().After(deadline) {
			t.Fatal("the checker started no command")
		}
		time.Sleep(5 * time.Millisecond)
	}
	if err := syscall.Kill(checker, syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	waitExit(t, sleeper, 5*time.Second)
}

// TestNoTargetsNoProcess: a client without targets runs no checker; the
// first targets start one, and taking them all away stops it again (not a
// crash: no restart counted).
func TestNoTargetsNoProcess(t *testing.T) {
	a := newWeb(t, 200)
	c := newClient(t)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- c.Run(ctx) }()
	defer func() {
		cancel()
		<-done
	}()
	if snap, err := c.Snapshot(t.Context()); err != nil || len(snap) != 0 || c.Pid() != 0 || !c.Idle() {
		t.Fatalf("without targets: snapshot %v %v, pid %d", snap, err, c.Pid())
	}
	if err := c.Update([]Target{target("a", a, false)}); err != nil {
		t.Fatal(err)
	}
	pid := waitPid(t, c, 0)
	if tr := next(t, c); tr.ID != "a" || !tr.Up {
		t.Errorf("transition %+v", tr)
	}
	if err := c.Update(nil); err != nil {
		t.Fatal(err)
	}
	waitExit(t, pid, 5*time.Second)
	if c.Restarts() != 0 {
		t.Errorf("stopping an idle checker counted as %d restarts", c.Restarts())
	}
	if st, err := c.Stats(t.Context()); err != nil || len(st.Durations) != 0 {
		t.Errorf("idle stats %+v %v", st, err)
	}
	// And back.
	if err := c.Update([]Target{target("a", a, false)}); err != nil {
		t.Fatal(err)
	}
	waitPid(t, c, pid)
}

// TestVerdicts: the Client's verdicts, the ones the daemon follows, start
// in each target's initial state, follow the child's transitions, survive
// an update for the targets it keeps, and know nothing of removed ones.
func TestVerdicts(t *testing.T) {
	c := NewClient(nil, nil) // no child is started: Update keeps the targets for one
	spec := func(up bool) *healthcheck.Spec {
		return &healthcheck.Spec{Type: healthcheck.TypeTCP, Interval: time.Second, Timeout: time.Second, Rise: 1, Fall: 1, InitialUp: up}
	}
	addr := netip.MustParseAddrPort("127.0.0.1:1")
	if err := c.Update([]Target{{ID: "a", Addr: addr, Spec: spec(true)}, {ID: "b", Addr: addr, Spec: spec(false)}}); err != nil {
		t.Fatal(err)
	}
	want := func(w map[string]bool) {
		t.Helper()
		got := c.Verdicts()
		if fmt.Sprint(got) != fmt.Sprint(w) {
			t.Fatalf("Verdicts() = %v, want %v", got, w)
		}
		for id, up := range w {
			if gotUp, known := c.Verdict(id); gotUp != up || !known {
				t.Fatalf("Verdict(%s) = %v, %v", id, gotUp, known)
			}
		}
	}
	want(map[string]bool{"a": true, "b": false})
	c.transition(healthcheck.Transition{ID: "a", Up: false, Reason: "status 503"})
	want(map[string]bool{"a": false, "b": false})
	// a kept (with its verdict), b removed, c new.
	if err := c.Update([]Target{{ID: "a", Addr: addr, Spec: spec(true)}, {ID: "c", Addr: addr, Spec: spec(true)}}); err != nil {
		t.Fatal(err)
	}
	want(map[string]bool{"a": false, "c": true})
	c.transition(healthcheck.Transition{ID: "b", Up: true}) // late, from before the update
	want(map[string]bool{"a": false, "c": true})
	if _, known := c.Verdict("b"); known {
		t.Error("removed target b still has a verdict")
	}
}

// TestExecCheckHasNoNetworkCaps: an exec check's command, run by a root
// checker holding every capability, has none of CAP_NET_ADMIN, CAP_NET_RAW
// and CAP_SETPCAP in any of its sets.
func TestExecCheckHasNoNetworkCaps(t *testing.T) {
	testutil.NeedRoot(t)
	out := filepath.Join(t.TempDir(), "caps")
	c := newClient(t)
	spec := &healthcheck.Spec{Type: healthcheck.TypeExec, Argv: []string{"/bin/sh", "-c", "grep ^Cap /proc/self/status > " + out},
		Interval: 50 * time.Millisecond, Timeout: 5 * time.Second, Rise: 1, Fall: 1}
	if err := c.Update([]Target{{ID: "x", Addr: netip.MustParseAddrPort("127.0.0.1:1"), Spec: spec, Group: "svc"}}); err != nil {
		t.Fatal(err)
	}
	run(t, c)
	if tr := next(t, c); !tr.Up {
		t.Fatalf("exec check failed: %+v", tr)
	}
	b, err := os.ReadFile(out)
	if err != nil {
		t.Fatal(err)
	}
	sets := 0
	for _, l := range strings.Split(strings.TrimSpace(string(b)), "\n") {
		k, v, _ := strings.Cut(l, ":")
		n, err := strconv.ParseUint(strings.TrimSpace(v), 16, 64)
		if err != nil {
			t.Fatalf("%q: %v", l, err)
		}
		sets++
		if n&(1<<unix.CAP_NET_ADMIN|1<<unix.CAP_NET_RAW|1<<unix.CAP_SETPCAP) != 0 {
			t.Errorf("exec check's %s is %s: holds a network capability or CAP_SETPCAP", k, strings.TrimSpace(v))
		}
	}
	if sets != 5 {
		t.Errorf("want 5 capability sets, got:\n%s", b)
	}
}
