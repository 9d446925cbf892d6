package e2e

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"strings"
	"syscall"
	"time"

	"github.com/lvsha/lvsha/internal/director/control"
)

// The scenario's steps after setup, in the order Run takes them: round
// robin, failover, health checks, reload (the failback is in syncstep.go).

func (s *scenario) roundRobin(ctx context.Context) error {
	const n = 10
	var got []string
	var recs []request
	for i := range n {
		start := time.Now()
		body, err := s.client.get(ctx, 5*time.Second)
		if err != nil {
			return fmt.Errorf("request %d: %w", i+1, err)
		}
		got = append(got, body)
		recs = append(recs, request{start: start, end: time.Now(), body: body})
		s.show("client$ curl http://%v/  ->  %s", VIP, body)
	}
	if err := alternates(got, "this is web1", "this is web2"); err != nil {
		return err
	}
	s.ok("%d requests, each on a new connection, alternate web1/web2 (a reply takes %v, median)", n, medianLatency(recs).Round(time.Millisecond))

	// The kernel folds its per-CPU counters into the stats every 2 s. The
	// service's own counters, not the namespace's totals: those include
	// the via_vip checks' fwmark services, whose replies (to the director
	// itself) IPVS counts as outgoing.
	var st ipvsStats
	took, err := waitFor(ctx, "director1's IPVS counters to count the connections", 10*time.Second, 100*time.Millisecond, func() error {
		var err error
		if st, err = readServiceStats(s.d1Node.NS, netip.AddrPortFrom(VIP, ServicePort)); err != nil {
			return fatalError{err}
		}
		if st.Conns < n {
			return fmt.Errorf("%+v", st)
		}
		return nil
	})
	if err != nil {
		return err
	}
	s.show("director1$ ipvsadm -Ln --stats -t %v:%d  (after %v)", VIP, ServicePort, took.Round(time.Millisecond))
	s.show("  %d connections, %d packets / %d bytes in, %d packets / %d bytes out", st.Conns, st.InPkts, st.InBytes, st.OutPkts, st.OutBytes)
	if st.InPkts == 0 || st.OutPkts != 0 || st.OutBytes != 0 {
		return fmt.Errorf("director1's IPVS counters %+v: want incoming packets and 0 outgoing (direct routing: replies go from the webs straight to the client)", st)
	}
	s.ok("replies bypass the director: director1 forwarded %d packets in, 0 packets out", st.InPkts)
	return nil
}

func (s *scenario) failoverStep(ctx context.Context) error {
	const (
		period   = 10 * time.Millisecond
		timeout  = 300 * time.Millisecond // a lost SYN is retried after 1s: such a request fails
		inFlight = 4
		warmup   = 20
		after    = 30
	)
	if err := s.openSynced(ctx); err != nil {
		return err
	}
	loop := startLoop(ctx, s.client, period, timeout, inFlight)
	s.failover = loop
	t0 := time.Now()
	if _, err := loop.waitRequests(ctx, "the client's first replies", t0, warmup, 20*time.Second, true); err != nil {
		return err
	}
	// SIGKILL: director1 can send nothing more, no priority-0 advert;
	// director2 must notice the missing adverts (Master_Down_Interval).
	// A killed process cannot remove its VIP, and its IPVS table stays in
	// the kernel, so to model the dead host its cable is pulled right after
	// the kill (its veth's bridge port goes down). The client's neighbour
	// cache still maps the VIP to director1's MAC: it is director2's
	// gratuitous ARPs that move the traffic, as on a real LAN.
	if mac, err := s.cli.NeighbourMAC(VIP); err == nil {
		s.show("client's ARP entry for %v: %v (director1 is %v)", VIP, mac, s.d1Node.MAC)
	}
	killAt := time.Now()
	if err := s.d1.signal(syscall.SIGKILL); err != nil {
		return err
	}
	if err := s.lab.SetPort("director1", false); err != nil {
		return fmt.Errorf("unplug director1: %w", err)
	}
	unplugged := time.Since(killAt)
	if err := s.d1.waitExit(ctx, 10*time.Second); err != nil {
		return err
	}
	if has, err := s.d1Node.HasAddr(s.t.Interface, VIP); err == nil && has {
		s.show("director1: lvsha killed; %v is still on its %s (a killed process cannot clean up), so its cable is pulled", VIP, s.t.Interface)
	}
	var st2 *control.Status
	took, err := waitFor(ctx, "director2 to become MASTER", 10*time.Second, 5*time.Millisecond, func() error {
		var err error
		if st2, err = s.d2.status(ctx); err != nil {
			return err
		}
		state, _, err := vrrpState(st2)
		if err != nil {
			return err
		}
		if state != "MASTER" {
			return fmt.Errorf("director2 %s", state)
		}
		return nil
	})
	if err != nil {
		return err
	}
	s.rep.Takeover = took
	if since := st2.VRRP[0].Since; since.After(killAt) {
		s.rep.Takeover = since.Sub(killAt)
	}
	if _, err := loop.waitRequests(ctx, "the client's requests to succeed again through director2", killAt, after, 20*time.Second, true); err != nil {
		return err
	}
	recs := loop.stop()
	s.failover = nil

	// The outage is the longest gap from the last reply before the kill on.
	from := 0
	for i, r := range recs {
		if r.ok() && r.end.Before(killAt) {
			from = i
		}
	}
	g, ok := longestGap(recs[from:])
	if !ok {
		return errors.New("fewer than two successful replies around the kill")
	}
	s.rep.Outage, s.rep.FailedRequests = g.Length, g.Failed
	if s.cfg.Show {
		s.say("client requests, one every %v, one character each (1/2 = web1/web2, . = no reply within %v; [K] = SIGKILL):", period, timeout)
		s.showBlock(renderStream(recs, 90, streamMark{At: killAt, Label: "K"}))
	}
	st, err := s.d2.statusJSON()
	if err != nil {
		return err
	}
	if state, _, _ := vrrpState(st); state != "MASTER" {
		return fmt.Errorf("`lvsha status --json` of director2 says %s after the failover, want MASTER", state)
	}
	if err := s.vipOn(s.d2Node, true); err != nil {
		return err
	}
	mac, err := s.cli.NeighbourMAC(VIP)
	if err != nil {
		return err
	}
	if mac.String() != s.d2Node.MAC.String() {
		return fmt.Errorf("the client's ARP entry for %v is %v after the failover, want director2's %v", VIP, mac, s.d2Node.MAC)
	}
	s.ok("director2 MASTER %v after SIGKILL (director1 unplugged %v after the kill); client's ARP entry for %v: %v (director2 is %v)",
		s.rep.Takeover.Round(time.Millisecond), unplugged.Round(time.Millisecond), VIP, mac, s.d2Node.MAC)
	s.ok("requests succeed again: %s after the kill", summarize(loop.since(killAt)))
	if err := s.checkSynced("through director2"); err != nil {
		return err
	}
	s.printf("    OUTAGE: %v without a successful reply (%d requests failed); advert_interval %v, Master_Down_Interval %v; a reply takes %v (median)\n",
		g.Length.Round(time.Millisecond), g.Failed, s.t.AdvertInterval,
		MasterDownInterval(s.t.AdvertInterval, st2.VRRP[0].Priority).Round(time.Millisecond), medianLatency(recs).Round(time.Millisecond))
	return s.showStatus(s.d2)
}

func (s *scenario) healthStep(ctx context.Context) error {
	const (
		period   = 20 * time.Millisecond
		timeout  = time.Second
		inFlight = 2
		check    = 10 // requests checked after each transition
	)
	web1 := fmt.Sprintf("%v:%d", Web1Addr.Addr(), ServicePort)
	slack := 3 * time.Second // TCG is slow; the measured time is printed
	loop := startLoop(ctx, s.client, period, timeout, inFlight)
	s.health = loop
	if _, err := loop.waitRequests(ctx, "replies before stopping web1", time.Now(), 4, 10*time.Second, true); err != nil {
		return err
	}

	stopAt := time.Now()
	if err := s.webs["web1"].stop(); err != nil {
		return err
	}
	s.show("web1: HTTP server stopped")
	took, err := waitFor(ctx, fmt.Sprintf("director2 to take web1 out (weight 0) within fall x interval + timeout = %v (+ %v slack)", s.t.FailBound(), slack),
		s.t.FailBound()+slack, 10*time.Millisecond, func() error {
			st, err := s.d2.status(ctx)
			if err != nil {
				return err
			}
			r, ok := findReal(st, web1)
			if !ok || r.Health != "down" || r.KernelWeight != 0 {
				return fmt.Errorf("%s", describeReals(st))
			}
			return nil
		})
	if err != nil {
		return err
	}
	s.rep.HealthDown = took
	outAt := time.Now()
	rs, err := loop.waitRequests(ctx, "requests after web1 left the rotation", outAt, check, 20*time.Second, false)
	if err != nil {
		return err
	}
	for _, r := range rs {
		if r.body != "this is web2" {
			return fmt.Errorf("after web1 was taken out, a request got %q, want every one on web2: %s", bodies(rs), summarize(rs))
		}
	}
	s.ok("web1 down and weight 0 on director2 %v after its server stopped (bound fall x interval + timeout = %v); then %s",
		took.Round(time.Millisecond), s.t.FailBound(), summarize(rs))

	startAt := time.Now()
	if err := s.webs["web1"].start(); err != nil {
		return err
	}
	s.show("web1: HTTP server started")
	took, err = waitFor(ctx, fmt.Sprintf("director2 to put web1 back within rise x interval + timeout = %v (+ %v slack)", s.t.RiseBound(), slack),
		s.t.RiseBound()+slack, 10*time.Millisecond, func() error {
			st, err := s.d2.status(ctx)
			if err != nil {
				return err
			}
			return serviceReady(st, Web1Addr, Web2Addr)
		})
	if err != nil {
		return err
	}
	s.rep.HealthUp = took
	backAt := time.Now()
	rs, err = loop.waitRequests(ctx, "requests after web1 came back", backAt, check, 20*time.Second, false)
	if err != nil {
		return err
	}
	// These requests overlap (the loop keeps several in flight), so their
	// SYNs may reach IPVS in another order than they started: round robin
	// shows as an even split, not as strict alternation.
	if err := balanced(bodies(rs), 2, "this is web1", "this is web2"); err != nil {
		return fmt.Errorf("after web1 came back: %w", err)
	}
	recs := loop.stop()
	s.health = nil
	s.ok("web1 up and back at full weight %v after its server started; round robin again: %s", took.Round(time.Millisecond), summarize(rs))
	if s.cfg.Show {
		s.say("client requests (1/2 = web1/web2, . = failed: refused by the stopped server before the check noticed):")
		s.showBlock(renderStream(recs, 90,
			streamMark{At: stopAt, Label: "web1 stopped"}, streamMark{At: outAt, Label: "weight 0"},
			streamMark{At: startAt, Label: "web1 started"}, streamMark{At: backAt, Label: "weight 1"}))
	}
	return nil
}

func (s *scenario) reloadStep(ctx context.Context) error {
	web3 := fmt.Sprintf("%v:%d", Web3Addr.Addr(), ServicePort)
	ka, err := s.client.keepAlive(ctx, 5*time.Second)
	if err != nil {
		return err
	}
	defer ka.close()
	first, err := ka.get(5 * time.Second)
	if err != nil {
		return err
	}
	s.show("client: keep-alive connection %s -> %v:%d, request 1: %s", ka.local, VIP, ServicePort, first)
	before, err := s.d2.status(ctx)
	if err != nil {
		return err
	}

	if err := s.d2.writeConfig(WithRealServer(s.d2Config, web3)); err != nil {
		return err
	}
	if _, err := s.d2.checkConfig(); err != nil {
		return err
	}
	s.show("director2: %s now lists %s; kill -HUP lvsha", s.d2.config, web3)
	if err := s.d2.signal(syscall.SIGHUP); err != nil {
		return err
	}
	took, err := waitFor(ctx, "web3 in director2's IPVS table after SIGHUP", 15*time.Second, 10*time.Millisecond, func() error {
		st, err := s.d2.status(ctx)
		if err != nil {
			return err
		}
		return serviceReady(st, Web1Addr, Web2Addr, Web3Addr)
	})
	if err != nil {
		return err
	}
	s.rep.Reload = took

	for i := 2; i <= 3; i++ {
		body, err := ka.get(5 * time.Second)
		if err != nil {
			return fmt.Errorf("request %d on the connection opened before the reload: %w", i, err)
		}
		if body != first {
			return fmt.Errorf("request %d on the same connection answered by %q, request 1 by %q: the connection was re-scheduled", i, body, first)
		}
		s.show("client: same connection %s, request %d: %s", ka.local, i, body)
	}
	s.ok("the keep-alive connection opened before the reload still works (same connection, same server: %s)", strings.TrimPrefix(first, "this is "))

	st, err := s.d2.statusJSON()
	if err != nil {
		return err
	}
	if err := serviceReady(st, Web1Addr, Web2Addr, Web3Addr); err != nil {
		return fmt.Errorf("`lvsha status --json` of director2: %w", err)
	}
	if len(st.Services[0].Reals) != 3 {
		return fmt.Errorf("`lvsha status --json` of director2 lists %d real servers, want 3: %s", len(st.Services[0].Reals), describeReals(st))
	}
	if state, _, _ := vrrpState(st); state != "MASTER" || st.VRRP[0].Transitions != before.VRRP[0].Transitions {
		return fmt.Errorf("director2 after the reload: %s with %d transitions (before: %d): a reload must not touch an unchanged VRRP instance",
			state, st.VRRP[0].Transitions, before.VRRP[0].Transitions)
	}
	s.ok("director2 lists web3 (up, weight 1) %v after SIGHUP, still MASTER with no VRRP transition", took.Round(time.Millisecond))

	var got []string
	for i := range 6 {
		body, err := s.client.get(ctx, 5*time.Second)
		if err != nil {
			return fmt.Errorf("new connection %d after the reload: %w", i+1, err)
		}
		got = append(got, body)
		s.show("client$ curl http://%v/  ->  %s", VIP, body)
	}
	if err := alternates(got, "this is web1", "this is web2", "this is web3"); err != nil {
		return fmt.Errorf("new connections after the reload: %w", err)
	}
	s.ok("new connections go round robin over web1, web2 and web3")
	return s.showStatus(s.d2)
}
