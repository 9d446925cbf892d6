package vrrp

import (
	"context"
	"errors"
	"log/slog"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"testing/synctest"
	"time"
)

// fakeKernel is an in-memory kernel for the driver loop.
type fakeKernel struct {
	mu     sync.Mutex
	rx     chan Packet
	closed chan struct{}
	once   sync.Once
	sent   []sentAdvert
	addrs  map[netip.Prefix]bool
	garps  map[netip.Addr]int
	up     map[string]bool
	linkCh chan linkState
	// pending makes Pending report a packet waiting in the socket.
	pending bool
	// sendErr, if set, is what WriteAdvert returns.
	sendErr error
}

type sentAdvert struct {
	a        *Advert
	src, dst netip.Addr
}

func newFakeKernel() *fakeKernel {
	return &fakeKernel{
		rx: make(chan Packet), closed: make(chan struct{}),
		addrs:  map[netip.Prefix]bool{netip.MustParsePrefix("10.0.0.1/24"): true},
		garps:  map[netip.Addr]int{},
		up:     map[string]bool{"eth0": true, "eth1": true},
		linkCh: make(chan linkState),
	}
}

func (f *fakeKernel) ReadAdvert(b []byte) (Packet, error) {
	select {
	case p := <-f.rx:
		p.Payload = b[:copy(b, p.Payload)]
		return p, nil
	case <-f.closed:
		return Packet{}, net.ErrClosed
	}
}

func (f *fakeKernel) WriteAdvert(b []byte, src, dst netip.Addr) error {
	a, err := Unmarshal(b, src, dst)
	if err != nil {
		return err
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.sendErr != nil {
		return f.sendErr
	}
	f.sent = append(f.sent, sentAdvert{a, src, dst})
	return nil
}

func (f *fakeKernel) Close() error { f.once.Do(func() { close(f.closed) }); return nil }

func (f *fakeKernel) Pending() bool {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.pending
}

func (f *fakeKernel) Add(p netip.Prefix) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.addrs[p] = true
	return nil
}

func (f *fakeKernel) Remove(p netip.Prefix) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	delete(f.addrs, p)
	return nil
}

func (f *fakeKernel) List() ([]netip.Prefix, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	var out []netip.Prefix
	for p := range f.addrs {
		out = append(out, p)
	}
	slices.SortFunc(out, func(a, b netip.Prefix) int { return a.Addr().Compare(b.Addr()) })
	return out, nil
}

func (f *fakeKernel) GARP(vip netip.Addr) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.garps[vip]++
	return nil
}

// garpCount is the number of GARPs sent so far, all VIPs together.
func (f *fakeKernel) garpCount() int {
	f.mu.Lock()
	defer f.mu.Unlock()
	n := 0
	for _, c := range f.garps {
		n += c
	}
	return n
}

func (f *fakeKernel) Up(name string) (bool, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.up[name], nil
}

func (f *fakeKernel) Watch(ctx context.Context, names []string, out chan<- linkState) {
	for {
		select {
		case <-ctx.Done():
			return
		case ls := <-f.linkCh:
			select {
			case out <- ls:
			case <-ctx.Done():
				return
			}
		}
	}
}

func (f *fakeKernel) has(p string) bool {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.addrs[netip.MustParsePrefix(p)]
}

func (f *fakeKernel) adverts() []sentAdvert {
	f.mu.Lock()
	defer f.mu.Unlock()
	return slices.Clone(f.sent)
}

func testInstance(t *testing.T, f *fakeKernel, mod func(*Config)) *Instance {
	t.Helper()
	cfg := Config{Name: "vi1", Interface: "eth0", VRID: 51, Priority: 100, AdvertInterval: time.Second, Version: 3,
		GARPRepeat: 5, NotifyTimeout: 10 * time.Second, Preempt: true, VIPs: []netip.Prefix{netip.MustParsePrefix("10.0.0.100/24"), netip.MustParsePrefix("10.0.0.101/24")}}
	if mod != nil {
		mod(&cfg)
	}
	in, err := New(cfg, slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelWarn})))
	if err != nil {
		t.Fatal(err)
	}
	in.open = func() (*kernel, error) {
		k := &kernel{conn: f, addrs: f, garp: f, links: f, primary: cfg.UnicastSrc, ifindex: fakeIfindex}
		if !k.primary.IsValid() {
			k.primary = netip.MustParseAddr("10.0.0.1")
		}
		return k, nil
	}
	return in
}

// transitionLog records the states an instance logs transitions to.
type transitionLog struct {
	mu  sync.Mutex
	seq []string
}

func (l *transitionLog) Enabled(context.Context, slog.Level) bool { return true }
func (l *transitionLog) WithAttrs([]slog.Attr) slog.Handler       { return l }
func (l *transitionLog) WithGroup(string) slog.Handler            { return l }
func (l *transitionLog) Handle(_ context.Context, r slog.Record) error {
	if r.Message != "vrrp: transition" {
		return nil
	}
	r.Attrs(func(a slog.Attr) bool {
		if a.Key == "to" {
			l.mu.Lock()
			l.seq = append(l.seq, a.Value.String())
			l.mu.Unlock()
		}
		return true
	})
	return nil
}

func (l *transitionLog) states() []string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return append([]string(nil), l.seq...)
}

// packet encodes an advert as it would arrive from src.
func packet(t *testing.T, a *Advert, src netip.Addr, ttl int) Packet {
	t.Helper()
	b, err := a.Marshal(ChecksumPseudoHeader, src, Group)
	if err != nil {
		t.Fatal(err)
	}
	return Packet{Src: src, Dst: Group, TTL: ttl, Payload: b}
}

func peerAdvert(prio uint8) *Advert {
	return &Advert{Version: 3, Type: 1, VRID: 51, Priority: prio, MaxAdvertInterval: 100,
		Addrs: []netip.Addr{netip.MustParseAddr("10.0.0.100"), netip.MustParseAddr("10.0.0.101")}}
}

func TestDriverElectionAndShutdown(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		f := newFakeKernel()
		// A VIP left by a crashed run must go at start.
		f.addrs[netip.MustParsePrefix("10.0.0.100/24")] = true
		in := testInstance(t, f, nil)
		changes := &transitionLog{}
		in.log = slog.New(changes)
		ctx, cancel := context.WithCancel(t.Context())
		done := make(chan error)
		start := time.Now()
		go func() { done <- in.Run(ctx) }()
		synctest.Wait()
		if f.has("10.0.0.100/24") || in.Status().State != Backup {
			t.Fatalf("at start: leftover VIP still there or not BACKUP: %+v", in.Status())
		}
		// No master: take over after Master_Down_Interval = 3s + 156/256 s.
		time.Sleep(3609 * time.Millisecond)
		synctest.Wait()
		if in.Status().State != Backup {
			t.Fatal("took over before the master-down interval")
		}
		time.Sleep(time.Millisecond)
		synctest.Wait()
		st := in.Status()
		if st.State != Master || st.Cause != "master down timer expired" || st.Since.Sub(start) != 3609375*time.Microsecond {
			t.Fatalf("after master-down: %+v", st)
		}
		if !f.has("10.0.0.100/24") || !f.has("10.0.0.101/24") || f.garps[netip.MustParseAddr("10.0.0.100")] != 5 {
			t.Fatalf("takeover: addrs %v garps %v", f.addrs, f.garps)
		}
		// One advert at takeover, then one a second.
		time.Sleep(5 * time.Second)
		synctest.Wait()
		ads := f.adverts()
		if len(ads) != 6 || ads[0].dst != Group || ads[0].a.Priority != 100 || ads[0].a.MaxAdvertInterval != 100 || !ads[0].a.PseudoHeader {
			t.Fatalf("adverts: %d, first %+v", len(ads), ads[0])
		}
		cancel()
		if err := <-done; err != nil {
			t.Fatal(err)
		}
		ads = f.adverts()
		if last := ads[len(ads)-1]; last.a.Priority != 0 {
			t.Errorf("last advert priority %d, want 0", last.a.Priority)
		}
		if f.has("10.0.0.100/24") || !f.has("10.0.0.1/24") {
			t.Errorf("after shutdown addrs = %v", f.addrs)
		}
		if seq := changes.states(); strings.Join(seq, ",") != "BACKUP,MASTER,INIT" {
			t.Errorf("changes %v", seq)
		}
		if st := in.Status(); st.AdvertsSent != 7 || st.Transitions != 3 {
			t.Errorf("status %+v", st)
		}
	})
}

func TestDriverDropsBadAdverts(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		f := newFakeKernel()
		in := testInstance(t, f, nil)
		ctx, cancel := context.WithCancel(t.Context())
		defer cancel()
		go in.Run(ctx)
		time.Sleep(4 * time.Second)
		synctest.Wait()
		if in.Status().State != Master {
			t.Fatal("not master")
		}
		peer := netip.MustParseAddr("10.0.0.2")
		high := peerAdvert(200)
		bad := func(mod func(p *Packet)) Packet {
			p := packet(t, high, peer, 255)
			mod(&p)
			return p
		}
		v2 := *high
		v2.Version, v2.AdvertInterval = 2, 1
		otherVRID := *high
		otherVRID.VRID = 52
		cases := map[string]Packet{
			"ttl":      packet(t, high, peer, 64),
			"checksum": bad(func(p *Packet) { p.Payload[6] ^= 0xff }),
			"length":   bad(func(p *Packet) { p.Payload = p.Payload[:len(p.Payload)-2] }),
			"version":  packet(t, &v2, peer, 255),
			"vrid":     packet(t, &otherVRID, peer, 255),
			"own":      packet(t, high, netip.MustParseAddr("10.0.0.1"), 255),
		}
		for _, p := range cases {
			f.rx <- p
		}
		synctest.Wait()
		st := in.Status()
		if st.State != Master || st.AdvertsReceived != 0 {
			t.Fatalf("bad adverts acted on: %+v", st)
		}
		for reason := range cases {
			if st.Dropped[reason] != 1 {
				t.Errorf("dropped[%s] = %d (%v)", reason, st.Dropped[reason], st.Dropped)
			}
		}
		// A good higher-priority advert wins.
		f.rx <- packet(t, high, peer, 255)
		synctest.Wait()
		st = in.Status()
		if st.State != Backup || st.Master != peer || st.Cause != "higher priority 200 from 10.0.0.2" || f.has("10.0.0.100/24") {
			t.Fatalf("after good advert: %+v", st)
		}
	})
}

func TestDriverV2AuthAndUnicast(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		f := newFakeKernel()
		src, peer := netip.MustParseAddr("10.0.0.5"), netip.MustParseAddr("10.0.0.6")
		in := testInstance(t, f, func(c *Config) {
			c.Version, c.AuthPass, c.Priority = 2, "secret12", 120
			c.UnicastSrc, c.UnicastPeers = src, []netip.Addr{peer}
		})
		ctx, cancel := context.WithCancel(t.Context())
		defer cancel()
		go in.Run(ctx)
		time.Sleep(4 * time.Second)
		synctest.Wait()
		ads := f.adverts()
		if len(ads) == 0 || ads[0].dst != peer || ads[0].src != src || ads[0].a.AuthType != AuthPassword || string(ads[0].a.AuthData[:]) != "secret12" || ads[0].a.AdvertInterval != 1 {
			t.Fatalf("v2 unicast advert: %+v", ads)
		}
		mk := func(pass string, interval uint8, from netip.Addr) Packet {
			a := &Advert{Version: 2, Type: 1, VRID: 51, Priority: 200, AdvertInterval: interval, AuthType: AuthPassword,
				Addrs: []netip.Addr{netip.MustParseAddr("10.0.0.100"), netip.MustParseAddr("10.0.0.101")}}
			copy(a.AuthData[:], pass)
			b, _ := a.Marshal(ChecksumMessage, from, src)
			return Packet{Src: from, Dst: src, TTL: 255, Payload: b}
		}
		f.rx <- mk("wrong", 1, peer)
		f.rx <- mk("secret12", 2, peer)
		f.rx <- mk("secret12", 1, netip.MustParseAddr("10.0.0.7"))
		synctest.Wait()
		st := in.Status()
		if st.State != Master || st.Dropped["auth"] != 1 || st.Dropped["interval"] != 1 || st.Dropped["peer"] != 1 {
			t.Fatalf("after bad v2 adverts: %+v", st)
		}
		f.rx <- mk("secret12", 1, peer)
		synctest.Wait()
		if st := in.Status(); st.State != Backup {
			t.Fatalf("good v2 advert: %+v", st)
		}
	})
}

func TestDriverLinkAndTrack(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		f := newFakeKernel()
		in := testInstance(t, f, func(c *Config) {
			c.Priority = 150
			c.Track = []TrackInterface{{"eth1", -60}}
		})
		ctx, cancel := context.WithCancel(t.Context())
		defer cancel()
		go in.Run(ctx)
		time.Sleep(4 * time.Second)
		synctest.Wait()
		f.linkCh <- linkState{Name: "eth1", Up: false}
		synctest.Wait()
		if st := in.Status(); st.State != Master || st.Priority != 90 {
			t.Fatalf("tracked eth1 down: %+v", st)
		}
		if ads := f.adverts(); ads[len(ads)-1].a.Priority != 90 {
			t.Errorf("no advert with the new priority")
		}
		f.linkCh <- linkState{Name: "eth0", Up: false}
		synctest.Wait()
		if st := in.Status(); st.State != Fault || st.Cause != "link down" || f.has("10.0.0.100/24") {
			t.Fatalf("link down: %+v", st)
		}
		n := len(f.adverts())
		time.Sleep(10 * time.Second)
		synctest.Wait()
		if len(f.adverts()) != n {
			t.Error("adverts sent in FAULT")
		}
		f.linkCh <- linkState{Name: "eth0", Up: true}
		synctest.Wait()
		if st := in.Status(); st.State != Backup || st.Cause != "link up" {
			t.Fatalf("link up: %+v", st)
		}
	})
}

// fakeIfindex is the index of eth0 in the fake kernel.
const fakeIfindex = 7

// TestDriverInterfaceReplaced: a link event for our interface with another
// ifindex (deleted and made again) ends Run with ErrInterfaceReplaced after
// leaving MASTER as a link down would; an event with the same index is an
// ordinary link change.
func TestDriverInterfaceReplaced(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		f := newFakeKernel()
		in := testInstance(t, f, func(c *Config) { c.Priority = 150 })
		done := make(chan error, 1)
		go func() { done <- in.Run(t.Context()) }()
		time.Sleep(4 * time.Second)
		synctest.Wait()
		f.linkCh <- linkState{Name: "eth0", Up: true, Index: fakeIfindex}
		synctest.Wait()
		if st := in.Status(); st.State != Master {
			t.Fatalf("same index: %+v", st)
		}
		f.linkCh <- linkState{Name: "eth0", Up: true, Index: fakeIfindex + 1}
		synctest.Wait()
		select {
		case err := <-done:
			if !errors.Is(err, ErrInterfaceReplaced) {
				t.Fatalf("Run returned %v", err)
			}
		default:
			t.Fatal("Run goes on on a replaced interface")
		}
		if st := in.Status(); st.State != Fault || f.has("10.0.0.100/24") {
			t.Errorf("after the interface was replaced: %+v, VIP held %v", st, f.has("10.0.0.100/24"))
		}
	})
}

// TestDriverSendErrors: adverts the socket refuses are counted with their
// reason, which clears once one goes out again.
func TestDriverSendErrors(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		f := newFakeKernel()
		in := testInstance(t, f, func(c *Config) { c.Priority = 150 })
		ctx, cancel := context.WithCancel(t.Context())
		defer cancel()
		go in.Run(ctx)
		time.Sleep(4 * time.Second)
		synctest.Wait()
		f.mu.Lock()
		f.sendErr = errors.New("sendto: no such device")
		f.mu.Unlock()
		time.Sleep(3 * time.Second)
		synctest.Wait()
		if st := in.Status(); st.SendErrors != 3 || st.LastSendError != "sendto: no such device" {
			t.Fatalf("while sends fail: %d errors, last %q", st.SendErrors, st.LastSendError)
		}
		f.mu.Lock()
		f.sendErr = nil
		f.mu.Unlock()
		time.Sleep(time.Second)
		synctest.Wait()
		if st := in.Status(); st.SendErrors != 3 || st.LastSendError != "" {
			t.Fatalf("after a good send: %d errors, last %q", st.SendErrors, st.LastSendError)
		}
	})
}

func TestDriverGARPSchedule(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		f := newFakeKernel()
		in := testInstance(t, f, func(c *Config) {
			c.Priority = 255
			c.GARPRepeat, c.GARPInterval, c.GARPDelay, c.GARPRefresh = 3, 100*time.Millisecond, 5*time.Second, time.Minute
		})
		ctx, cancel := context.WithCancel(t.Context())
		defer cancel()
		go in.Run(ctx)
		vip := netip.MustParseAddr("10.0.0.100")
		count := func() int { f.mu.Lock(); defer f.mu.Unlock(); return f.garps[vip] }
		synctest.Wait()
		if count() != 1 {
			t.Fatalf("owner at start: %d GARPs, want 1 (first of the burst)", count())
		}
		time.Sleep(250 * time.Millisecond)
		synctest.Wait()
		if count() != 3 {
			t.Fatalf("burst: %d", count())
		}
		time.Sleep(5 * time.Second)
		synctest.Wait()
		if count() != 6 {
			t.Fatalf("after garp delay: %d", count())
		}
		time.Sleep(55 * time.Second)
		synctest.Wait()
		if count() != 9 {
			t.Fatalf("after refresh: %d", count())
		}
	})
}

// TestNotifyHangDoesNotBlock runs real notify commands: one hangs until its
// timeout while VRRP goes on, and all run in order.
func TestNotifyHangDoesNotBlock(t *testing.T) {
	dir := t.TempDir()
	logf := filepath.Join(dir, "log")
	script := filepath.Join(dir, "notify.sh")
	if err := os.WriteFile(script, []byte("#!/bin/sh\necho \"$*\" >> "+logf+"\n[ \"$3\" = BACKUP ] && exec sleep 60\nexit 0\n"), 0o755); err != nil {
		t.Fatal(err)
	}
	f := newFakeKernel()
	in := testInstance(t, f, func(c *Config) {
		c.AdvertInterval = 10 * time.Millisecond
		c.Notify = []string{script, "extra"}
		c.NotifyTimeout = 500 * time.Millisecond
	})
	ctx, cancel := context.WithCancel(t.Context())
	done := make(chan error)
	go func() { done <- in.Run(ctx) }()
	read := func() string { b, _ := os.ReadFile(logf); return string(b) }
	deadline := time.Now().Add(10 * time.Second)
	// VRRP reaches MASTER while the BACKUP notify still hangs.
	for in.Status().State != Master && time.Now().Before(deadline) {
		time.Sleep(5 * time.Millisecond)
	}
	if in.Status().State != Master {
		t.Fatal("never became master")
	}
	if got := read(); got != "extra vi1 BACKUP 100\n" {
		t.Fatalf("while hanging, log = %q", got)
	}
	for !strings.Contains(read(), "MASTER") && time.Now().Before(deadline) {
		time.Sleep(10 * time.Millisecond)
	}
	if got := read(); got != "extra vi1 BACKUP 100\nextra vi1 MASTER 100\n" {
		t.Fatalf("after timeout, log = %q", got)
	}
	cancel()
	if err := <-done; err != nil {
		t.Fatal(err)
	}
}

func TestConfigValidate(t *testing.T) {
	ok := Config{Name: "x", Interface: "eth0", VRID: 1, Priority: 100, Version: 3, AdvertInterval: time.Second,
		GARPRepeat: 5, NotifyTimeout: 10 * time.Second, VIPs: []netip.Prefix{netip.MustParsePrefix("10.0.0.1/32")}}
	if _, err := New(ok, nil); err != nil {
		t.Fatalf("valid config: %v", err)
	}
	bad := map[string]func(c *Config){
		"no interface":  func(c *Config) { c.Interface = "" },
		"vrid 0":        func(c *Config) { c.VRID = 0 },
		"priority 0":    func(c *Config) { c.Priority = 0 },
		"version 4":     func(c *Config) { c.Version = 4 },
		"no vips":       func(c *Config) { c.VIPs = nil },
		"long password": func(c *Config) { c.Version, c.AuthPass = 2, "123456789" },
		"v3 password":   func(c *Config) { c.AuthPass = "x" },
		"v3 5ms":        func(c *Config) { c.AdvertInterval = 5 * time.Millisecond },
		"v3 41s":        func(c *Config) { c.AdvertInterval = 41 * time.Second },
		"v2 1.5s":       func(c *Config) { c.Version, c.AdvertInterval = 2, 1500*time.Millisecond },
		// One instance is one address family; v2 carries IPv4 only.
		"v2 ipv6 vip": func(c *Config) {
			c.Version, c.AdvertInterval, c.VIPs = 2, time.Second, []netip.Prefix{netip.MustParsePrefix("2001:db8::1/64")}
		},
		"mixed vips": func(c *Config) {
			c.VIPs = append(c.VIPs, netip.MustParsePrefix("2001:db8::1/64"))
		},
		"mapped vip":        func(c *Config) { c.VIPs = []netip.Prefix{netip.MustParsePrefix("::ffff:10.0.0.1/128")} },
		"ipv6 unicast src":  func(c *Config) { c.UnicastSrc = netip.MustParseAddr("fe80::1") },
		"ipv6 unicast peer": func(c *Config) { c.UnicastPeers = []netip.Addr{netip.MustParseAddr("2001:db8::2")} },
		"ipv4 peer of ipv6": func(c *Config) {
			c.VIPs = []netip.Prefix{netip.MustParsePrefix("2001:db8::1/64")}
			c.UnicastPeers = []netip.Addr{netip.MustParseAddr("10.0.0.2")}
		},
		"no version":        func(c *Config) { c.Version = 0 },
		"no interval":       func(c *Config) { c.AdvertInterval = 0 },
		"garp repeat 0":     func(c *Config) { c.GARPRepeat = 0 },
		"no notify timeout": func(c *Config) { c.NotifyTimeout = 0 },
	}
	for name, mod := range bad {
		c := ok
		mod(&c)
		if _, err := New(c, nil); err == nil {
			t.Errorf("%s: accepted", name)
		}
	}
	v6 := ok
	v6.VIPs = []netip.Prefix{netip.MustParsePrefix("2001:db8::1/64"), netip.MustParsePrefix("2001:db8::2/128")}
	v6.UnicastSrc, v6.UnicastPeers = netip.MustParseAddr("fe80::1"), []netip.Addr{netip.MustParseAddr("fe80::2")}
	if _, err := New(v6, nil); err != nil {
		t.Errorf("valid IPv6 config: %v", err)
	}
}

// TestDriverPendingAdvertBeatsTimer: when the master-down timer fires while
// an advert waits unread in the socket (a busy host), the advert wins.
func TestDriverPendingAdvertBeatsTimer(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		f := newFakeKernel()
		f.pending = true
		in := testInstance(t, f, nil)
		ctx, cancel := context.WithCancel(t.Context())
		defer cancel()
		go in.Run(ctx)
		md := 3609375 * time.Microsecond
		go func() {
			time.Sleep(md + 10*time.Millisecond)
			f.rx <- packet(t, peerAdvert(150), netip.MustParseAddr("10.0.0.2"), 255)
		}()
		time.Sleep(md + 100*time.Millisecond)
		synctest.Wait()
		if st := in.Status(); st.State != Backup || st.AdvertsReceived != 1 || st.Transitions != 1 {
			t.Fatalf("late-read advert lost to the timer: %+v", st)
		}
		// Nothing comes: the takeover is only held back briefly.
		f.mu.Lock()
		f.pending = true
		f.mu.Unlock()
		start := time.Now()
		for in.Status().State != Master {
			time.Sleep(time.Millisecond)
		}
		if waited := time.Since(start); waited > md+50*time.Millisecond {
			t.Errorf("takeover held back %v", waited)
		}
	})
}

// recordLog keeps the records logged at a level or above.
type recordLog struct {
	mu   sync.Mutex
	min  slog.Level
	recs []map[string]string // "msg", "level" and the attributes
}

func (l *recordLog) Enabled(_ context.Context, lvl slog.Level) bool { return lvl >= l.min }
func (l *recordLog) WithAttrs([]slog.Attr) slog.Handler             { return l }
func (l *recordLog) WithGroup(string) slog.Handler                  { return l }
func (l *recordLog) Handle(_ context.Context, r slog.Record) error {
	m := map[string]string{"msg": r.Message, "level": r.Level.String()}
	r.Attrs(func(a slog.Attr) bool { m[a.Key] = a.Value.String(); return true })
	l.mu.Lock()
	l.recs = append(l.recs, m)
	l.mu.Unlock()
	return nil
}

// dropWarnings returns the warnings about dropped adverts.
func (l *recordLog) dropWarnings() []map[string]string {
	l.mu.Lock()
	defer l.mu.Unlock()
	var out []map[string]string
	for _, r := range l.recs {
		if r["msg"] == "vrrp: dropped advert" && r["level"] == "WARN" {
			out = append(out, r)
		}
	}
	return out
}

// TestDriverVRIDCollision: adverts of another virtual router with our VRID
// (other addresses, higher priority) leave the master as it is, are counted
// as vip_mismatch and warned about once a minute at most (virtual time).
func TestDriverVRIDCollision(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		f := newFakeKernel()
		in := testInstance(t, f, nil)
		logs := &recordLog{min: slog.LevelWarn}
		in.log = slog.New(logs)
		ctx, cancel := context.WithCancel(t.Context())
		defer cancel()
		go in.Run(ctx)
		time.Sleep(4 * time.Second)
		synctest.Wait()
		neighbour := peerAdvert(200)
		neighbour.Addrs = []netip.Addr{netip.MustParseAddr("10.0.0.200")}
		from := netip.MustParseAddr("10.0.0.9")
		for range 4 {
			f.rx <- packet(t, neighbour, from, 255)
			time.Sleep(time.Second)
		}
		synctest.Wait()
		st := in.Status()
		if st.State != Master || st.Transitions != 2 || st.Dropped["vip_mismatch"] != 4 || st.AdvertsReceived != 0 || !f.has("10.0.0.100/24") {
			t.Fatalf("after colliding adverts: %+v", st)
		}
		w := logs.dropWarnings()
		if len(w) != 1 || w[0]["reason"] != "vip_mismatch" || w[0]["advert_addrs"] != "[10.0.0.200]" || w[0]["vips"] != "[10.0.0.100 10.0.0.101]" {
			t.Fatalf("warnings %v", w)
		}
		// A minute after the first warning the next drop warns again,
		// with the three that were not logged.
		time.Sleep(time.Minute)
		f.rx <- packet(t, neighbour, from, 255)
		synctest.Wait()
		if w := logs.dropWarnings(); len(w) != 2 || w[1]["dropped_since_last_warning"] != "3" {
			t.Fatalf("warnings %v", w)
		}
	})
}

// TestDriverLowerPriorityStorm: fifty lower-priority adverts at once are
// each answered with an advert, but with one GARP burst, not fifty; the
// others are counted. The heal burst 1.1 s later still goes out.
func TestDriverLowerPriorityStorm(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		f := newFakeKernel()
		in := testInstance(t, f, nil)
		ctx, cancel := context.WithCancel(t.Context())
		defer cancel()
		go in.Run(ctx)
		time.Sleep(4 * time.Second)
		synctest.Wait()
		vip := netip.MustParseAddr("10.0.0.100")
		garps := func() int { f.mu.Lock(); defer f.mu.Unlock(); return f.garps[vip] }
		sent := in.Status().AdvertsSent
		if in.Status().State != Master || garps() != 5 {
			t.Fatalf("takeover: %+v, %d GARPs", in.Status(), garps())
		}
		for range 50 {
			f.rx <- packet(t, peerAdvert(50), netip.MustParseAddr("10.0.0.2"), 255)
		}
		synctest.Wait()
		st := in.Status()
		if garps() != 10 || st.GARPSuppressed != 49 || st.AdvertsSent != sent+50 || st.State != Master {
			t.Fatalf("after 50 lower adverts: %d GARPs, %+v", garps(), st)
		}
		time.Sleep(1100 * time.Millisecond)
		synctest.Wait()
		if garps() != 15 || in.Status().GARPSuppressed != 49 {
			t.Fatalf("heal burst: %d GARPs, %+v", garps(), in.Status())
		}
	})
}

// TestInPlace: notify, garp_* and track_interface change in place; what is
// on the wire (priority, interval, VIPs, ...) needs a new instance.
func TestInPlace(t *testing.T) {
	base := Config{Name: "vi1", Interface: "eth0", VRID: 51, Priority: 100, AdvertInterval: time.Second, Version: 3,
		GARPRepeat: 5, NotifyTimeout: 10 * time.Second, Preempt: true, VIPs: []netip.Prefix{netip.MustParsePrefix("10.0.0.100/24")}}
	for _, tc := range []struct {
		name string
		mod  func(*Config)
		want bool
	}{
		{"same", func(*Config) {}, true},
		{"notify", func(c *Config) { c.Notify = []string{"/bin/true"} }, true},
		{"notify timeout", func(c *Config) { c.NotifyTimeout = time.Second }, true},
		{"garp", func(c *Config) {
			c.GARPRepeat, c.GARPDelay, c.GARPRefresh, c.GARPInterval = 1, 0, time.Minute, time.Millisecond
		}, true},
		{"track", func(c *Config) { c.Track = []TrackInterface{{"eth1", -10}} }, true},
		{"track file", func(c *Config) { c.TrackFiles = []TrackFile{{Name: "drain", Weight: 1}} }, true},
		{"track script", func(c *Config) { c.TrackScripts = []TrackScript{{Name: "gw", Weight: -60}} }, true},
		{"priority", func(c *Config) { c.Priority = 101 }, false},
		{"interval", func(c *Config) { c.AdvertInterval = 2 * time.Second }, false},
		{"vips", func(c *Config) { c.VIPs = append(c.VIPs, netip.MustParsePrefix("10.0.0.101/24")) }, false},
		{"preempt", func(c *Config) { c.Preempt = false }, false},
		{"interface", func(c *Config) { c.Interface = "eth1" }, false},
		{"peers", func(c *Config) { c.UnicastPeers = []netip.Addr{netip.MustParseAddr("10.0.0.2")} }, false},
	} {
		c := base
		c.VIPs = slices.Clone(base.VIPs)
		tc.mod(&c)
		if got := InPlace(base, c); got != tc.want {
			t.Errorf("%s: InPlace %v, want %v", tc.name, got, tc.want)
		}
	}
}

// TestDriverTrackValues: a tracked value set before Run counts from the
// start; one set while running changes the priority or faults; a reload
// that stops tracking the file applies in place.
func TestDriverTrackValues(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		f := newFakeKernel()
		var cfg Config
		in := testInstance(t, f, func(c *Config) {
			c.Priority = 150
			c.TrackFiles = []TrackFile{{Name: "drain", Weight: 1}}
			cfg = *c
		})
		in.SetTrackFile("drain", -50)
		ctx, cancel := context.WithCancel(t.Context())
		defer cancel()
		go in.Run(ctx)
		time.Sleep(4 * time.Second)
		synctest.Wait()
		if st := in.Status(); st.State != Master || st.Priority != 100 {
			t.Fatalf("started with drain -50: %v %d, want MASTER 100", st.State, st.Priority)
		}
		in.SetTrackFile("drain", -300)
		synctest.Wait()
		if st := in.Status(); st.State != Fault {
			t.Fatalf("drain -300: %v, want FAULT", st.State)
		}
		cfg.TrackFiles = nil
		if err := in.Update(cfg); err != nil {
			t.Fatal(err)
		}
		time.Sleep(4 * time.Second)
		synctest.Wait()
		if st := in.Status(); st.State != Master || st.Priority != 150 {
			t.Fatalf("file no longer tracked: %v %d, want MASTER 150", st.State, st.Priority)
		}
	})
}

// TestDriverUpdateInPlace: a running master takes new GARP and notify
// settings without a transition; the GARP refresh it now has sends bursts.
func TestDriverUpdateInPlace(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		f := newFakeKernel()
		var cfg Config
		in := testInstance(t, f, func(c *Config) { c.Priority = 150; cfg = *c })
		ctx, cancel := context.WithCancel(t.Context())
		defer cancel()
		go in.Run(ctx)
		time.Sleep(4 * time.Second)
		synctest.Wait()
		before := in.Status()
		garps := f.garpCount()
		cfg.GARPRefresh, cfg.GARPRepeat = 2*time.Second, 1
		if err := in.Update(cfg); err != nil {
			t.Fatal(err)
		}
		time.Sleep(5 * time.Second)
		synctest.Wait()
		st := in.Status()
		if st.State != Master || st.Transitions != before.Transitions {
			t.Fatalf("after the update: %+v", st)
		}
		// Two refresh bursts (at +2 s and +4 s) of one GARP per VIP.
		if got := f.garpCount() - garps; got != 2*len(cfg.VIPs) {
			t.Errorf("%d GARPs after the update, want %d", got, 2*len(cfg.VIPs))
		}
	})
}
