package vrrp

import (
	"context"
	"log/slog"
	"net"
	"testing"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
)

// TestLinkWatchResubscribes: netlink closes a subscription's channel on
// error; the watcher must subscribe again (listing the current state) and
// keep reporting.
func TestLinkWatchResubscribes(t *testing.T) {
	update := func(name string, up bool, typ uint16) netlink.LinkUpdate {
		a := netlink.LinkAttrs{Name: name, OperState: netlink.OperDown}
		if up {
			a.Flags, a.OperState = net.FlagUp, netlink.OperUp
		}
		u := netlink.LinkUpdate{Link: &netlink.Device{LinkAttrs: a}}
		u.Header.Type = typ
		return u
	}
	calls := 0
	n := &nlLinks{log: slog.New(slog.DiscardHandler)}
	n.subscribe = func(ch chan<- netlink.LinkUpdate, done <-chan struct{}, o netlink.LinkSubscribeOptions) error {
		calls++
		if !o.ListExisting {
			t.Error("subscription without ListExisting would miss changes between subscriptions")
		}
		c := calls
		go func() {
			switch c {
			case 1:
				ch <- update("other", false, unix.RTM_NEWLINK) // not watched
				ch <- update("eth0", false, unix.RTM_NEWLINK)
				close(ch) // the subscription dies
			case 2:
				ch <- update("eth0", true, unix.RTM_NEWLINK)
				ch <- update("eth1", true, unix.RTM_DELLINK) // deleted = down
			}
		}()
		return nil
	}
	ctx, cancel := context.WithCancel(t.Context())
	defer cancel()
	out := make(chan linkState)
	go n.Watch(ctx, []string{"eth0", "eth1"}, out)
	want := []linkState{{Name: "eth0", Up: false}, {Name: "eth0", Up: true}, {Name: "eth1", Up: false}}
	for i, w := range want {
		if got := <-out; got != w {
			t.Fatalf("event %d = %+v, want %+v", i, got, w)
		}
	}
	if calls != 2 {
		t.Errorf("subscribed %d times, want 2", calls)
	}
}
