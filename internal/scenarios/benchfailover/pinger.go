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

// pinger sends ICMP echo requests from a namespace and records when replies
// arrive.
type pinger struct {
	c     *icmp.PacketConn
	stopc chan struct{}
	wg    sync.WaitGroup
	mu    sync.Mutex
	rx    []time.Time
}

func startPinger(node *netns.Node, dst netip.Addr, every time.Duration) (*pinger, error) {
	p := &pinger{stopc: make(chan struct{})}
	if err := node.Do(func() (err error) {
		p.c, err = icmp.ListenPacket("ip4:icmp", "0.0.0.0")
		return err
	}); err != nil {
		return nil, fmt.Errorf("icmp socket: %w", err)
	}
	id := os.Getpid() & 0xffff
	p.wg.Add(2)
	go func() {
		defer p.wg.Done()
		t := time.NewTicker(every)
		defer t.Stop()
		for seq := 0; ; seq++ {
			msg := icmp.Message{Type: ipv4.ICMPTypeEcho, Body: &icmp.Echo{ID: id, Seq: seq & 0xffff, Data: []byte("lvsha")}}
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
			m, err := icmp.ParseMessage(1, buf[:n])
			if err != nil || m.Type != ipv4.ICMPTypeEchoReply {
				continue
			}
			if e, ok := m.Body.(*icmp.Echo); !ok || e.ID != id {
				continue
			}
			p.mu.Lock()
			p.rx = append(p.rx, now)
			p.mu.Unlock()
		}
	}()
	return p, nil
}

func (p *pinger) stop() {
	close(p.stopc)
	p.c.Close()
	p.wg.Wait()
}

func (p *pinger) count() int {
	p.mu.Lock()
	defer p.mu.Unlock()
	return len(p.rx)
}

func (p *pinger) countSince(t time.Time) int {
	p.mu.Lock()
	defer p.mu.Unlock()
	n := 0
	for _, r := range p.rx {
		if r.After(t) {
			n++
		}
	}
	return n
}

// longestGapAround is the longest time between two consecutive replies from
// one second before the failure on.
func (p *pinger) longestGapAround(at time.Time) time.Duration {
	p.mu.Lock()
	defer p.mu.Unlock()
	var longest time.Duration
	var prev time.Time
	for _, r := range p.rx {
		if r.Before(at.Add(-time.Second)) {
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
