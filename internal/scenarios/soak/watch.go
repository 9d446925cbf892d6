package main

import (
	"context"
	"fmt"
	"slices"
	"strings"
	"time"

	"github.com/lvsha/lvsha/internal/testenv/probe"
)

// watchVIP samples both namespaces every 10 ms: at most one running
// director may hold the VIP, except while a split heals: from the end of
// a fault that can split (a restart, a link coming back, a re-created
// interface), Master_Down_Interval, then one advert interval (+ margin) for
// the lower-priority one to yield. A killed director's left-over VIP does
// not count: nobody runs there to release it (the restart removes it).
func (s *soaker) watchVIP(ctx context.Context) {
	var since time.Time
	flagged := false
	t := time.NewTicker(sampleEvery)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		both := true
		for _, d := range s.ds {
			h, _ := d.node.HasAddr("eth0", vip.Addr())
			both = both && h && d.snap().alive
		}
		now := time.Now()
		if !both {
			if flagged {
				s.logf("two holders: ended after %v", now.Sub(since).Round(time.Millisecond))
			}
			since, flagged = time.Time{}, false
			continue
		}
		if since.IsZero() {
			since = now
		}
		grace, kind := s.splitGrace(now)
		if !flagged && now.After(later(since, grace).Add(advertInterval+margin)) {
			flagged = true
			s.violate(now, kind, "a and b both hold the VIP since %s (%v; the last fault that could split ended at %s)",
				s.rel(since), now.Sub(since).Round(time.Millisecond), s.rel(grace.Add(-mdi)))
		}
	}
}

func later(a, b time.Time) time.Time {
	if a.After(b) {
		return a
	}
	return b
}

// splitGrace is when the last fault that can split stops excusing two
// holders (its end + Master_Down_Interval; a kill or re-creation in
// progress excuses them), and the kind of the latest fault, for the report.
func (s *soaker) splitGrace(now time.Time) (time.Time, string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	var grace time.Time
	kind := kNone
	for _, f := range s.faults {
		if f.kind == kChecker || f.kind == kRealServer || f.kind == kMalformed || f.kind == kCollision {
			continue
		}
		kind = f.kind
		if f.kind != kLinkFlap && f.kind != kKill && f.kind != kRecreate {
			continue
		}
		end := f.end
		if end.IsZero() {
			if f.kind == kLinkFlap {
				continue
			}
			end = now
		}
		grace = later(grace, end.Add(mdi))
	}
	return grace, kind
}

// watchOutages reads the prober's outages once they are settled (a probe
// unanswered for a second is lost) and checks each against the faults
// around it. It returns the index of the last answered probe it read.
func (s *soaker) watchOutages(ctx context.Context, last int) int {
	t := time.NewTicker(200 * time.Millisecond)
	defer t.Stop()
	for {
		done := false
		select {
		case <-ctx.Done():
			done = true
		case <-t.C:
		}
		var outs []probe.Outage
		settled := time.Now().Add(-time.Second)
		if done {
			settled = time.Now()
		}
		outs, last = s.pr.OutagesAfter(last, settled)
		for _, o := range outs {
			s.judgeOutage(o)
		}
		if done {
			return last
		}
	}
}

func (s *soaker) judgeOutage(o probe.Outage) {
	s.mu.Lock()
	// The latest fault around the outage that may move the VIP, else the
	// latest other one.
	kind, bound := kNone, time.Duration(0)
	for _, f := range s.faults {
		if f.start.After(o.End) || (!f.end.IsZero() && o.Start.After(f.end.Add(attribution))) {
			continue
		}
		if moves(f.kind) && (f.master || f.kind == kSplit) {
			kind, bound = f.kind, mdi+margin
		} else if bound == 0 {
			kind = f.kind
		}
	}
	if o.Length() > s.worst[kind] {
		s.worst[kind] = o.Length()
	}
	s.mu.Unlock()
	if o.Length() <= bound {
		if o.Length() >= 50*time.Millisecond {
			s.logf("outage %v (%d probes lost, from %s) during %s, within its bound %v",
				o.Length().Round(time.Millisecond), o.Lost, s.rel(o.Start), kind, bound)
		}
		return
	}
	why := "which must not interrupt the VIP"
	if bound > 0 {
		why = fmt.Sprintf("over the bound Master_Down_Interval %v + %v", mdi.Round(time.Millisecond), margin)
	}
	if kind == kNone {
		why = "with no fault in progress"
	}
	s.violate(o.End, kind, "the client got no reply from the VIP for %v (%d probes lost, from %s), %s",
		o.Length().Round(time.Millisecond), o.Lost, s.rel(o.Start), why)
}

// watchHealth polls both directors' status every 100 ms: a stopped real
// server must be reported down within fall x interval + timeout of its
// stop, or of the director's (or its checker's) start if that came later.
func (s *soaker) watchHealth(ctx context.Context) {
	type key struct {
		dir  string
		inc  int
		real string
		stop time.Time
	}
	done := map[key]bool{}
	t := time.NewTicker(100 * time.Millisecond)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		for _, d := range s.ds {
			sn := d.snap()
			if !sn.alive || sn.ready.IsZero() {
				continue
			}
			st, err := d.status(ctx)
			if err != nil || d.snap().inc != sn.inc {
				continue
			}
			now := time.Now()
			for _, r := range s.reals {
				stop := r.stopped()
				k := key{d.name, sn.inc, r.name, stop}
				if stop.IsZero() || done[k] {
					continue
				}
				s.mu.Lock()
				ref := later(later(stop, sn.ready), s.checkerAt[d.name])
				s.mu.Unlock()
				if st.health(r.addr.String()+":80") == "down" {
					done[k] = true
					if ref.Equal(stop) {
						s.mu.Lock()
						s.detect = max(s.detect, now.Sub(stop))
						s.mu.Unlock()
					}
					continue
				}
				if now.After(ref.Add(healthBound + healthMargin)) {
					done[k] = true
					s.violate(now, kRealServer, "%s still reports %s %q %v after it stopped at %s (bound fall x interval + timeout = %v + %v from %s; %s)",
						d.name, r.name, st.health(r.addr.String()+":80"), now.Sub(stop).Round(time.Millisecond), s.rel(stop),
						healthBound, healthMargin, s.rel(ref), st.checks(r.addr.String()+":80", s.rel))
				}
			}
		}
	}
}

// Resource samples: every 5 s, of each running incarnation once it has run
// for warmup.
const (
	warmup      = 3 * time.Second
	resEvery    = 5 * time.Second
	minSpan     = 10 * time.Second
	fdTolerance = 5
	gTolerance  = 10
	rssTolKiB   = 8 << 10
)

func (s *soaker) watchResources(ctx context.Context) {
	t := time.NewTicker(resEvery)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
			s.sampleResources()
		}
	}
}

func (s *soaker) sampleResources() {
	for _, d := range s.ds {
		s.sampleResourcesOf(d)
	}
}

func (s *soaker) sampleResourcesOf(d *director) {
	sn := d.snap()
	if !sn.alive || sn.ready.IsZero() || time.Since(sn.ready) < warmup {
		return
	}
	r, err := d.resources()
	if err != nil {
		return
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	r.faultsSeen = len(s.faults)
	byInc := s.samples[d.name]
	for len(byInc) < r.inc {
		byInc = append(byInc, nil)
	}
	byInc[r.inc-1] = append(byInc[r.inc-1], r)
	s.samples[d.name] = byInc
}

// flatness compares, for the longest-lived incarnation of each director,
// its first and last window of samples (the first and last minute, or a
// quarter of its life if shorter): a leak shows as the last window's
// lowest value above the first window's highest plus the tolerance.
func (s *soaker) flatness() map[string]string {
	out := map[string]string{}
	for _, d := range s.ds {
		s.mu.Lock()
		byInc := slices.Clone(s.samples[d.name])
		s.mu.Unlock()
		var best []resources
		for _, rs := range byInc {
			if len(rs) > 1 && (best == nil || rs[len(rs)-1].at.Sub(rs[0].at) > best[len(best)-1].at.Sub(best[0].at)) {
				best = rs
			}
		}
		if best == nil {
			out[d.name] = "not measured (no incarnation sampled twice)"
			continue
		}
		span := best[len(best)-1].at.Sub(best[0].at)
		if span < minSpan {
			out[d.name] = fmt.Sprintf("not measured (longest incarnation sampled over %v only)", span.Round(time.Second))
			continue
		}
		window := min(time.Minute, span/4)
		var first, last []resources
		for _, r := range best {
			if r.at.Sub(best[0].at) <= window {
				first = append(first, r)
			}
			if best[len(best)-1].at.Sub(r.at) <= window {
				last = append(last, r)
			}
		}
		type metric struct {
			name string
			get  func(resources) int
			tol  int
			unit string
		}
		var parts []string
		for _, m := range []metric{
			{"fds", func(r resources) int { return r.fds }, fdTolerance, ""},
			{"goroutines", func(r resources) int { return r.gs }, gTolerance, ""},
			{"RSS", func(r resources) int { return r.rssKiB }, rssTolKiB, " KiB"},
		} {
			hiFirst, loLast := m.get(first[0]), m.get(last[0])
			for _, r := range first {
				hiFirst = max(hiFirst, m.get(r))
			}
			for _, r := range last {
				loLast = min(loLast, m.get(r))
			}
			parts = append(parts, fmt.Sprintf("%s %d -> %d%s", m.name, hiFirst, loLast, m.unit))
			if loLast > hiFirst+m.tol {
				s.violate(time.Now(), "flatness", "%s (incarnation %d): %s grew from at most %d%s to at least %d%s over %v (tolerance %d%s)",
					d.name, best[0].inc, m.name, hiFirst, m.unit, loLast, m.unit, span.Round(time.Second), m.tol, m.unit)
			}
		}
		out[d.name] = fmt.Sprintf("incarnation %d over %v and %d faults: %s", best[0].inc, span.Round(time.Second),
			best[len(best)-1].faultsSeen-best[0].faultsSeen, strings.Join(parts, ", "))
	}
	return out
}

func (s *soaker) result(res map[string]string) *result {
	s.mu.Lock()
	defer s.mu.Unlock()
	return &result{start: s.t0, violations: s.violations, control: s.control, injected: s.injected,
		worst: s.worst, detect: s.detect, res: res}
}

// report prints the table.
func (r *result) report(w interface{ Write([]byte) (int, error) }) {
	fmt.Fprintf(w, "\nMaster_Down_Interval %v, outage bound %v + %v; health bound fall x interval + timeout = %v + %v\n\n",
		mdi.Round(time.Millisecond), mdi.Round(time.Millisecond), margin, healthBound, healthMargin)
	fmt.Fprintln(w, "| fault | injected | violations | worst outage |")
	fmt.Fprintln(w, "|---|---|---|---|")
	nv := map[string]int{}
	for _, v := range r.violations {
		nv[v.kind]++
	}
	for _, k := range append(slices.Clone(kinds), kNone, "flatness") {
		inj := fmt.Sprint(r.injected[k])
		if k == kNone || k == "flatness" {
			inj = "-"
			if nv[k] == 0 && (k == "flatness" || r.worst[k] == 0) {
				continue
			}
		}
		worst := "none"
		if d := r.worst[k]; d > 0 {
			worst = d.Round(time.Millisecond).String()
		}
		fmt.Fprintf(w, "| %s | %s | %d | %s |\n", k, inj, nv[k], worst)
	}
	fmt.Fprintf(w, "\ninvariant violations: %d\n", len(r.violations))
	fmt.Fprintf(w, "worst time for a stopped real server to be reported down: %v\n", r.detect.Round(time.Millisecond))
	for _, n := range []string{"a", "b"} {
		fmt.Fprintf(w, "resources of %s: %s\n", n, r.res[n])
	}
	if r.injected[kSplit] > 0 {
		fmt.Fprintf(w, "negative control (split): %d violation(s) flagged (must be at least 1)\n", len(r.control))
	}
}
