package e2e

import (
	"context"
	"fmt"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"

	"github.com/lvsha/lvsha/internal/testenv/lab"
	"github.com/lvsha/lvsha/internal/testenv/netns"
	"github.com/lvsha/lvsha/lvs"
)

// The via_vip scenario (README, "Checks through the VIP"): two directors,
// web1 set up right and web2 listening on its own address only. Service
// VIP:80 checks both through the VIP; service VIP:81 checks the same webs
// the usual way, to their own address (port 80): the negative control
// that shows what via_vip adds. The VIP is a /32: the master's kernel then
// picks the VIP itself as the source of connections to it (a secondary
// address in the director's own subnet, like the examples' /24, gets the
// primary address as source), the case where the check's bind to the
// director's own address matters.

const viaCtlPort = 81

func viaConfig(t Tuning, priority int, web2 bool) string {
	var b strings.Builder
	fmt.Fprintf(&b, "[global]\ncontrol_socket = %q\nstate_dir = %q\narp_leak = \"fail\"\n\n", t.ControlSocket, t.StateDir)
	for _, in := range []struct{ name, vip string }{{"VI_4", VIP.String() + "/32"}, {"VI_6", VIP6.String() + "/64"}} {
		fmt.Fprintf(&b, "[[vrrp_instance]]\nname = %q\ninterface = %q\nvirtual_router_id = 51\npriority = %d\nadvert_interval = %q\nvirtual_ipaddress = [%q]\n\n",
			in.name, t.Interface, priority, t.AdvertInterval, in.vip)
	}
	for _, fam := range []struct {
		vip  netip.Addr
		webs []netip.Addr
	}{{VIP, []netip.Addr{Web1Addr.Addr(), Web2Addr.Addr()}}, {VIP6, []netip.Addr{web6(Web1Addr), web6(Web2Addr)}}} {
		webs := fam.webs
		if !web2 {
			webs = webs[:1]
		}
		for _, svc := range []struct {
			port uint16
			via  bool
		}{{ServicePort, true}, {viaCtlPort, false}} {
			fmt.Fprintf(&b, "[[virtual_server]]\naddress = %q\nscheduler = \"rr\"\n", netip.AddrPortFrom(fam.vip, svc.port).String())
			fmt.Fprintf(&b, "[virtual_server.check]\ntype = \"tcp\"\nport = %d\nvia_vip = %v\ninterval = %q\ntimeout = %q\nfall = %d\nrise = %d\n",
				ServicePort, svc.via, t.CheckInterval, t.CheckTimeout, t.Fall, t.Rise)
			for _, w := range webs {
				fmt.Fprintf(&b, "[[virtual_server.real_server]]\naddress = %q\n", netip.AddrPortFrom(w, svc.port).String())
			}
			b.WriteString("\n")
		}
	}
	return b.String()
}

// web6 is a host's IPv6 address in the dual-stack lab (same host number).
func web6(p netip.Prefix) netip.Addr {
	return netip.MustParseAddr(fmt.Sprintf("%s%d", dualPrefix6, p.Addr().As4()[3]))
}

// RunViaVIP runs the via_vip scenario in the VM; logf narrates.
func RunViaVIP(ctx context.Context, lvsha, workDir string, logf func(string, ...any)) error {
	if _, err := os.Stat("/proc/net/ip_vs"); err != nil {
		return fmt.Errorf("no IPVS in this kernel (the scenario runs in the VM): %w", err)
	}
	var cleanups []func()
	defer func() {
		for i := len(cleanups) - 1; i >= 0; i-- {
			cleanups[i]()
		}
	}()
	l, err := netns.NewLab(netns.UniquePrefix("via"))
	if err != nil {
		return err
	}
	cleanups = append(cleanups, func() { _ = l.Close() })
	nodes := map[string]*netns.Node{}
	for _, n := range []struct {
		role string
		addr netip.Prefix
	}{{"director1", Dir1Addr}, {"director2", Dir2Addr}, {"web1", Web1Addr}, {"web2", Web2Addr}} {
		node, err := l.AddNode(n.role, n.addr)
		if err != nil {
			return err
		}
		if err := addAddr6(node, netip.PrefixFrom(web6(n.addr), 64)); err != nil {
			return fmt.Errorf("%s: %w", n.role, err)
		}
		nodes[n.role] = node
	}
	web1, web2 := nodes["web1"], nodes["web2"]
	for _, w := range []*netns.Node{web1, web2} {
		if err := lab.RealServer(w.NS, VIP); err != nil {
			return fmt.Errorf("%s: %w", w.Role, err)
		}
		if err := addVIP6Lo(w); err != nil {
			return fmt.Errorf("%s: %w", w.Role, err)
		}
	}
	// web1 listens on every address, web2 on its own only: both have the
	// VIP on lo, but a connection to VIP:80 finds nothing on web2.
	for _, s := range []struct {
		node *netns.Node
		addr netip.Addr
	}{{web1, netip.IPv6Unspecified()}, {web2, Web2Addr.Addr()}, {web2, web6(Web2Addr)}} {
		srv, err := lab.ServeText(s.node.NS, netip.AddrPortFrom(s.addr, ServicePort), "this is "+s.node.Role+"\n")
		if err != nil {
			return err
		}
		cleanups = append(cleanups, func() { _ = srv.Close() })
	}
	logf("web1: VIPs on lo, HTTP on *:80; web2: VIPs on lo, HTTP on %v:80 and [%v]:80 only", Web2Addr.Addr(), web6(Web2Addr))

	t := DefaultTuning()
	dirs := map[string]*director{}
	for role, prio := range map[string]int{"director1": 150, "director2": 100} {
		d := newDirector(role, nodes[role], lvsha, workDir)
		d.socket = filepath.Join("/run/lvsha", role+"-via.sock")
		tu := t
		tu.ControlSocket, tu.StateDir = d.socket, filepath.Join(workDir, role+"-via-state")
		d.config = filepath.Join(workDir, role+"-via.toml")
		if err := d.writeConfig(viaConfig(tu, prio, true)); err != nil {
			return err
		}
		if out, err := d.checkConfig(); err != nil {
			return fmt.Errorf("%w\n%s", err, out)
		}
		if err := d.start(); err != nil {
			return err
		}
		cleanups = append(cleanups, func() { d.stop(5 * time.Second) })
		dirs[role] = d
	}
	d1, d2 := dirs["director1"], dirs["director2"]
	if _, err := waitFor(ctx, "director1 MASTER, director2 BACKUP", 20*time.Second, 20*time.Millisecond, func() error {
		return instancesInN(ctx, 2, map[*director]string{d1: "MASTER", d2: "BACKUP"})
	}); err != nil {
		return err
	}
	// expect waits until both directors (master: VIP local; backup: not)
	// see each real server as wanted.
	expect := func(what string, want map[string]string) error {
		for _, d := range []*director{d1, d2} {
			_, err := waitFor(ctx, d.name+": "+what, 4*t.FailBound()+5*time.Second, 50*time.Millisecond, func() error {
				for addr, health := range want {
					weight := 1
					if health == "down" {
						weight = 0
					}
					if err := realsIn(ctx, d, addr, health, weight); err != nil {
						return err
					}
					// Not just the initial state: a check has said so.
					st, err := d.status(ctx)
					if err != nil {
						return err
					}
					if r, _ := findReal(st, addr); (r.LastResult == "ok") != (health == "up") || r.LastResult == "" {
						return fmt.Errorf("%s: %s's last check: %q", d.name, addr, r.LastResult)
					}
				}
				return nil
			})
			if err != nil {
				st, _ := d.status(ctx)
				return fmt.Errorf("%w\n%s\n%s", err, describeChecks(st), d.logTail(20))
			}
		}
		return nil
	}
	w1, w2 := fmt.Sprintf("%v:%d", Web1Addr.Addr(), ServicePort), fmt.Sprintf("%v:%d", Web2Addr.Addr(), ServicePort)
	c1, c2 := fmt.Sprintf("%v:%d", Web1Addr.Addr(), viaCtlPort), fmt.Sprintf("%v:%d", Web2Addr.Addr(), viaCtlPort)
	v6 := func(p netip.Prefix, port uint16) string { return netip.AddrPortFrom(web6(p), port).String() }
	if err := expect("web2 down through the VIP, up checked directly; web1 up both ways (IPv4 and IPv6)",
		map[string]string{w1: "up", w2: "down", c1: "up", c2: "up",
			v6(Web1Addr, ServicePort): "up", v6(Web2Addr, ServicePort): "down", v6(Web1Addr, viaCtlPort): "up", v6(Web2Addr, viaCtlPort): "up"}); err != nil {
		return err
	}
	logf("PASS: on the master and the backup, over IPv4 and IPv6, web2 (listening on its own addresses only) fails its via_vip check (weight 0) and passes the direct one; web1 passes both")

	// web1 loses the VIP from lo: clients' packets for the VIP are dropped
	// there, which only the check through the VIP sees.
	vipLo := &netlink.Addr{IPNet: &net.IPNet{IP: VIP.AsSlice(), Mask: net.CIDRMask(32, 32)}}
	loDo := func(add bool) error {
		h, err := web1.Handle()
		if err != nil {
			return err
		}
		defer h.Close()
		lo, err := h.LinkByName("lo")
		if err != nil {
			return err
		}
		if add {
			return h.AddrAdd(lo, vipLo)
		}
		return h.AddrDel(lo, vipLo)
	}
	if err := loDo(false); err != nil {
		return fmt.Errorf("web1: remove the VIP from lo: %w", err)
	}
	if err := expect("web1 down through the VIP without the VIP on lo, up checked directly",
		map[string]string{w1: "down", c1: "up"}); err != nil {
		return err
	}
	logf("PASS: web1 without the VIP on lo: via_vip check fails on both directors (weight 0), the direct check still passes")
	if err := loDo(true); err != nil {
		return fmt.Errorf("web1: put the VIP back on lo: %w", err)
	}
	if err := expect("web1 up again with the VIP back on lo", map[string]string{w1: "up", c1: "up"}); err != nil {
		return err
	}
	logf("PASS: web1 with the VIP back on lo is up again")

	// web1 loses its ARP suppression: it answers ARP for the VIP, and
	// clients could bypass the director. The master's probe (every 10 s)
	// reports it with web1's MAC and address; arp_leak = "fail" takes web1
	// out of every service of the master's IPVS (the backup, which does
	// not probe, keeps it). Fixing it brings web1 back.
	setARP := func(ignore, announce string) error {
		for _, ifc := range []string{"all", "eth0"} {
			if err := lab.Sysctl(web1.NS, "net/ipv4/conf/"+ifc+"/arp_ignore", ignore); err != nil {
				return err
			}
			if err := lab.Sysctl(web1.NS, "net/ipv4/conf/"+ifc+"/arp_announce", announce); err != nil {
				return err
			}
		}
		return nil
	}
	leakIs := func(want bool) func() error {
		return func() error {
			st, err := d1.status(ctx)
			if err != nil {
				return err
			}
			found := false
			for _, l := range st.ARPLeaks {
				if l.VIP == VIP.String() && l.MAC == web1.MAC.String() && l.IP == Web1Addr.Addr().String() {
					found = true
				}
			}
			if found != want {
				return fmt.Errorf("director1: ARP leaks %+v", st.ARPLeaks)
			}
			for _, a := range []string{w1, c1} {
				r, _ := findReal(st, a)
				if failed := strings.HasPrefix(r.FailedBy, "arp leak"); failed != want || (r.KernelWeight == 0) != want {
					return fmt.Errorf("director1: %s failed_by %q, kernel weight %d", a, r.FailedBy, r.KernelWeight)
				}
			}
			return nil
		}
	}
	if err := setARP("0", "0"); err != nil {
		return fmt.Errorf("web1: ARP suppression off: %w", err)
	}
	if _, err := waitFor(ctx, "director1 reports web1's ARP leak and fails it", 30*time.Second, 100*time.Millisecond, leakIs(true)); err != nil {
		return fmt.Errorf("%w\n%s", err, d1.logTail(20))
	}
	if err := realsIn(ctx, d2, w1, "up", 1); err != nil {
		return fmt.Errorf("the backup, which does not probe, failed web1 too: %w", err)
	}
	logf("PASS: web1 answering ARP for the VIP is reported by the master with its MAC and address, and arp_leak = \"fail\" puts it at weight 0 in both services")
	if err := setARP("1", "2"); err != nil {
		return fmt.Errorf("web1: ARP suppression back: %w", err)
	}
	if _, err := waitFor(ctx, "director1 clears web1's ARP leak", 30*time.Second, 100*time.Millisecond, leakIs(false)); err != nil {
		return err
	}
	logf("PASS: with ARP suppression back, the report clears and web1 is back at weight 1")

	// A reload without web2 removes its fwmark service.
	st, err := d1.status(ctx)
	if err != nil {
		return err
	}
	r1, _ := findReal(st, w1)
	r2, _ := findReal(st, w2)
	if r1.ViaMark == 0 || r2.ViaMark == 0 || r1.ViaMark == r2.ViaMark {
		return fmt.Errorf("via_vip marks %#x and %#x: want two different ones", r1.ViaMark, r2.ViaMark)
	}
	for _, m := range []uint32{r1.ViaMark, r2.ViaMark} {
		if ok, err := hasFWMark(d1.node.NS, m); !ok {
			return fmt.Errorf("director1: fwmark service %#x not in the kernel: %v", m, err)
		}
	}
	tu := t
	tu.ControlSocket, tu.StateDir = d1.socket, filepath.Join(workDir, "director1-via-state")
	if err := d1.writeConfig(viaConfig(tu, 150, false)); err != nil {
		return err
	}
	if err := d1.signal(1); err != nil { // SIGHUP
		return err
	}
	if _, err := waitFor(ctx, "director1: web2's fwmark service gone after the reload", 10*time.Second, 50*time.Millisecond, func() error {
		if ok, _ := hasFWMark(d1.node.NS, r2.ViaMark); ok {
			return fmt.Errorf("fwmark %#x still there", r2.ViaMark)
		}
		if ok, err := hasFWMark(d1.node.NS, r1.ViaMark); !ok {
			return fmt.Errorf("web1's fwmark %#x gone (%v)", r1.ViaMark, err)
		}
		return nil
	}); err != nil {
		return err
	}
	logf("PASS: a reload without web2 removed its fwmark service %#x and kept web1's %#x", r2.ViaMark, r1.ViaMark)
	return nil
}

// addVIP6Lo puts the IPv6 VIP on the node's lo as /128 without DAD, as
// `lvsha realserver up` does.
func addVIP6Lo(n *netns.Node) error {
	h, err := n.Handle()
	if err != nil {
		return err
	}
	defer h.Close()
	lo, err := h.LinkByName("lo")
	if err != nil {
		return err
	}
	return h.AddrAdd(lo, &netlink.Addr{IPNet: &net.IPNet{IP: VIP6.AsSlice(), Mask: net.CIDRMask(128, 128)}, Flags: unix.IFA_F_NODAD})
}

// instancesInN is instancesIn for directors with n VRRP instances.
func instancesInN(ctx context.Context, n int, want map[*director]string) error {
	for d, state := range want {
		st, err := d.status(ctx)
		if err != nil {
			return err
		}
		if len(st.VRRP) != n {
			return fmt.Errorf("%s has %d instances", d.name, len(st.VRRP))
		}
		for _, v := range st.VRRP {
			if v.State != state {
				return fmt.Errorf("%s: %s is %s", d.name, v.Name, v.State)
			}
		}
	}
	return nil
}

// hasFWMark says whether the namespace's IPVS table has fwmark service m
// (asked over netlink).
func hasFWMark(ns *netns.NS, m uint32) (bool, error) {
	k, err := lvs.OpenIPVS(ns.Path())
	if err != nil {
		return false, err
	}
	defer k.Close()
	svcs, err := k.Services()
	if err != nil {
		return false, err
	}
	var keys []string
	for _, s := range svcs {
		if s.Key.FWMark == m {
			return true, nil
		}
		keys = append(keys, s.Key.String())
	}
	return false, fmt.Errorf("the table has %s", strings.Join(keys, ", "))
}

// readServiceStats reads the counters of one TCP service of the
// namespace's IPVS table (over netlink, like ipvsadm -Ln --stats).
func readServiceStats(ns *netns.NS, addr netip.AddrPort) (ipvsStats, error) {
	k, err := lvs.OpenIPVS(ns.Path())
	if err != nil {
		return ipvsStats{}, err
	}
	defer k.Close()
	svcs, err := k.Services()
	if err != nil {
		return ipvsStats{}, err
	}
	for _, s := range svcs {
		if s.Key.Addr == addr && s.Key.Proto == lvs.TCP {
			st := s.Stats
			return ipvsStats{Conns: uint64(st.Conns), InPkts: uint64(st.PacketsIn), OutPkts: uint64(st.PacketsOut), InBytes: st.BytesIn, OutBytes: st.BytesOut}, nil
		}
	}
	return ipvsStats{}, fmt.Errorf("%s: no service tcp %v", ns.Name, addr)
}
