package e2e

import (
	"context"
	"fmt"
	"net"
	"time"

	"github.com/vishvananda/netlink"
)

// misconfStep: web1 loses the VIP from its lo (the seed's one hard part done
// wrong). Its via_vip check fails and director1 takes it out, so every
// request goes to web2 instead of every other one being lost; with the VIP
// back web1 returns.
func (s *scenario) misconfStep(ctx context.Context) error {
	const (
		period   = 20 * time.Millisecond
		timeout  = time.Second
		inFlight = 2
		check    = 10
	)
	web1 := fmt.Sprintf("%v:%d", Web1Addr.Addr(), ServicePort)
	slack := 3 * time.Second
	vipLo := func(add bool) error {
		h, err := s.web1.Handle()
		if err != nil {
			return err
		}
		defer h.Close()
		lo, err := h.LinkByName("lo")
		if err != nil {
			return err
		}
		a := &netlink.Addr{IPNet: &net.IPNet{IP: VIP.AsSlice(), Mask: net.CIDRMask(32, 32)}, Scope: int(netlink.SCOPE_HOST)}
		if add {
			return h.AddrAdd(lo, a)
		}
		return h.AddrDel(lo, a)
	}
	weight := func(health string, w int) func() error {
		return func() error {
			st, err := s.d1.status(ctx)
			if err != nil {
				return err
			}
			if r, ok := findReal(st, web1); !ok || r.Health != health || r.KernelWeight != w {
				return fmt.Errorf("%s", describeReals(st))
			}
			return nil
		}
	}
	if err := vipLo(false); err != nil {
		return fmt.Errorf("web1: remove the VIP from lo: %w", err)
	}
	s.show("web1: ip addr del %v/32 dev lo (its HTTP server still answers on its own address)", VIP)
	took, err := waitFor(ctx, fmt.Sprintf("director1 to take web1 out (weight 0) within %v (+ %v slack)", s.t.FailBound(), slack),
		s.t.FailBound()+slack, 10*time.Millisecond, weight("down", 0))
	if err != nil {
		return err
	}
	st, err := s.d1.status(ctx)
	if err != nil {
		return err
	}
	r, _ := findReal(st, web1)
	loop := startLoop(ctx, s.client, period, timeout, inFlight)
	s.health = loop
	rs, err := loop.waitRequests(ctx, "requests with web1 out", time.Now(), check, 20*time.Second, false)
	if err != nil {
		return err
	}
	for _, q := range rs {
		if q.body != "this is web2" {
			return fmt.Errorf("with web1 out, a request got %q, want every one on web2: %s", bodies(rs), summarize(rs))
		}
	}
	s.ok("web1 without the VIP on lo: its via_vip check failed (%s), weight 0 on director1 %v later; %s",
		r.LastResult, took.Round(time.Millisecond), summarize(rs))
	if err := vipLo(true); err != nil {
		return fmt.Errorf("web1: put the VIP back on lo: %w", err)
	}
	s.show("web1: ip addr add %v/32 dev lo scope host", VIP)
	took, err = waitFor(ctx, fmt.Sprintf("director1 to put web1 back within %v (+ %v slack)", s.t.RiseBound(), slack),
		s.t.RiseBound()+slack, 10*time.Millisecond, weight("up", 1))
	if err != nil {
		return err
	}
	rs, err = loop.waitRequests(ctx, "requests after web1 was fixed", time.Now(), check, 20*time.Second, false)
	if err != nil {
		return err
	}
	loop.stop()
	s.health = nil
	if err := balanced(bodies(rs), 2, "this is web1", "this is web2"); err != nil {
		return fmt.Errorf("after web1 was fixed: %w", err)
	}
	s.ok("web1 fixed: back at weight 1 %v later; %s", took.Round(time.Millisecond), summarize(rs))
	return nil
}
