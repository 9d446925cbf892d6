package main

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"slices"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/lvsha/lvsha/internal/testenv/netns"
)

// chaos runs the watchers and the injectors for the run's duration.
func (s *soaker) chaos(ctx context.Context) (*result, error) {
	s.t0 = time.Now()
	if err := s.settled(ctx); err != nil {
		return nil, fmt.Errorf("the pair never settled before the chaos: %w (logs: %s, %s)", err, s.a.log, s.b.log)
	}
	if !netns.WaitFor(5*time.Second, 10*time.Millisecond, func() bool { return s.pr.Answered() >= 10 }) {
		return nil, fmt.Errorf("the client gets no replies from the VIP before the chaos")
	}
	s.logf("settled: a MASTER, b BACKUP; the client reaches %s; chaos for %v (seed %d; +0 is %s)",
		vip.Addr(), s.o.duration, s.o.seed, s.t0.Format("15:04:05.000"))

	wctx, stopWatch := context.WithCancel(ctx)
	var watchers sync.WaitGroup
	for _, w := range []func(context.Context){s.watchVIP, s.watchHealth, s.watchResources} {
		watchers.Add(1)
		go func() { defer watchers.Done(); w(wctx) }()
	}
	outagesDone := make(chan int)
	go func() { outagesDone <- s.watchOutages(wctx, -1) }()

	ictx, stopInject := context.WithTimeout(ctx, s.o.duration)
	var injectors sync.WaitGroup
	for _, inj := range []func(context.Context){s.injectForged, s.injectChecker, s.injectRealServers} {
		injectors.Add(1)
		go func() { defer injectors.Done(); inj(ictx) }()
	}
	// Kills in the second half spare one director, so that one process
	// lives through half the run and its resources can be compared.
	spared := s.ds[s.intn(2)]
	half := s.t0.Add(s.o.duration / 2)
	for ictx.Err() == nil {
		s.disrupt(ictx, spared, half)
		select {
		case <-ictx.Done():
		case <-time.After(s.rand(time.Second)):
		}
	}
	injectors.Wait()
	stopInject()
	if ctx.Err() != nil {
		stopWatch()
		watchers.Wait()
		return nil, ctx.Err()
	}
	// Every real server back, then the pair must settle for good.
	if err := s.settled(ctx); err != nil {
		s.violate(time.Now(), kNone, "after the chaos: %v", err)
	}
	time.Sleep(attribution)
	s.sampleResources()
	// Before the control, whose violations are expected.
	res := s.flatness()

	if s.o.control {
		s.negativeControl(ctx)
	}
	stopWatch()
	watchers.Wait()
	<-outagesDone
	return s.result(res), nil
}

// settled waits until a is MASTER holding the VIP and b is BACKUP without
// it (a has the higher priority and preempts), both running.
func (s *soaker) settled(ctx context.Context) error {
	var last string
	ok := netns.WaitFor(settleTimeout, 20*time.Millisecond, func() bool {
		if ctx.Err() != nil {
			return true
		}
		sa, errA := s.a.status(ctx)
		sb, errB := s.b.status(ctx)
		ha, _ := s.a.node.HasAddr("eth0", vip.Addr())
		hb, _ := s.b.node.HasAddr("eth0", vip.Addr())
		if errA != nil || errB != nil {
			last = fmt.Sprintf("status: a %v, b %v", errA, errB)
			return false
		}
		last = fmt.Sprintf("a %s (VIP %v), b %s (VIP %v)", sa.state(), ha, sb.state(), hb)
		return sa.state() == "MASTER" && ha && sb.state() == "BACKUP" && !hb
	})
	if !ok {
		return fmt.Errorf("no settled pair %v after the last fault: %s", settleTimeout, last)
	}
	return nil
}

// disrupt injects one fault that touches VRRP (link, process, interface,
// reload), ends it, and waits for the pair to settle.
func (s *soaker) disrupt(ctx context.Context, spared *director, half time.Time) {
	kindsHere := []string{kLinkFlap, kKill, kReloadOK, kReloadBad, kRecreate}
	kind := kindsHere[s.intn(len(kindsHere))]
	d := s.ds[s.intn(2)]
	switch kind {
	case kLinkFlap:
		d = s.a // the master: settled() before every fault makes a the master
	case kKill:
		if time.Now().After(half) && d == spared {
			d = s.other(d)
		}
	}
	isMaster := d == s.a
	hold := 100*time.Millisecond + s.rand(1400*time.Millisecond)
	d.setBusy(true)
	defer d.setBusy(false)
	f := s.begin(kind, d.name, isMaster)
	if kind == kLinkFlap || kind == kKill {
		s.logf("fault: %s on %s (for %v)", kind, d.name, hold.Round(time.Millisecond))
	} else {
		s.logf("fault: %s on %s", kind, d.name)
	}
	var err error
	switch kind {
	case kLinkFlap:
		d.bump()
		if err = s.lab.SetPort(d.name, false); err == nil {
			time.Sleep(hold)
			err = s.lab.SetPort(d.name, true)
		}
		d.bump()
	case kKill:
		s.sampleResourcesOf(d) // its last sample before it dies
		d.kill()
		time.Sleep(hold)
		err = d.start()
	case kRecreate:
		d.bump()
		err = s.lab.Recreate(d.name)
		d.bump()
	case kReloadOK, kReloadBad:
		// Not cut short by the end of the run: a reload half done would
		// read as a failure.
		err = s.reload(context.WithoutCancel(ctx), d, kind == kReloadOK)
	}
	s.finish(f)
	if err != nil {
		s.violate(time.Now(), kind, "%s on %s: %v", kind, d.name, err)
		if kind == kKill {
			// Keep the run going: try once more to bring it back.
			if err := d.start(); err != nil {
				s.violate(time.Now(), kind, "restart of %s: %v", d.name, err)
			}
		}
	}
	if err := s.settled(ctx); err != nil && ctx.Err() == nil {
		s.violate(time.Now(), kind, "%v (fault %s on %s at %s)", err, kind, d.name, s.rel(f.start))
	}
}

func (s *soaker) other(d *director) *director {
	if d == s.a {
		return s.b
	}
	return s.a
}

// reload sends SIGHUP with a valid config (a garp_master_repeat change,
// which is applied in place: no transition) or an invalid one (which must
// be rejected, changing nothing).
func (s *soaker) reload(ctx context.Context, d *director, valid bool) error {
	before, err := d.status(ctx)
	if err != nil {
		return err
	}
	logs, _ := os.ReadFile(d.log)
	want, n := "reload applied", 0
	if valid {
		d.mu.Lock()
		d.garpRepeat = 9 - d.garpRepeat // 5 <-> 4
		d.mu.Unlock()
		n = bytes.Count(logs, []byte(want))
		if err := d.writeConf(d.toml()); err != nil {
			return err
		}
	} else {
		want = "reload rejected"
		n = bytes.Count(logs, []byte(want))
		bad := strings.Replace(d.toml(), fmt.Sprintf("priority = %d", d.prio), "priority = 300", 1)
		if err := d.writeConf(bad); err != nil {
			return err
		}
	}
	if err := d.signal(syscall.SIGHUP); err != nil {
		return err
	}
	ok := netns.WaitFor(5*time.Second, 10*time.Millisecond, func() bool {
		logs, _ := os.ReadFile(d.log)
		return bytes.Count(logs, []byte(want)) > n
	})
	if !valid {
		// Put the good file back for the next start.
		if err := d.writeConf(d.toml()); err != nil {
			return err
		}
	}
	if !ok {
		return fmt.Errorf("no %q in the log 5 s after SIGHUP", want)
	}
	after, err := d.status(ctx)
	if err != nil {
		return err
	}
	if len(before.VRRP) > 0 && len(after.VRRP) > 0 && after.VRRP[0].Transitions != before.VRRP[0].Transitions {
		return fmt.Errorf("the reload changed the VRRP state: %d -> %d transitions, now %s",
			before.VRRP[0].Transitions, after.VRRP[0].Transitions, after.state())
	}
	return nil
}

// injectForged sends bursts of forged adverts from e and checks that every
// running director counts each packet under the right drop reason (the
// state invariants check that they change nothing).
func (s *soaker) injectForged(ctx context.Context) {
	reasons := []string{"ttl", "checksum", "version", "length", "vip_mismatch"}
	const burst = 5
	for {
		select {
		case <-ctx.Done():
			return
		case <-time.After(500*time.Millisecond + s.rand(2*time.Second)):
		}
		reason := reasons[s.intn(len(reasons))]
		kind := kMalformed
		if reason == "vip_mismatch" {
			kind = kCollision
		}
		type seen struct {
			snap  snapshot
			count uint64
			ok    bool
		}
		before := map[*director]seen{}
		for _, d := range s.ds {
			sn := d.snap()
			st, err := d.status(ctx)
			if err == nil && len(st.VRRP) > 0 {
				before[d] = seen{snap: sn, count: st.VRRP[0].Dropped[reason], ok: true}
			}
		}
		ttl, pkt, err := forgedAdvert(reason)
		if err != nil {
			s.violate(time.Now(), kind, "forge %s: %v", reason, err)
			return
		}
		f := s.begin(kind, "both", false)
		err = forge(s.e, ttl, slices.Repeat([][]byte{pkt}, burst))
		s.finish(f)
		if err != nil {
			s.violate(time.Now(), kind, "%v", err)
			continue
		}
		for _, d := range s.ds {
			b := before[d]
			if !b.ok {
				continue
			}
			var got uint64
			counted := netns.WaitFor(time.Second, 20*time.Millisecond, func() bool {
				st, err := d.status(ctx)
				if err != nil || len(st.VRRP) == 0 {
					return false
				}
				got = st.VRRP[0].Dropped[reason]
				return got >= b.count+burst
			})
			// A fault on the director meanwhile (link down, restart)
			// excuses packets it could not see.
			if after := d.snap(); !counted && !b.snap.busy && !after.busy && after.epoch == b.snap.epoch && ctx.Err() == nil {
				s.violate(time.Now(), kind, "%s counted %d of %d forged adverts as %q (sent at %s)",
					d.name, got-b.count, burst, reason, s.rel(f.start))
			}
		}
	}
}

// injectChecker kills a director's checker process now and then; the
// daemon must start a new one.
func (s *soaker) injectChecker(ctx context.Context) {
	for {
		select {
		case <-ctx.Done():
			return
		case <-time.After(2*time.Second + s.rand(6*time.Second)):
		}
		d := s.ds[s.intn(2)]
		st, err := d.status(ctx)
		if err != nil || st.Checker == nil || st.Checker.Pid == 0 {
			continue // restarting: another time
		}
		old := st.Checker.Pid
		// Health verdicts wait for the new checker, which starts its fall
		// count again: the bound runs from when it is back.
		s.mu.Lock()
		s.checkerAt[d.name] = time.Now().Add(time.Hour)
		s.mu.Unlock()
		f := s.begin(kChecker, d.name, false)
		s.logf("fault: %s of %s (pid %d)", kChecker, d.name, old)
		if err := syscall.Kill(old, syscall.SIGKILL); err != nil {
			s.finish(f)
			continue
		}
		inc := d.snap().inc
		back := netns.WaitFor(15*time.Second, 20*time.Millisecond, func() bool {
			if d.snap().inc != inc {
				return true // the daemon was restarted meanwhile
			}
			st, err := d.status(ctx)
			return err == nil && st.Checker != nil && st.Checker.Pid != 0 && st.Checker.Pid != old
		})
		s.finish(f)
		s.mu.Lock()
		s.checkerAt[d.name] = time.Now()
		s.mu.Unlock()
		if !back && ctx.Err() == nil {
			s.violate(time.Now(), kChecker, "%s has no new checker process 15 s after the old one (pid %d) was killed", d.name, old)
		}
	}
}

// injectRealServers stops a real server for 2 to 4 s now and then.
func (s *soaker) injectRealServers(ctx context.Context) {
	for {
		select {
		case <-ctx.Done():
			return
		case <-time.After(time.Second + s.rand(4*time.Second)):
		}
		r := s.reals[s.intn(len(s.reals))]
		f := s.begin(kRealServer, r.name, false)
		s.logf("fault: %s %s", kRealServer, r.name)
		r.stop()
		select {
		case <-ctx.Done():
		case <-time.After(2*time.Second + s.rand(2*time.Second)):
		}
		if err := r.start(); err != nil {
			s.violate(time.Now(), kRealServer, "%v", err)
		}
		s.finish(f)
	}
}

// negativeControl isolates b from the LAN for 1.5 s: it cannot hear a, so
// both hold the VIP, which the checker must report.
func (s *soaker) negativeControl(ctx context.Context) {
	s.mu.Lock()
	s.controlOn = true
	s.mu.Unlock()
	s.logf("negative control: b isolated from the LAN for 1.5 s (a split the checker must flag)")
	f := s.begin(kSplit, "b", false)
	if err := s.lab.Isolate("b", true); err != nil {
		s.violate(time.Now(), kSplit, "isolate: %v", err)
		return
	}
	time.Sleep(1500 * time.Millisecond)
	if err := s.lab.Isolate("b", false); err != nil {
		s.violate(time.Now(), kSplit, "isolate: %v", err)
	}
	s.finish(f)
	_ = s.settled(ctx)
	time.Sleep(attribution)
}
