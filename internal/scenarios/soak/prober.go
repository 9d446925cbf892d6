package main

import (
	"fmt"
	"net"
	"net/netip"
	"os"
	"sync"
	"time"

	"github.com/lvsha/lvsha/internal/testenv/netns"
	"golang.org/x/net/icmp"
	"golang.org/x/net/ipv4"
)

// prober pings the VIP from the client every 10 ms and remembers, for each
// probe, when it was sent and whether it was answered. An outage is a run of
// unanswered probes: measured between the sends of the answered probes
// around it, so a stall of the prober itself (no probes sent) is no outage.
type prober struct {
	c     *icmp.PacketConn
	id    int
	stopc chan struct{}
	wg    sync.WaitGroup

	mu   sync.Mutex
	sent []time.Time
	got  []bool
}

const probeEvery = 10 * time.Millisecond

func startProber(node *netns.Node, dst netip.Addr) (*prober, error) {
	p := &prober{stopc: make(chan struct{}), id: os.Getpid() & 0xffff}
	if err := node.Do(func() (err error) {
		p.c, err = icmp.ListenPacket("ip4:icmp", "0.0.0.0")
		return err
	}); err != nil {
		return nil, fmt.Errorf("icmp socket: %w", err)
	}
	p.wg.Add(2)
	go func() {
		defer p.wg.Done()
		t := time.NewTicker(probeEvery)
		defer t.Stop()
		for {
			p.mu.Lock()
			seq := len(p.sent)
			p.sent = append(p.sent, time.Now())
			p.got = append(p.got, false)
			p.mu.Unlock()
			msg := icmp.Message{Type: ipv4.ICMPTypeEcho, Body: &icmp.Echo{ID: p.id, Seq: seq & 0xffff, Data: []byte("lvsha-soak")}}
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
			m, err := icmp.ParseMessage(1, buf[:n])
			if err != nil || m.Type != ipv4.ICMPTypeEchoReply {
				continue
			}
			e, ok := m.Body.(*icmp.Echo)
			if !ok || e.ID != p.id {
				continue
			}
			p.mu.Lock()
			// The newest probe with this 16-bit sequence number.
			for i := len(p.sent) - 1; i >= 0 && i >= len(p.sent)-0x10000; i-- {
				if i&0xffff == e.Seq {
					p.got[i] = true
					break
				}
			}
			p.mu.Unlock()
		}
	}()
	return p, nil
}

func (p *prober) stop() {
	close(p.stopc)
	p.c.Close()
	p.wg.Wait()
}

// answered is the number of probes answered so far.
func (p *prober) answered() int {
	p.mu.Lock()
	defer p.mu.Unlock()
	n := 0
	for _, g := range p.got {
		if g {
			n++
		}
	}
	return n
}

// outage is a run of unanswered probes.
type outage struct {
	start, end time.Time // sends of the answered probes around it
	lost       int
}

func (o outage) length() time.Duration { return o.end.Sub(o.start) }

// outagesAfter returns the outages after the answered probe at index last
// (-1: none yet) among the probes sent before settledBefore (a probe sent
// later may still be answered), and the index of the last answered probe.
func (p *prober) outagesAfter(last int, settledBefore time.Time) ([]outage, int) {
	p.mu.Lock()
	defer p.mu.Unlock()
	var out []outage
	for j := last + 1; j < len(p.sent) && p.sent[j].Before(settledBefore); j++ {
		if !p.got[j] {
			continue
		}
		if last >= 0 && j-last > 1 {
			out = append(out, outage{start: p.sent[last], end: p.sent[j], lost: j - last - 1})
		}
		last = j
	}
	return out, last
}
