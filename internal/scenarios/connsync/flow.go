package connsync

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/lvsha/lvsha/internal/testenv/lab"
	"github.com/lvsha/lvsha/internal/testenv/netns"
)

// The client side: long-lived echo connections through the VIP and the
// servers that answer them.

// EchoServer answers each line "N" of a connection to Port with "NAME N".
func EchoServer(n *netns.NS, name string) (net.Listener, error) {
	var ln net.Listener
	if err := n.Do(func() (err error) {
		ln, err = net.Listen("tcp", fmt.Sprintf(":%d", Port))
		return err
	}); err != nil {
		return nil, fmt.Errorf("%s: listen: %w", name, err)
	}
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go func() {
				defer c.Close()
				r := bufio.NewReader(c)
				for {
					l, err := r.ReadString('\n')
					if err != nil {
						return
					}
					if _, err := io.WriteString(c, name+" "+l); err != nil {
						return
					}
				}
			}()
		}
	}()
	return ln, nil
}

// Flow is one long-lived connection through the VIP.
type Flow struct {
	conn  net.Conn
	Local netip.AddrPort

	mu     sync.Mutex
	Server string // the real server that answered first
	Lines  int
	last   time.Time     // the latest echo
	MaxGap time.Duration // the longest time between two echoes
	Err    error
	ErrAt  time.Time
}

// Broken says how the flow ended, nil if it has not.
func (f *Flow) Broken() error {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.Err
}

// LinesSeen counts the echoes received.
func (f *Flow) LinesSeen() int {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.Lines
}

// RealServer is the server that answered.
func (f *Flow) RealServer() string {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.Server
}

// Reset says whether the flow ended by a reset (or the peer's close).
func Reset(err error) bool {
	return errors.Is(err, syscall.ECONNRESET) || errors.Is(err, io.EOF) || errors.Is(err, syscall.EPIPE)
}

// Open dials n connections from the client to the VIP and keeps each
// talking (a line every interval, its echo awaited) until ctx is done.
// Connections are opened in a paced burst so the emulated CPU keeps up.
func (t *Topology) Open(ctx context.Context, n int, interval time.Duration) ([]*Flow, error) {
	return Open(ctx, t.Client.NS, netip.AddrPortFrom(lab.VIP, Port), n, interval)
}

// Open dials n connections from the namespace client to target (an echo
// server's address) and keeps each talking as Topology.Open does.
func Open(ctx context.Context, client *netns.NS, target netip.AddrPort, n int, interval time.Duration) ([]*Flow, error) {
	flows := make([]*Flow, 0, n)
	// One thread in the client's namespace dials them all: a namespace
	// switch per connection is slow under the VM's emulated CPU.
	err := client.Do(func() error {
		for i := range n {
			d := net.Dialer{Timeout: 5 * time.Second}
			c, err := d.DialContext(ctx, "tcp", target.String())
			if err != nil {
				return fmt.Errorf("connection %d: %w", i, err)
			}
			flows = append(flows, &Flow{conn: c, Local: c.LocalAddr().(*net.TCPAddr).AddrPort()})
		}
		return nil
	})
	if err != nil {
		for _, f := range flows {
			_ = f.conn.Close()
		}
		return nil, err
	}
	for i, f := range flows {
		// Each flow's phase differs, spreading the lines over the interval.
		go f.talk(ctx, interval, time.Duration(i)*interval/time.Duration(n))
	}
	return flows, nil
}

func (f *Flow) talk(ctx context.Context, interval, phase time.Duration) {
	defer f.conn.Close()
	r := bufio.NewReader(f.conn)
	fail := func(err error) {
		f.mu.Lock()
		f.Err, f.ErrAt = err, time.Now()
		f.mu.Unlock()
	}
	select {
	case <-time.After(phase):
	case <-ctx.Done():
		return
	}
	tick := time.NewTicker(interval)
	defer tick.Stop()
	for seq := 0; ; seq++ {
		_ = f.conn.SetDeadline(time.Now().Add(5 * time.Second))
		if _, err := fmt.Fprintf(f.conn, "%d\n", seq); err != nil {
			fail(fmt.Errorf("write: %w", err))
			return
		}
		l, err := r.ReadString('\n')
		if err != nil {
			if ctx.Err() == nil {
				fail(fmt.Errorf("read: %w", err))
			}
			return
		}
		name, num, _ := strings.Cut(strings.TrimSpace(l), " ")
		if num != strconv.Itoa(seq) {
			fail(fmt.Errorf("echo %q for line %d", l, seq))
			return
		}
		f.mu.Lock()
		if f.Server == "" {
			f.Server = name
		}
		moved := f.Server != name
		f.Lines++
		now := time.Now()
		if !f.last.IsZero() && now.Sub(f.last) > f.MaxGap {
			f.MaxGap = now.Sub(f.last)
		}
		f.last = now
		f.mu.Unlock()
		if moved {
			fail(fmt.Errorf("moved from %s to %s", f.Server, name))
			return
		}
		select {
		case <-ctx.Done():
			return
		case <-tick.C:
		}
	}
}

// Synced counts the flows whose ESTABLISHED entry the namespace's table
// has, pointing at the real server that answers the flow.
func Synced(n *netns.NS, flows []*Flow) (int, error) {
	es, err := lab.IPVSConns(n)
	if err != nil {
		return 0, err
	}
	have := map[netip.AddrPort]lab.IPVSConn{}
	for _, e := range es {
		have[e.Client] = e
	}
	ok := 0
	for _, f := range flows {
		e, found := have[f.Local]
		if found && e.State == "ESTABLISHED" && ServerName(e.Dest.Addr()) == f.RealServer() {
			ok++
		}
	}
	return ok, nil
}

// ServerName names a real server by address as the echo does.
func ServerName(a netip.Addr) string {
	switch a {
	case lab.Web1.Addr():
		return "web1"
	case lab.Web2.Addr():
		return "web2"
	}
	return a.String()
}

// Tally sums up flows: how many go on, how many were reset, other errors.
type Tally struct{ Alive, Reset, Other int }

func (t Tally) String() string {
	return fmt.Sprintf("%d alive, %d reset, %d other errors", t.Alive, t.Reset, t.Other)
}

// Count tallies flows, and returns the first errors for a message.
func Count(flows []*Flow) (Tally, []string) {
	var t Tally
	var errs []string
	for _, f := range flows {
		switch err := f.Broken(); {
		case err == nil:
			t.Alive++
		case Reset(err):
			t.Reset++
		default:
			t.Other++
		}
		if err := f.Broken(); err != nil && len(errs) < 5 {
			errs = append(errs, fmt.Sprintf("%v: %v", f.Local, err))
		}
	}
	return t, errs
}

// Gaps resets every flow's longest gap and returns the longest one so far.
func Gaps(flows []*Flow, reset bool) time.Duration {
	var longest time.Duration
	for _, f := range flows {
		f.mu.Lock()
		longest = max(longest, f.MaxGap)
		if reset {
			f.MaxGap = 0
		}
		f.mu.Unlock()
	}
	return longest
}

// Progress is the least number of echoes any still-alive flow has seen,
// to prove they keep talking.
func Progress(flows []*Flow) int {
	least := -1
	for _, f := range flows {
		if f.Broken() != nil {
			continue
		}
		if n := f.LinesSeen(); least < 0 || n < least {
			least = n
		}
	}
	return least
}
