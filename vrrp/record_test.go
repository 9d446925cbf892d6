package vrrp

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"slices"
	"sync"
	"testing"
	"testing/synctest"
	"time"
)

// vipLog is a VIP recorder that keeps what it heard, and whether the VIPs
// were already on the interface when it heard it.
type vipLog struct {
	f   *fakeKernel
	mu  sync.Mutex
	got []string
}

func (l *vipLog) record(iface string, vips []netip.Prefix, held bool) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.got = append(l.got, fmt.Sprintf("%s %v held=%v present=%v", iface, vips, held, l.f.has("10.0.0.100/24")))
}

func (l *vipLog) take() []string {
	l.mu.Lock()
	defer l.mu.Unlock()
	got := l.got
	l.got = nil
	return got
}

// failingRemove is an address set whose removals fail while fail is set.
type failingRemove struct {
	*fakeKernel
	fail bool
}

func (r *failingRemove) Remove(p netip.Prefix) error {
	r.mu.Lock()
	fail := r.fail
	r.mu.Unlock()
	if fail {
		return errors.New("remove refused")
	}
	return r.fakeKernel.Remove(p)
}

// TestDriverRecordsVIPs: the recorder hears of the VIPs before they are
// added (a crash right after the add leaves them recorded) and after they
// are all removed, not when a removal failed; the address adverts are sent
// from is never in the record, even when it is one of the VIPs.
func TestDriverRecordsVIPs(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		f := newFakeKernel()
		in := testInstance(t, f, nil)
		rec := &vipLog{f: f}
		WithVIPRecorder(rec.record)(in)
		addrs := &failingRemove{fakeKernel: f}
		in.open = func() (*kernel, error) {
			return &kernel{conn: f, addrs: addrs, garp: f, links: f, primary: netip.MustParseAddr("10.0.0.1"), ifindex: fakeIfindex}, nil
		}
		ctx, cancel := context.WithCancel(t.Context())
		done := make(chan error)
		go func() { done <- in.Run(ctx) }()
		time.Sleep(4 * time.Second)
		synctest.Wait()
		if in.Status().State != Master {
			t.Fatal("not master")
		}
		both := "[10.0.0.100/24 10.0.0.101/24]"
		if got := rec.take(); !slices.Equal(got, []string{"eth0 " + both + " held=true present=false"}) {
			t.Errorf("at takeover the recorder heard %q", got)
		}
		// A higher-priority peer: the VIPs go, then the record.
		f.rx <- packet(t, peerAdvert(200), netip.MustParseAddr("10.0.0.2"), 255)
		synctest.Wait()
		if got := rec.take(); !slices.Equal(got, []string{"eth0 " + both + " held=false present=false"}) {
			t.Errorf("on giving up the VIPs the recorder heard %q", got)
		}
		// Master again (the peer fell silent), then a removal fails at
		// shutdown: the record stays.
		time.Sleep(4 * time.Second)
		synctest.Wait()
		if got := rec.take(); len(got) != 1 || in.Status().State != Master {
			t.Fatalf("second takeover: %q %+v", got, in.Status())
		}
		addrs.mu.Lock()
		addrs.fail = true
		addrs.mu.Unlock()
		cancel()
		if err := <-done; err != nil {
			t.Fatal(err)
		}
		if got := rec.take(); len(got) != 0 {
			t.Errorf("after a failed removal the recorder heard %q", got)
		}
	})

	// An instance sending from one of its VIPs (unicast_src_ip) records the
	// others only: that address is the host's own.
	synctest.Test(t, func(t *testing.T) {
		f := newFakeKernel()
		in := testInstance(t, f, func(c *Config) { c.UnicastSrc = netip.MustParseAddr("10.0.0.101") })
		rec := &vipLog{f: f}
		WithVIPRecorder(rec.record)(in)
		ctx, cancel := context.WithCancel(t.Context())
		done := make(chan error)
		go func() { done <- in.Run(ctx) }()
		time.Sleep(4 * time.Second)
		synctest.Wait()
		cancel()
		if err := <-done; err != nil {
			t.Fatal(err)
		}
		want := []string{"eth0 [10.0.0.100/24] held=true present=false", "eth0 [10.0.0.100/24] held=false present=false"}
		if got := rec.take(); !slices.Equal(got, want) {
			t.Errorf("recorder heard %q, want %q", got, want)
		}
	})
}
