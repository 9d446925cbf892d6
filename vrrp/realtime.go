package vrrp

import (
	"fmt"

	"golang.org/x/sys/unix"

	"github.com/lvsha/lvsha/internal/sched"
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
	if err := sched.SetAllThreads(unix.SCHED_RR, uint32(prio)); err != nil {
		return fmt.Errorf("real-time priority: %w", err)
	}
	return nil
}
