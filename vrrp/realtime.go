package vrrp

import (
	"fmt"
	"os"
	"strconv"

	"golang.org/x/sys/unix"
)

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
	tasks, err := os.ReadDir("/proc/self/task")
	if err != nil {
		return fmt.Errorf("real-time priority: %w", err)
	}
	attr := &unix.SchedAttr{Size: unix.SizeofSchedAttr, Policy: unix.SCHED_RR, Priority: uint32(prio)}
	for _, t := range tasks {
		tid, err := strconv.Atoi(t.Name())
		if err != nil {
			continue
		}
		if err := unix.SchedSetAttr(tid, attr, 0); err != nil && err != unix.ESRCH {
			return fmt.Errorf("real-time priority for thread %d: %w", tid, err)
		}
	}
	return nil
}
