// Package probe pings an address from a network namespace at a steady rate
// and keeps, for every echo request, when it was sent and when (if) its
// reply came: the failover benchmark, the soak and the dual-stack scenario
// measure outages with it. IPv4 and IPv6.
package probe

import (
	"fmt"
	"net"
	"net/netip"
	"os"
	"sync"
	"time"

	"golang.org/x/net/icmp"
	"golang.org/x/net/ipv4"
	"golang.org/x/net/ipv6"

	"github.com/lvsha/lvsha/internal/testenv/netns"
)

// Prober pings one address every period until Stop.
type Prober struct {
	c     *icmp.PacketConn
	id    int
	stopc chan struct{}
	wg    sync.WaitGroup

	mu   sync.Mutex
	sent []time.Time
	rx   []time.Time // reply time per probe; zero: unanswered
	all  []time.Time // every reply's time, in order of arrival
}

// Start pings dst from ns every period.
func Start(ns *netns.NS, dst netip.Addr, period time.Duration) (*Prober, error) {
	network, laddr, echo, reply, proto := "ip4:icmp", "0.0.0.0", icmp.Type(ipv4.ICMPTypeEcho), icmp.Type(ipv4.ICMPTypeEchoReply), 1
	if dst.Is6() {
		// The kernel fills in an ICMPv6 socket's checksums.
		network, laddr, echo, reply, proto = "ip6:ipv6-icmp", "::", ipv6.ICMPTypeEchoRequest, ipv6.ICMPTypeEchoReply, 58
	}
	p := &Prober{stopc: make(chan struct{}), id: os.Getpid() & 0xffff}
	if err := ns.Do(func() (err error) {
		p.c, err = icmp.ListenPacket(network, laddr)
		return err
	}); err != nil {
		return nil, fmt.Errorf("icmp socket in %s: %w", ns.Name, err)
	}
	p.wg.Add(2)
	go func() {
		defer p.wg.Done()
		t := time.NewTicker(period)
		defer t.Stop()
		for {
			p.mu.Lock()
			seq := len(p.sent)
			p.sent = append(p.sent, time.Now())
			p.rx = append(p.rx, time.Time{})
			p.mu.Unlock()
			msg := icmp.Message{Type: echo, Body: &icmp.Echo{ID: p.id, Seq: seq & 0xffff, Data: []byte("lvsha-probe")}}
			b, _ := msg.Marshal(nil)
			_, _ = p.c.WriteTo(b, &net.IPAddr{IP: dst.AsSlice()})
			select {
			case <-p.stopc:
				return
			case <-t.C:
			}
		}
	}()
	go func() {
		defer p.wg.Done()
		buf := make([]byte, 1500)
		for {
			n, _, err := p.c.ReadFrom(buf)
			if err != nil {
				return
			}
			now := time.Now()
			m, err := icmp.ParseMessage(proto, buf[:n])
			if err != nil || m.Type != reply {
				continue
			}
			e, ok := m.Body.(*icmp.Echo)
			if !ok || e.ID != p.id {
				continue
			}
			p.mu.Lock()
			p.all = append(p.all, now)
			// The newest probe with this 16-bit sequence number.
			for i := len(p.sent) - 1; i >= 0 && i >= len(p.sent)-0x10000; i-- {
				if i&0xffff == e.Seq {
					if p.rx[i].IsZero() {
						p.rx[i] = now
					}
					break
				}
			}
			p.mu.Unlock()
		}
	}()
	return p, nil
}

// Stop ends the probing; the record stays readable.
func (p *Prober) Stop() {
	close(p.stopc)
	p.c.Close()
	p.wg.Wait()
}

// Answered is the number of replies so far.
func (p *Prober) Answered() int { return p.AnsweredSince(time.Time{}) }

// AnsweredSince is the number of replies that arrived after t.
func (p *Prober) AnsweredSince(t time.Time) int {
	p.mu.Lock()
	defer p.mu.Unlock()
	n := 0
	for _, r := range p.all {
		if r.After(t) {
			n++
		}
	}
	return n
}

// LongestReplyGap is the longest time between two consecutive replies,
// counting from the last reply before from on: around a failure at t,
// LongestReplyGap(t.Add(-time.Second)) is the outage it caused.
func (p *Prober) LongestReplyGap(from time.Time) time.Duration {
	p.mu.Lock()
	defer p.mu.Unlock()
	var longest time.Duration
	var prev time.Time
	for _, r := range p.all {
		if r.Before(from) {
			prev = r
			continue
		}
		if !prev.IsZero() {
			longest = max(longest, r.Sub(prev))
		}
		prev = r
	}
	return longest
}

// Outage is a run of unanswered probes.
type Outage struct {
	Start, End time.Time // sends of the answered probes around it
	Lost       int
}

// Length is the time between the answered probes around the outage.
func (o Outage) Length() time.Duration { return o.End.Sub(o.Start) }

// OutagesAfter returns the outages after the answered probe at index last
// (-1: none yet) among the probes sent before settledBefore (a probe sent
// later may still be answered), and the index of the last answered probe.
// Measured between sends, a stall of the prober itself is no outage.
func (p *Prober) OutagesAfter(last int, settledBefore time.Time) ([]Outage, int) {
	p.mu.Lock()
	defer p.mu.Unlock()
	var out []Outage
	for j := last + 1; j < len(p.sent) && p.sent[j].Before(settledBefore); j++ {
		if p.rx[j].IsZero() {
			continue
		}
		if last >= 0 && j-last > 1 {
			out = append(out, Outage{Start: p.sent[last], End: p.sent[j], Lost: j - last - 1})
		}
		last = j
	}
	return out, last
}
