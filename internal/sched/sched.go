// Package sched sets the scheduling policy of every thread of the process:
// Linux schedules threads, not processes, and the Go runtime starts threads
// of its own at any time.
package sched

import (
	"errors"
	"fmt"
	"os"
	"strconv"

	"golang.org/x/sys/unix"
)

// SetAllThreads puts every thread of this process under policy at prio
// (0 for SCHED_NORMAL). A new thread inherits the policy of the thread
// that creates it, so passes repeat until one finds every thread set: one
// started during a pass by a thread not yet switched is caught by the next.
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
