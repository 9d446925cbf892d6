package scaleout

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/vishvananda/netlink"

	"github.com/lvsha/lvsha/internal/scenarios/connsync"
	"github.com/lvsha/lvsha/internal/testenv/netns"
)

// The router: FRR's bgpd and zebra, and what the scenario reads of and
// changes on its routes.

// frrConfig: eBGP with every director, up to 8 paths (ECMP).
func (l *Lab) frrConfig() string {
	var b strings.Builder
	fmt.Fprintf(&b, "frr defaults datacenter\nhostname r\nrouter bgp 65000\n bgp router-id %v\n no bgp ebgp-requires-policy\n", Router.Addr())
	for i := 1; i <= l.o.Directors; i++ {
		fmt.Fprintf(&b, " neighbor %v remote-as 65001\n", DirectorAddr(i).Addr())
	}
	b.WriteString(" address-family ipv4 unicast\n  maximum-paths 8\n exit-address-family\n")
	return b.String()
}

// startFRR runs zebra and bgpd in the router's namespace. They drop to
// user frr: the guest has no such user until frrUser adds it.
func (l *Lab) startFRR() error {
	uid, gid, err := frrUser()
	if err != nil {
		return err
	}
	dir := filepath.Join(l.o.WorkDir, "frr")
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return err
	}
	if err := os.Chown(dir, uid, gid); err != nil {
		return err
	}
	for name, text := range map[string]string{"bgpd.conf": l.frrConfig(), "zebra.conf": "hostname r\n"} {
		if err := os.WriteFile(filepath.Join(dir, name), []byte(text), 0o644); err != nil {
			return err
		}
	}
	zsock := filepath.Join(dir, "zserv.api")
	for _, daemon := range []string{Zebra, BGPD} {
		base := filepath.Base(daemon)
		cmd := exec.Command(daemon, "-u", "frr", "-g", "frr", "-z", zsock, "--vty_socket", dir,
			"-i", filepath.Join(dir, base+".pid"), "-f", filepath.Join(dir, base+".conf"), "--log", "stdout")
		cmd.Stdout, cmd.Stderr = l.frrLog, l.frrLog
		if err := l.Router.Start(cmd); err != nil {
			return fmt.Errorf("start %s: %w", base, err)
		}
		l.frr = append(l.frr, cmd)
		if daemon == Zebra && !netns.WaitFor(30*time.Second, 50*time.Millisecond, func() bool { _, err := os.Stat(zsock); return err == nil }) {
			return fmt.Errorf("zebra did not start:\n%s", l.frrLog.String())
		}
	}
	return nil
}

// FRRLog is what zebra and bgpd printed.
func (l *Lab) FRRLog() string { return l.frrLog.String() }

var frrOnce sync.Once

// frrUser gives the guest (a busybox initramfs without /etc/passwd) the
// frr user and groups FRR drops to; on a host it looks them up.
func frrUser() (int, int, error) {
	const uid, gid = 104, 109
	var err error
	frrOnce.Do(func() {
		if _, serr := os.Stat("/etc/passwd"); serr == nil {
			return
		}
		err = errors.Join(os.MkdirAll("/etc", 0o755),
			os.WriteFile("/etc/passwd", []byte("root:x:0:0:root:/root:/bin/sh\nfrr:x:104:109:frr:/nonexistent:/bin/false\n"), 0o644),
			os.WriteFile("/etc/group", []byte("root:x:0:\nfrrvty:x:108:frr\nfrr:x:109:\n"), 0o644))
	})
	if err != nil {
		return 0, 0, fmt.Errorf("frr user: %w", err)
	}
	b, err := os.ReadFile("/etc/passwd")
	if err != nil {
		return 0, 0, err
	}
	for _, line := range strings.Split(string(b), "\n") {
		f := strings.Split(line, ":")
		if len(f) > 3 && f[0] == "frr" {
			u, err1 := strconv.Atoi(f[2])
			g, err2 := strconv.Atoi(f[3])
			if err := errors.Join(err1, err2); err != nil {
				return 0, 0, fmt.Errorf("frr in /etc/passwd: %w", err)
			}
			return u, g, nil
		}
	}
	return uid, gid, fmt.Errorf("no frr user in /etc/passwd (install frr)")
}

// NextHops are the next hops of the router's kernel route to the VIP,
// sorted ("10.0.0.1" ...); none when it has no route.
func (l *Lab) NextHops() ([]string, error) {
	h, err := l.Router.Handle()
	if err != nil {
		return nil, err
	}
	defer h.Close()
	rs, err := h.RouteListFiltered(netlink.FAMILY_V4, &netlink.Route{Dst: &net.IPNet{IP: VIP.AsSlice(), Mask: net.CIDRMask(32, 32)}, Table: 254},
		netlink.RT_FILTER_DST|netlink.RT_FILTER_TABLE)
	if err != nil {
		return nil, fmt.Errorf("router: route to %v: %w", VIP, err)
	}
	var hops []string
	for _, r := range rs {
		if r.Gw != nil {
			hops = append(hops, r.Gw.String())
		}
		for _, nh := range r.MultiPath {
			hops = append(hops, nh.Gw.String())
		}
	}
	slices.Sort(hops)
	return hops, nil
}

// GuestIP is where the VM carries iproute2's ip (busybox's takes /bin/ip).
const GuestIP = "/usr/lib/lvsha-test/ip"

// IPRoute is `ip route show VIP` as the router's iproute2 prints it (for
// the log; NextHops, the same kernel route over netlink, is what the
// tests compare).
func (l *Lab) IPRoute() string {
	ip := GuestIP
	if _, err := os.Stat(ip); err != nil {
		ip = "ip"
	}
	out, err := l.Router.Run(ip, "route", "show", VIP.String())
	if err != nil {
		return err.Error()
	}
	return strings.TrimSpace(out)
}

// Hops is the sorted next-hop list for directors is (1-based).
func Hops(is ...int) string {
	var s []string
	for _, i := range is {
		s = append(s, DirectorAddr(i).Addr().String())
	}
	slices.Sort(s)
	return strings.Join(s, " ")
}

// WaitHops waits until the router's route to the VIP has exactly the next
// hops want (Hops(...); "" for no route).
func (l *Lab) WaitHops(ctx context.Context, want string, timeout time.Duration) (time.Duration, error) {
	return connsync.WaitFor(ctx, "next hops "+want, timeout, func() error {
		hops, err := l.NextHops()
		if err != nil {
			return err
		}
		if got := strings.Join(hops, " "); got != want {
			return fmt.Errorf("next hops %q", got)
		}
		return nil
	})
}

// PinVia makes the router send the client's traffic through director i
// only (a policy rule and a table of its own), i == 0 undoes it.
func (l *Lab) PinVia(i int) error {
	h, err := l.Router.Handle()
	if err != nil {
		return err
	}
	defer h.Close()
	const table, prio = 100, 100
	rule := netlink.NewRule()
	rule.Table, rule.Priority = table, prio
	rule.Src = &net.IPNet{IP: ClientAddr.Addr().AsSlice(), Mask: net.CIDRMask(32, 32)}
	if i == 0 {
		if err := h.RuleDel(rule); err != nil {
			return fmt.Errorf("router: delete the rule: %w", err)
		}
		return nil
	}
	r := &netlink.Route{Dst: &net.IPNet{IP: VIP.AsSlice(), Mask: net.CIDRMask(32, 32)}, Gw: DirectorAddr(i).Addr().AsSlice(), Table: table}
	if err := h.RouteReplace(r); err != nil {
		return fmt.Errorf("router: pin route via d%d: %w", i, err)
	}
	rules, err := h.RuleList(netlink.FAMILY_V4)
	if err != nil {
		return fmt.Errorf("router: rules: %w", err)
	}
	for _, x := range rules {
		if x.Priority == prio {
			return nil
		}
	}
	if err := h.RuleAdd(rule); err != nil {
		return fmt.Errorf("router: add the rule: %w", err)
	}
	return nil
}
