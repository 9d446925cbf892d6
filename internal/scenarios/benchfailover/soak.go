package main

import (
	"context"
	"fmt"
	"math"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"sync"
	"time"

	"github.com/lvsha/lvsha/internal/testenv/netns"
)

// soak runs an lvsha pair and a keepalived pair at short adverts while
// every CPU spins, and counts false failovers: the backup becoming MASTER
// while the master is healthy.
func soak(ctx context.Context, o *options) error {
	// Each program at its default unless -rt: keepalived under normal
	// scheduling, lvsha under SCHED_RR at its default realtime_priority.
	sched := "each at its default: keepalived normal scheduling, lvsha realtime_priority 10 (SCHED_RR)"
	if o.rt > 0 {
		sched = fmt.Sprintf("directors under SCHED_RR %d", o.rt)
	}
	fmt.Printf("busy-CPU soak: %v at %v adverts, %d spinning goroutines on %d CPUs, %s\n\n", o.soak, o.soakIntvl, 2*runtime.NumCPU(), runtime.NumCPU(), sched)
	type result struct {
		impl  string
		pair  *pair
		dir   string
		start int
	}
	var res []*result
	defer func() {
		for _, r := range res {
			r.pair.close()
		}
	}()
	for i, impl := range o.impls {
		dir := filepath.Join(o.workDir, "soak-"+impl)
		if err := os.MkdirAll(dir, 0o755); err != nil {
			return err
		}
		p, err := o.newPair(ctx, netns.UniquePrefix(fmt.Sprintf("lvs%d", i)), impl, o.soakIntvl, dir)
		if err != nil {
			return err
		}
		res = append(res, &result{impl: impl, pair: p, dir: dir})
	}
	for _, r := range res {
		r.start = masterEntries(r.impl, r.pair.sb.log)
	}
	spin, stopSpin := context.WithCancel(ctx)
	var wg sync.WaitGroup
	for range 2 * runtime.NumCPU() {
		wg.Go(func() {
			x := 1.0
			for spin.Err() == nil {
				for range 100000 {
					x = math.Sqrt(x + 1)
				}
			}
			_ = x
		})
	}
	select {
	case <-time.After(o.soak):
	case <-ctx.Done():
	}
	stopSpin()
	wg.Wait()
	fmt.Printf("| implementation | advert interval | duration | false failovers (backup became MASTER) |\n|---|---|---|---|\n")
	for _, r := range res {
		n := masterEntries(r.impl, r.pair.sb.log) - r.start
		fmt.Printf("| %s | %v | %v | %d |\n", r.impl, o.soakIntvl, o.soak, n)
	}
	return ctx.Err()
}

// masterEntries counts the times a director's log says it became MASTER.
func masterEntries(impl, logFile string) int {
	b, err := os.ReadFile(logFile)
	if err != nil {
		return 0
	}
	marker := "to=MASTER"
	if impl == "keepalived" {
		marker = "Entering MASTER STATE"
	}
	return strings.Count(string(b), marker)
}
