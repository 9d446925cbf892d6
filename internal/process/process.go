// Package process owns lvsha's process settings: the scheduling policy of
// every thread, GOGC and GOMAXPROCS, for the director daemon and for its
// checker process. cmd/lvsha applies them; no library sets them itself.
package process

import (
	"errors"
	"fmt"
	"os"
	"os/exec"
	"runtime"
	"runtime/debug"
	"strconv"

	"golang.org/x/sys/unix"
)

// Daemon applies the director daemon's settings. GOMAXPROCS stays the
// runtime's (one P per CPU): VRRP must never wait for a P; the health
// checks, the bulk of the work, run in a checker process of their own.
// The GOGC default applies even when rtPrio is refused; the returned error
// is only about real-time scheduling.
func Daemon(rtPrio int) error {
	defaultGOGC()
	if rtPrio == 0 {
		return nil
	}
	return SetRealtime(rtPrio)
}

// Checker applies the checker process's settings: normal scheduling (the
// daemon runs real-time, and a child inherits that), one P and GOGC 50
// unless the environment says otherwise, no heap profiling. The returned
// error is only about the scheduling policy; the rest is always applied.
func Checker() error {
	// Nothing serves the checker's heap profile, and its bucket table
	// alone is over a megabyte.
	runtime.MemProfileRate = 0
	// One P: the checks are a single scheduling loop and an epoll
	// reactor, and with one P the runtime spends least around them (at
	// 5,000 checks a second 46 % of a core against 77 % with two Ps and
	// real-time threads).
	if os.Getenv("GOMAXPROCS") == "" {
		runtime.GOMAXPROCS(1)
	}
	defaultGOGC()
	return SetAllThreads(unix.SCHED_NORMAL, 0)
}

// defaultGOGC gives heap headroom of half the live heap instead of all of
// it, unless GOGC says otherwise: both processes allocate little once
// running (the daemon collects every few seconds at 10,000 checks a second,
// 6 ms of CPU each), so the smaller heap costs next to nothing.
func defaultGOGC() {
	if os.Getenv("GOGC") == "" {
		debug.SetGCPercent(50)
	}
}

// SetRealtime puts every thread of the process under the SCHED_RR real-time
// policy at priority prio (1..99); threads created later inherit it. A
// director that shares its CPUs with busy work otherwise wakes up late for
// its timers and adverts, and at short advert intervals that is a false
// failover (keepalived's vrrp_rt_priority answers the same problem). The
// VRRP loop sleeps between events, so it cannot starve the host.
func SetRealtime(prio int) error {
	if prio < 1 || prio > 99 {
		return fmt.Errorf("real-time priority %d: want 1..99", prio)
	}
	if err := SetAllThreads(unix.SCHED_RR, uint32(prio)); err != nil {
		return fmt.Errorf("real-time priority: %w", err)
	}
	return nil
}

// StartNormal starts cmd under normal scheduling whatever this process
// runs under: a child inherits the policy of the thread that forks it, and
// a notify script or a checker competing with VRRP at real-time priority
// could delay adverts. The fork happens on a thread of its own, locked to a
// goroutine that ends without unlocking it, with SCHED_FLAG_RESET_ON_FORK
// set: the runtime never makes threads from a locked thread, and ends the
// thread with the goroutine, flag and all. The flag is never cleared: a
// process without CAP_SYS_NICE (the packaged unit's daemon, real-time
// through LimitRTPRIO=) may set it but not clear it (sched(7)). Since
// that thread ends at once, cmd must not ask for a parent-death signal
// (Pdeathsig follows the forking thread, not the process).
func StartNormal(cmd *exec.Cmd) error {
	if cmd.SysProcAttr != nil && cmd.SysProcAttr.Pdeathsig != 0 {
		return fmt.Errorf("start %s under normal scheduling: Pdeathsig would fire when the forking thread ends", cmd.Path)
	}
	errc := make(chan error, 1)
	go func() {
		runtime.LockOSThread() // for good: see above
		attr, err := unix.SchedGetAttr(0, 0)
		if err != nil || attr.Policy != unix.SCHED_RR && attr.Policy != unix.SCHED_FIFO {
			errc <- cmd.Start() // nothing to reset (or nothing known)
			return
		}
		reset := *attr
		reset.Size = unix.SizeofSchedAttr
		reset.Flags |= unix.SCHED_FLAG_RESET_ON_FORK
		if err := unix.SchedSetAttr(0, &reset, 0); err != nil {
			errc <- fmt.Errorf("start %s under normal scheduling: %w", cmd.Path, err)
			return
		}
		errc <- cmd.Start()
	}()
	return <-errc
}

// SetAllThreads puts every thread of this process under policy at prio
// (0 for SCHED_NORMAL): Linux schedules threads, not processes, and the Go
// runtime starts threads of its own at any time. A new thread inherits the
// policy of the thread that creates it, so passes repeat until one finds
// every thread set: one started during a pass by a thread not yet switched
// is caught by the next.
func SetAllThreads(policy, prio uint32) error {
	want := &unix.SchedAttr{Size: unix.SizeofSchedAttr, Policy: policy, Priority: prio}
	for range 10 {
		tasks, err := os.ReadDir("/proc/self/task")
		if err != nil {
			return fmt.Errorf("scheduling: %w", err)
		}
		changed := false
		for _, t := range tasks {
			tid, err := strconv.Atoi(t.Name())
			if err != nil {
				continue
			}
			attr, err := unix.SchedGetAttr(tid, 0)
			if errors.Is(err, unix.ESRCH) {
				continue // exited
			}
			if err != nil {
				return fmt.Errorf("scheduling of thread %d: %w", tid, err)
			}
			if attr.Policy == policy && attr.Priority == prio {
				continue
			}
			changed = true
			if err := unix.SchedSetAttr(tid, want, 0); err != nil && !errors.Is(err, unix.ESRCH) {
				return fmt.Errorf("scheduling of thread %d: %w", tid, err)
			}
		}
		if !changed {
			return nil
		}
	}
	return errors.New("scheduling: threads kept appearing under another policy")
}
