package e2e

import (
	"context"
	"fmt"
	"net/netip"
	"strings"
	"time"

	"github.com/lvsha/lvsha/internal/testenv/lab"
)

// Connection sync ([sync] in the example configs): a keep-alive connection
// opened before director1's SIGKILL keeps talking to the same web through
// the failover (step b) and through director1's return and preemption
// (step e). It is kept on web2: step c stops web1's server, which closes
// web1's connections.

// syncedWeb is the web the long-lived connection is kept on.
const syncedWeb = "this is web2"

// openSynced opens the long-lived connection and waits until director2's
// IPVS connection table has it (the kernel syncs an established connection
// once it has seen 3 packets, and sends within about 2 s).
func (s *scenario) openSynced(ctx context.Context) error {
	var ka *keepAlive
	for range 4 { // round robin: one of two lands on web2
		c, err := s.client.keepAlive(ctx, 5*time.Second)
		if err != nil {
			return err
		}
		body, err := c.get(5 * time.Second)
		if err == nil && body == syncedWeb {
			ka = c
			break
		}
		c.close()
	}
	if ka == nil {
		return fmt.Errorf("no keep-alive connection to the VIP landed on %s", strings.TrimPrefix(syncedWeb, "this is "))
	}
	s.synced = ka
	s.onCleanup(ka.close)
	for range 2 {
		if _, err := ka.get(5 * time.Second); err != nil {
			return err
		}
	}
	local, err := netip.ParseAddrPort(ka.local)
	if err != nil {
		return err
	}
	took, err := waitFor(ctx, "the connection's entry on director2 (connection sync)", 10*time.Second, 50*time.Millisecond, func() error {
		es, err := lab.IPVSConns(s.d2Node.NS)
		if err != nil {
			return fatalError{err}
		}
		for _, e := range es {
			if e.Client == local && e.State == "ESTABLISHED" && e.Dest.Addr() == Web2Addr.Addr() {
				return nil
			}
		}
		return fmt.Errorf("%d entries, none for %v", len(es), local)
	})
	if err != nil {
		return err
	}
	s.ok("keep-alive connection %s -> %v:%d answered by web2; director2 has its IPVS entry %v later (connection sync)",
		ka.local, VIP, ServicePort, took.Round(time.Millisecond))
	return nil
}

// checkSynced sends a request on the long-lived connection: the same web
// must answer, on the same connection.
func (s *scenario) checkSynced(when string) error {
	body, err := s.synced.get(5 * time.Second)
	if err != nil {
		return fmt.Errorf("the connection opened before the SIGKILL, %s: %w", when, err)
	}
	if body != syncedWeb {
		return fmt.Errorf("the connection opened before the SIGKILL, %s, answered by %q, want %q", when, body, syncedWeb)
	}
	s.ok("the keep-alive connection %s opened before the SIGKILL goes on %s: %s, no reset", s.synced.local, when, body)
	return nil
}

// failbackStep plugs director1 back in and starts lvsha there again: it
// preempts (priority 150 over 100), and the connection goes on through it.
func (s *scenario) failbackStep(ctx context.Context) error {
	if err := s.lab.SetPort("director1", true); err != nil {
		return fmt.Errorf("plug director1 back: %w", err)
	}
	if err := s.d1.start(); err != nil {
		return err
	}
	s.show("director1: cable back, lvsha -f %s", s.d1.config)
	took, err := waitFor(ctx, "director1 MASTER (preempting), director2 BACKUP", 30*time.Second, 20*time.Millisecond, func() error {
		st1, err := s.d1.status(ctx)
		if err != nil {
			return err
		}
		st2, err := s.d2.status(ctx)
		if err != nil {
			return err
		}
		s1, _, err := vrrpState(st1)
		if err != nil {
			return err
		}
		s2, _, err := vrrpState(st2)
		if err != nil {
			return err
		}
		if s1 != "MASTER" || s2 != "BACKUP" {
			return fmt.Errorf("director1 %s, director2 %s", s1, s2)
		}
		return nil
	})
	if err != nil {
		return err
	}
	if err := s.vipOn(s.d1Node, true); err != nil {
		return err
	}
	s.ok("director1 MASTER again %v after its start, director2 BACKUP", took.Round(time.Millisecond))
	if err := s.checkSynced("after director1 came back and preempted"); err != nil {
		return err
	}
	return s.showStatus(s.d1)
}
