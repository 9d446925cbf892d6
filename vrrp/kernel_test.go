package vrrp

import (
	"context"
	"log/slog"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"strings"
	"syscall"
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

// TestOpenKernelWithoutRawSockets: without CAP_NET_RAW the raw socket
// fails; openKernel must return that error (closing what it opened), not
// panic on a nil socket. Run as root, the test runs itself as nobody.
func TestOpenKernelWithoutRawSockets(t *testing.T) {
	if os.Geteuid() == 0 {
		cmd := exec.Command("/proc/self/exe", "-test.run=^TestOpenKernelWithoutRawSockets$", "-test.count=1", "-test.v")
		cmd.SysProcAttr = &syscall.SysProcAttr{Credential: &syscall.Credential{Uid: 65534, Gid: 65534}}
		out, err := cmd.CombinedOutput()
		if err != nil || !strings.Contains(string(out), "--- PASS") {
			t.Fatalf("as nobody: %v\n%s", err, out)
		}
		t.Logf("as nobody:\n%s", out)
		return
	}
	for _, c := range []Config{
		{Interface: "lo", VIPs: []netip.Prefix{netip.MustParsePrefix("127.0.0.2/8")}},
		{Interface: "lo", VIPs: []netip.Prefix{netip.MustParsePrefix("2001:db8::1/128")}, UnicastSrc: netip.MustParseAddr("::1")},
	} {
		k, err := openKernel(&c, slog.New(slog.DiscardHandler))
		if err == nil {
			k.close()
			t.Skip("raw sockets are allowed here: nothing to test") // not root, but with CAP_NET_RAW
		}
		t.Logf("%s: %v", c.VIPs[0], err)
	}
}
