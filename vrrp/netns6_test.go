package vrrp

import (
	"encoding/json"
	"fmt"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/lvsha/lvsha/internal/director/control"
	"github.com/lvsha/lvsha/internal/testenv/netns"
	"github.com/mdlayher/ndp"
	mdpacket "github.com/mdlayher/packet"
	"github.com/vishvananda/netlink"
	"golang.org/x/net/ipv6"
	"golang.org/x/sys/unix"
)

// The IPv6 namespace tests: the lab of the IPv4 ones (a, b, client on one
// bridge, the same MACs), each node also given an address of
// 2001:db8:94::/64, and an instance with an IPv6 VIP.

var (
	labVIP6       = netip.MustParsePrefix("2001:db8:94::200/64")
	addr6         = map[string]netip.Prefix{"a": netip.MustParsePrefix("2001:db8:94::2/64"), "b": netip.MustParsePrefix("2001:db8:94::3/64"), "c": netip.MustParsePrefix("2001:db8:94::10/64"), "evil": netip.MustParsePrefix("2001:db8:94::66/64")}
	noAnnounceEnv = "LVSHA_VRRP_CHILD_NO_ANNOUNCE"
)

// addIPv6 gives node's eth0 its IPv6 address (without DAD) and waits until
// its link-local address is out of DAD: adverts are sent from it.
func addIPv6(t *testing.T, node *netns.Node) {
	t.Helper()
	if _, err := node.Run("ip", "-6", "addr", "add", addr6[node.Role].String(), "dev", "eth0", "nodad"); err != nil {
		t.Fatal(err)
	}
	waitFor(t, node.Role+"'s link-local address out of DAD", 5*time.Second, func() bool {
		out, err := node.Run("ip", "-6", "addr", "show", "dev", "eth0", "tentative")
		return err == nil && strings.TrimSpace(out) == "" && linkLocal(t, node).IsValid()
	})
}

func newPair6(t *testing.T) *pair {
	t.Helper()
	p := newPair(t)
	for _, n := range []*netns.Node{p.a, p.b, p.client} {
		addIPv6(t, n)
	}
	return p
}

func labConfig6(name string, prio uint8) Config {
	c := labConfig(name, prio)
	c.VIPs = []netip.Prefix{labVIP6}
	return c
}

// addrs6 lists the IPv6 addresses of node's eth0 with their flags.
func addrs6(t *testing.T, node *netns.Node) []netlink.Addr {
	t.Helper()
	h, err := node.Handle()
	if err != nil {
		t.Fatal(err)
	}
	defer h.Close()
	l, err := h.LinkByName("eth0")
	if err != nil {
		t.Fatal(err)
	}
	list, err := h.AddrList(l, netlink.FAMILY_V6)
	if err != nil {
		t.Fatal(err)
	}
	return list
}

func linkLocal(t *testing.T, node *netns.Node) netip.Addr {
	t.Helper()
	for _, a := range addrs6(t, node) {
		if ip, _ := netip.AddrFromSlice(a.IP); ip.IsLinkLocalUnicast() {
			return ip
		}
	}
	return netip.Addr{}
}

// holds6 returns node's eth0 address vip, if it has it.
func holds6(t *testing.T, node *netns.Node, vip netip.Addr) (netlink.Addr, bool) {
	t.Helper()
	for _, a := range addrs6(t, node) {
		if ip, _ := netip.AddrFromSlice(a.IP); ip == vip {
			return a, true
		}
	}
	return netlink.Addr{}, false
}

func mastered6(t *testing.T, m, o *director, timeout time.Duration) {
	t.Helper()
	vip := labVIP6.Addr()
	waitFor(t, m.node.Role+" MASTER holding the IPv6 VIP", timeout, func() bool {
		_, mh := holds6(t, m.node, vip)
		_, oh := holds6(t, o.node, vip)
		return mh && !oh && (!m.ours || m.Status().State == Master) && (!o.ours || o.Status().State != Master)
	})
}

// neighMAC6 is the MAC of the client's usable neighbour entry for ip
// (`ip -6 neigh`), nil without one.
func neighMAC6(t *testing.T, node *netns.Node, ip netip.Addr) net.HardwareAddr {
	t.Helper()
	h, err := node.Handle()
	if err != nil {
		t.Fatal(err)
	}
	defer h.Close()
	list, err := h.NeighList(0, netlink.FAMILY_V6)
	if err != nil {
		return nil
	}
	for _, e := range list {
		if a, _ := netip.AddrFromSlice(e.IP); a == ip && len(e.HardwareAddr) > 0 &&
			e.State&(netlink.NUD_INCOMPLETE|netlink.NUD_FAILED) == 0 {
			return e.HardwareAddr
		}
	}
	return nil
}

// clientResolves6 pings the VIP from the client until its neighbour entry
// for it is mac (resolution by solicitation, or an advertisement).
func (p *pair) clientResolves6(t *testing.T, mac net.HardwareAddr, timeout time.Duration) {
	t.Helper()
	vip := labVIP6.Addr()
	var got net.HardwareAddr
	if !netns.WaitFor(timeout, 50*time.Millisecond, func() bool {
		_, _ = p.client.Run("ping", "-6", "-c1", "-W1", vip.String())
		got = neighMAC6(t, p.client, vip)
		return got.String() == mac.String()
	}) {
		t.Fatalf("client's neighbour entry for %s is %v, want %v", vip, got, mac)
	}
}

// clientFollows6 waits, sending nothing, until the client's neighbour
// entry for the VIP is mac: only an unsolicited advertisement moves it
// (Linux updates an existing entry from an NA with Override set).
func (p *pair) clientFollows6(t *testing.T, mac net.HardwareAddr, timeout time.Duration) {
	t.Helper()
	vip := labVIP6.Addr()
	var got net.HardwareAddr
	if !netns.WaitFor(timeout, 10*time.Millisecond, func() bool {
		got = neighMAC6(t, p.client, vip)
		return got.String() == mac.String()
	}) {
		out, _ := p.client.Run("ip", "-6", "neigh")
		t.Fatalf("client's neighbour entry for %s is %v, want %v without a solicitation:\n%s", vip, got, mac, out)
	}
}

// TestNetnsIPv6ElectionAndFailover: two lvsha instances with an IPv6 VIP
// elect over ff02::12 from their link-local addresses; the VIP is added
// without DAD and moves on link down, SIGKILL and SIGTERM; the client's
// neighbour entry follows each takeover by the unsolicited NAs alone.
func TestNetnsIPv6ElectionAndFailover(t *testing.T) {
	for _, s := range starters {
		t.Run(s.name, func(t *testing.T) { testIPv6ElectionAndFailover(t, s.start) })
	}
}

func testIPv6ElectionAndFailover(t *testing.T, start starter) {
	p := newPair6(t)
	llA, llB := linkLocal(t, p.a), linkLocal(t, p.b)
	vip := labVIP6.Addr()
	a := start(t, p.a, labConfig6("a", 150))
	b := start(t, p.b, labConfig6("b", 100))
	mastered6(t, a, b, 5*time.Second)
	waitFor(t, "b BACKUP hearing a from its link-local address", 3*time.Second, func() bool {
		st := b.Status()
		return st.State == Backup && st.Master == llA && st.AdvertsReceived > 0
	})
	if ad, _ := holds6(t, p.a, vip); ad.Flags&unix.IFA_F_NODAD == 0 || ad.Flags&unix.IFA_F_TENTATIVE != 0 {
		t.Errorf("a's VIP flags %#x: want nodad, not tentative", ad.Flags)
	}
	p.clientResolves6(t, p.a.MAC, 3*time.Second)

	t.Log("link down on a: b takes over, its NAs move the client's entry")
	if err := p.lab.SetPort("a", false); err != nil {
		t.Fatal(err)
	}
	mastered6(t, b, a, 3*time.Second)
	p.clientFollows6(t, p.b.MAC, time.Second)

	t.Log("link back: a preempts")
	if err := p.lab.SetPort("a", true); err != nil {
		t.Fatal(err)
	}
	mastered6(t, a, b, 5*time.Second)
	p.clientFollows6(t, p.a.MAC, time.Second)

	t.Log("SIGKILL a: b takes over after Master_Down_Interval")
	a.stop(syscall.SIGKILL)
	waitFor(t, "b MASTER", 3*time.Second, func() bool { return b.Status().State == Master })
	p.clientFollows6(t, p.b.MAC, time.Second)
	if a.conf != "" {
		// The daemon recorded the VIP it held; `lvsha cleanup` (the
		// unit's ExecStopPost) removes it after the crash.
		if _, held := holds6(t, p.a, vip); !held {
			t.Fatal("no leftover VIP on a after SIGKILL")
		}
		if out, err := p.a.Run(buildLvsha(t), "cleanup", "-f", a.conf); err != nil {
			t.Fatalf("lvsha cleanup: %v\n%s", err, out)
		}
		if _, held := holds6(t, p.a, vip); held {
			t.Fatal("lvsha cleanup left the IPv6 VIP on a")
		}
	}

	t.Log("a restarts: removes its leftover VIP and preempts")
	a = start(t, p.a, labConfig6("a", 150))
	mastered6(t, a, b, 5*time.Second)
	p.clientFollows6(t, p.a.MAC, time.Second)

	t.Log("SIGTERM a: priority 0, b takes over")
	a.stop(syscall.SIGTERM)
	if _, held := holds6(t, p.a, vip); held {
		t.Error("a kept the VIP after SIGTERM")
	}
	waitFor(t, "b MASTER", 3*time.Second, func() bool { return b.Status().State == Master })
	if st := b.Status(); st.Cause != "priority 0 from "+llA.String() {
		t.Errorf("b's cause %q", st.Cause)
	}
	p.clientFollows6(t, p.b.MAC, time.Second)
	if st := b.Status(); st.Master != llB || st.AdvertsSent == 0 || st.Dropped["ttl"]+st.Dropped["checksum"] != 0 {
		t.Errorf("b's status %+v", st)
	}
}

// TestNetnsIPv6NoNAControl is the negative control of the NA: the same
// takeover by an instance that sends no announcements (a test child
// whose announcer does nothing) leaves the client's entry on the old
// master's MAC, so clientFollows6 above proves the NAs.
func TestNetnsIPv6NoNAControl(t *testing.T) {
	p := newPair6(t)
	a := startDirector(t, p.a, labConfig6("a", 150))
	t.Setenv(noAnnounceEnv, "1") // for b only
	b := startDirector(t, p.b, labConfig6("b", 100))
	mastered6(t, a, b, 5*time.Second)
	p.clientResolves6(t, p.a.MAC, 3*time.Second)
	a.stop(syscall.SIGTERM)
	waitFor(t, "b MASTER", 3*time.Second, func() bool { return b.Status().State == Master })
	time.Sleep(1500 * time.Millisecond)
	if got := neighMAC6(t, p.client, labVIP6.Addr()); got.String() != p.a.MAC.String() {
		t.Fatalf("without NAs the client's entry moved to %v (want it left on %v)", got, p.a.MAC)
	}
}

// sendRaw6 sends VRRP payloads to ff02::12 from node's link-local address
// with the hop limit of each.
func sendRaw6(t *testing.T, node *netns.Node, src netip.Addr, pkts []rawPkt) {
	t.Helper()
	err := node.Do(func() error {
		c, err := net.ListenPacket("ip6:112", "::")
		if err != nil {
			return err
		}
		defer c.Close()
		pc := ipv6.NewPacketConn(c)
		ifi, err := net.InterfaceByName("eth0")
		if err != nil {
			return err
		}
		for _, p := range pkts {
			cm := &ipv6.ControlMessage{HopLimit: p.ttl, Src: src.AsSlice(), IfIndex: ifi.Index}
			if _, err := pc.WriteTo(p.b, cm, &net.IPAddr{IP: Group6.AsSlice()}); err != nil {
				return fmt.Errorf("send %s: %w", p.reason, err)
			}
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
}

// TestNetnsIPv6ForgedAdverts: a priority-200 advert for our VIP from
// another node is dropped and counted when its hop limit is not 255 or its
// checksum is wrong (over the IPv6 pseudo-header), and the master stays;
// the same advert with hop limit 255 and the right checksum (the positive
// control) makes it yield.
func TestNetnsIPv6ForgedAdverts(t *testing.T) {
	for _, s := range starters {
		t.Run(s.name, func(t *testing.T) { testIPv6ForgedAdverts(t, s.start) })
	}
}

func testIPv6ForgedAdverts(t *testing.T, start starter) {
	p := newPair6(t)
	evil, err := p.lab.AddNode("evil", addrEvil)
	if err != nil {
		t.Fatal(err)
	}
	addIPv6(t, evil)
	src := linkLocal(t, evil)
	a := start(t, p.a, labConfig6("a", 150))
	waitFor(t, "a MASTER", 5*time.Second, func() bool { return a.Status().State == Master })

	adv := &Advert{Version: 3, Type: TypeAdvertisement, VRID: 51, Priority: 200, MaxAdvertInterval: 10, Addrs: []netip.Addr{labVIP6.Addr()}}
	good, err := adv.Marshal(ChecksumPseudoHeader, src, Group6)
	if err != nil {
		t.Fatal(err)
	}
	bad := slices.Clone(good)
	bad[7] ^= 0x01
	// The checksum right for another source (a message-only or
	// off-by-address checksum) is a bad one too.
	other, err := adv.Marshal(ChecksumPseudoHeader, netip.MustParseAddr("fe80::1"), Group6)
	if err != nil {
		t.Fatal(err)
	}
	const n = 5
	var pkts []rawPkt
	for range n {
		pkts = append(pkts, rawPkt{"hop limit 64", 64, good}, rawPkt{"hop limit 254", 254, good},
			rawPkt{"bad checksum", 255, bad}, rawPkt{"checksum for another source", 255, other})
	}
	sendRaw6(t, evil, src, pkts)
	waitFor(t, "a counting the forged adverts", 3*time.Second, func() bool {
		st := a.Status()
		return st.Dropped["ttl"] == 2*n && st.Dropped["checksum"] == 2*n
	})
	if st := a.Status(); st.State != Master || st.AdvertsReceived != 0 {
		t.Fatalf("a after forged adverts: %+v", st)
	}
	if _, held := holds6(t, p.a, labVIP6.Addr()); !held {
		t.Fatal("a lost the VIP to forged adverts")
	}

	t.Log("control: hop limit 255 and the right checksum: a yields")
	sendRaw6(t, evil, src, []rawPkt{{"valid", 255, good}})
	waitFor(t, "a yielding to priority 200", 3*time.Second, func() bool {
		st := a.Status()
		return st.State == Backup && st.Master == src
	})
}

// TestNetnsIPv6KeepalivedInterop: keepalived 2.2.7 (version 3, an IPv6
// virtual_ipaddress) and the lvsha daemon elect over IPv6 in both
// directions, and the client's neighbour entry follows each takeover.
func TestNetnsIPv6KeepalivedInterop(t *testing.T) {
	t.Run("multicast", func(t *testing.T) { testIPv6Interop(t, false) })
	// keepalived's side has unicast_ttl 255 (keepalivedConf).
	t.Run("unicast", func(t *testing.T) { testIPv6Interop(t, true) })
}

func testIPv6Interop(t *testing.T, unicast bool) {
	p := newPair6(t)
	llA := linkLocal(t, p.a)
	kcfg := labConfig6("ka", 150)
	lcfg := labConfig6("lvsha", 100)
	if unicast {
		// keepalived from its global address, lvsha from its
		// link-local one: both kinds of source.
		llB := linkLocal(t, p.b)
		llA = addr6["a"].Addr()
		kcfg.UnicastSrc, kcfg.UnicastPeers = llA, []netip.Addr{llB}
		lcfg.UnicastSrc, lcfg.UnicastPeers = llB, []netip.Addr{llA}
	}

	ka := startKeepalived(t, p.a, kcfg)
	lv := startDaemon(t, p.b, lcfg)
	mastered6(t, ka, lv, 6*time.Second)
	waitFor(t, "lvsha hearing keepalived", 3*time.Second, func() bool {
		st := lv.Status()
		return st.State == Backup && st.Master == llA && st.AdvertsReceived > 2
	})
	p.clientResolves6(t, p.a.MAC, 3*time.Second)

	t.Log("keepalived stops (SIGTERM): lvsha takes over")
	ka.stop(syscall.SIGTERM)
	mastered6(t, lv, ka, 3*time.Second)
	if st := lv.Status(); st.Cause != "priority 0 from "+llA.String() {
		t.Errorf("lvsha's cause %q", st.Cause)
	}
	p.clientFollows6(t, p.b.MAC, time.Second)

	t.Log("keepalived comes back with a higher priority: it preempts lvsha")
	ka = startKeepalived(t, p.a, kcfg)
	mastered6(t, ka, lv, 6*time.Second)
	p.clientFollows6(t, p.a.MAC, time.Second)
	if st := lv.Status(); st.Cause != "higher priority 150 from "+llA.String() {
		t.Errorf("lvsha's cause %q", st.Cause)
	}

	t.Log("lvsha restarts with priority 200: it preempts keepalived")
	lv.stop(syscall.SIGTERM)
	lcfg.Priority = 200
	lv = startDaemon(t, p.b, lcfg)
	mastered6(t, lv, ka, 6*time.Second)
	p.clientFollows6(t, p.b.MAC, time.Second)

	t.Log("lvsha stops: keepalived takes over")
	lv.stop(syscall.SIGTERM)
	mastered6(t, ka, lv, 3*time.Second)
	p.clientFollows6(t, p.a.MAC, time.Second)
}

// noAnnounce is the announcer of a child started with noAnnounceEnv.
type noAnnounce struct{}

func (noAnnounce) GARP(netip.Addr) error { return nil }
func (noAnnounce) Close() error          { return nil }

// childOptions are the test seams a child takes from its environment.
func childOptions(in *Instance) {
	if os.Getenv(noAnnounceEnv) == "" {
		return
	}
	open := in.open
	in.open = func() (*kernel, error) {
		k, err := open()
		if err == nil {
			k.garp.Close()
			k.garp = noAnnounce{}
		}
		return k, err
	}
}

// TestNetnsIPv6OnWire reads, from the client's link, what a master with
// two IPv6 VIPs sends on takeover: its advert to ff02::12 (33:33:00:00:00:12)
// from its link-local address, hop limit 255, traffic class 0xc0, a
// checksum over the IPv6 pseudo-header; then one unsolicited NA per VIP
// (garp_master_repeat 1) to ff02::1 from the VIP, hop limit 255, Override
// set, the MAC in the target link-layer address option, and Router set
// only once forwarding is on for the interface.
func TestNetnsIPv6OnWire(t *testing.T) {
	p := newPair6(t)
	llA := linkLocal(t, p.a)
	vips := []netip.Prefix{labVIP6, netip.MustParsePrefix("2001:db8:94::201/64")}
	var c *mdpacket.Conn
	if err := p.client.Do(func() error {
		ifi, err := net.InterfaceByName("eth0")
		if err != nil {
			return err
		}
		c, err = mdpacket.Listen(ifi, mdpacket.Raw, unix.ETH_P_IPV6, nil)
		return err
	}); err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	cfg := labConfig6("a", 150)
	cfg.VIPs, cfg.GARPRepeat = vips, 1

	for _, fwd := range []bool{false, true} {
		if fwd {
			if _, err := p.a.Run("sysctl", "-qw", "net.ipv6.conf.eth0.forwarding=1"); err != nil {
				t.Fatal(err)
			}
		}
		a := startDirector(t, p.a, cfg)
		var adverts int
		nas := map[netip.Addr]int{}
		buf := make([]byte, 1500)
		// The takeover is within 4s; its NAs follow the advert at once,
		// and nothing else is announced in the next second.
		deadline := time.Now().Add(5 * time.Second)
		for time.Now().Before(deadline) {
			if err := c.SetReadDeadline(deadline); err != nil {
				t.Fatal(err)
			}
			n, _, err := c.ReadFrom(buf)
			if err != nil {
				break
			}
			fr := parseIPv6Frame(t, buf[:n])
			switch {
			case fr.nextHeader == Protocol:
				a, err := Unmarshal(fr.payload, fr.src, fr.dst)
				if err == nil && a.Priority == 0 {
					continue // the previous run's goodbye, still queued
				}
				if err != nil || fr.src != llA || fr.dst != Group6 || fr.hopLimit != 255 || fr.tclass != 0xc0 ||
					fr.ethDst.String() != "33:33:00:00:00:12" || a.Priority != 150 || len(a.Addrs) != 2 {
					t.Fatalf("advert %s -> %s (%s) hop limit %d tclass %#x: %+v %v", fr.src, fr.dst, fr.ethDst, fr.hopLimit, fr.tclass, a, err)
				}
				if adverts++; adverts == 1 {
					deadline = time.Now().Add(time.Second)
				}
			case fr.nextHeader == 58 && fr.payload[0] == 136:
				m, err := ndp.ParseMessage(fr.payload)
				if err != nil {
					t.Fatal(err)
				}
				na := m.(*ndp.NeighborAdvertisement)
				if adverts == 0 {
					t.Fatalf("NA before the advert: %+v", na)
				}
				lla, ok := na.Options[0].(*ndp.LinkLayerAddress)
				if fr.src != na.TargetAddress || fr.dst != allNodes || fr.hopLimit != 255 ||
					fr.ethDst.String() != "33:33:00:00:00:01" || fr.ethSrc.String() != p.a.MAC.String() ||
					!na.Override || na.Solicited || na.Router != fwd || len(na.Options) != 1 || !ok ||
					lla.Direction != ndp.Target || lla.Addr.String() != p.a.MAC.String() {
					t.Fatalf("forwarding=%v: NA %s -> %s hop limit %d: %+v", fwd, fr.src, fr.dst, fr.hopLimit, na)
				}
				nas[na.TargetAddress]++
			}
		}
		if adverts == 0 || len(nas) != 2 || nas[vips[0].Addr()] != 1 || nas[vips[1].Addr()] != 1 {
			t.Fatalf("forwarding=%v: %d adverts, NAs %v (want one per VIP)", fwd, adverts, nas)
		}
		a.stop(syscall.SIGTERM)
	}
}

// dualTOML is the daemon config of a dual-stack director: instance VI_4
// with the IPv4 lab VIP and VI_6 with the IPv6 one, both VRID 51 (a VRID
// is per address family), and metrics on the namespace's loopback.
func dualTOML(prio uint8, sock string) string {
	c4, c6 := labConfig("VI_4", prio), labConfig6("VI_6", prio)
	s := daemonTOML(c4, sock)
	_, inst6, _ := strings.Cut(daemonTOML(c6, sock), "[[vrrp_instance]]\n")
	s = strings.Replace(s, "[global]\n", "[global]\nmetrics_listen = \"127.0.0.1:9610\"\n", 1)
	return s + "\n[[vrrp_instance]]\n" + inst6
}

// dualDaemon runs the real daemon with dualTOML in node.
func dualDaemon(t *testing.T, node *netns.Node, prio uint8) (d *director, status func() map[string]control.VRRPStatus) {
	t.Helper()
	bin := buildLvsha(t)
	dir := t.TempDir()
	sock := filepath.Join(dir, "lvsha.sock")
	conf := filepath.Join(dir, "lvsha.toml")
	if err := os.WriteFile(conf, []byte(dualTOML(prio, sock)), 0o644); err != nil {
		t.Fatal(err)
	}
	if out, err := exec.Command(bin, "-t", "-f", conf).CombinedOutput(); err != nil {
		t.Fatalf("lvsha -t: %v\n%s", err, out)
	}
	d = &director{t: t, node: node, log: filepath.Join(dir, "log"), conf: conf, sock: sock}
	status = func() map[string]control.VRRPStatus {
		out, err := exec.Command(bin, "status", "--json", "-S", sock).Output()
		if err != nil {
			return nil
		}
		var ds struct {
			VRRP []control.VRRPStatus `json:"vrrp"`
		}
		if json.Unmarshal(out, &ds) != nil {
			return nil
		}
		m := map[string]control.VRRPStatus{}
		for _, v := range ds.VRRP {
			m[v.Name] = v
		}
		return m
	}
	return d.start(exec.Command(bin, "-f", conf)), status
}

// TestNetnsDualStack: a pair of real daemons, each with an IPv4 and an
// IPv6 instance on the same interface and VRID, elect the same master for
// both; status and metrics show the IPv6 instance as they show the IPv4
// one; on SIGTERM both VIPs move, the client's ARP and neighbour entries
// with them.
func TestNetnsDualStack(t *testing.T) {
	p := newPair6(t)
	llA := linkLocal(t, p.a)
	a, statusA := dualDaemon(t, p.a, 150)
	_, statusB := dualDaemon(t, p.b, 100)
	waitFor(t, "a MASTER of both instances, b BACKUP of both", 6*time.Second, func() bool {
		sa, sb := statusA(), statusB()
		return sa["VI_4"].State == "MASTER" && sa["VI_6"].State == "MASTER" &&
			sb["VI_4"].State == "BACKUP" && sb["VI_6"].State == "BACKUP" &&
			sb["VI_4"].Master == addrA.Addr().String() && sb["VI_6"].Master == llA.String()
	})
	if v6 := statusA()["VI_6"]; !slices.Equal(v6.VIPs, []string{labVIP6.String()}) || v6.VRID != 51 || v6.AdvertsOut == 0 {
		t.Errorf("a's status of VI_6: %+v", v6)
	}
	if !a.holdsVIP(labVIP.Addr()) {
		t.Fatal("a does not hold the IPv4 VIP")
	}
	if _, ok := holds6(t, p.a, labVIP6.Addr()); !ok {
		t.Fatal("a does not hold the IPv6 VIP")
	}
	out, err := p.a.Run("curl", "-sS", "http://127.0.0.1:9610/metrics")
	if err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{
		`lvsha_vrrp_state{state="MASTER",vrrp_instance="VI_6"} 1`,
		`lvsha_vrrp_state{state="MASTER",vrrp_instance="VI_4"} 1`,
		`lvsha_vrrp_adverts_sent_total{vrrp_instance="VI_6"}`,
	} {
		if !strings.Contains(out, want) {
			t.Errorf("metrics lack %s", want)
		}
	}
	p.clientSees(t, p.a.MAC, 3*time.Second)
	p.clientResolves6(t, p.a.MAC, 3*time.Second)

	t.Log("SIGTERM a: b takes over both")
	a.stop(syscall.SIGTERM)
	waitFor(t, "b MASTER of both", 3*time.Second, func() bool {
		sb := statusB()
		return sb["VI_4"].State == "MASTER" && sb["VI_6"].State == "MASTER"
	})
	p.clientFollows6(t, p.b.MAC, time.Second)
	p.clientSees(t, p.b.MAC, 3*time.Second)
}

// TestNetnsIPv6LowerPriorityStorm: a master answers each lower-priority
// advert with an advert, but sends its NA burst at most once a second: 20
// forged priority-50 adverts in half a second bring one burst (5 NAs for
// the one VIP), or two if the clock turns a second meanwhile, not 20.
func TestNetnsIPv6LowerPriorityStorm(t *testing.T) {
	p := newPair6(t)
	evil, err := p.lab.AddNode("evil", addrEvil)
	if err != nil {
		t.Fatal(err)
	}
	addIPv6(t, evil)
	src := linkLocal(t, evil)
	var c *mdpacket.Conn
	if err := p.client.Do(func() error {
		ifi, err := net.InterfaceByName("eth0")
		if err != nil {
			return err
		}
		c, err = mdpacket.Listen(ifi, mdpacket.Raw, unix.ETH_P_IPV6, nil)
		return err
	}); err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	cfg := labConfig6("a", 150)
	cfg.GARPDelay = 0
	a := startDirector(t, p.a, cfg)
	waitFor(t, "a MASTER", 5*time.Second, func() bool { return a.Status().State == Master })
	// Let the takeover's burst pass and drop what the socket holds of
	// it, then count from here.
	time.Sleep(300 * time.Millisecond)
	drain := make([]byte, 1500)
	for {
		_ = c.SetReadDeadline(time.Now().Add(50 * time.Millisecond))
		if _, _, err := c.ReadFrom(drain); err != nil {
			break
		}
	}
	count := make(chan int)
	go func() {
		n := 0
		buf := make([]byte, 1500)
		_ = c.SetReadDeadline(time.Now().Add(900 * time.Millisecond))
		for {
			k, _, err := c.ReadFrom(buf)
			if err != nil {
				count <- n
				return
			}
			if fr := parseIPv6Frame(t, buf[:k]); fr.nextHeader == 58 && fr.payload[0] == 136 {
				n++
			}
		}
	}()
	adv := &Advert{Version: 3, Type: TypeAdvertisement, VRID: 51, Priority: 50, MaxAdvertInterval: 10, Addrs: []netip.Addr{labVIP6.Addr()}}
	b, err := adv.Marshal(ChecksumPseudoHeader, src, Group6)
	if err != nil {
		t.Fatal(err)
	}
	sent := a.Status().AdvertsSent
	for range 20 {
		sendRaw6(t, evil, src, []rawPkt{{"lower priority", 255, b}})
		time.Sleep(25 * time.Millisecond)
	}
	nas := <-count
	st := a.Status()
	t.Logf("20 lower-priority adverts: %d NAs, %d bursts suppressed, %d adverts sent", nas, st.GARPSuppressed, st.AdvertsSent-sent)
	if st.State != Master || st.AdvertsReceived != 20 || st.AdvertsSent-sent < 20 {
		t.Errorf("a: %+v (want MASTER, each advert answered)", st)
	}
	if nas < cfg.GARPRepeat || nas > 2*cfg.GARPRepeat || st.GARPSuppressed < 18 || nas%cfg.GARPRepeat != 0 {
		t.Errorf("%d NAs and %d bursts suppressed: want one or two bursts of %d", nas, st.GARPSuppressed, cfg.GARPRepeat)
	}
}

// TestNetnsIPv6AdminDownUp: `ip link set eth0 down` removes an
// interface's IPv6 addresses; on up the kernel makes its link-local
// address again, in DAD for about a second, and adverts cannot be sent from
// it meanwhile (counted as send errors) while the returning master has
// taken over: both are master until DAD ends. With optimistic_dad=1 on the
// interface (README) the address is usable at once and no advert fails;
// without it (the control) some do.
func TestNetnsIPv6AdminDownUp(t *testing.T) {
	for _, optimistic := range []bool{true, false} {
		t.Run(fmt.Sprintf("optimistic_dad=%v", optimistic), func(t *testing.T) {
			p := newPair6(t)
			if optimistic {
				if _, err := p.a.Run("sysctl", "-qw", "net.ipv6.conf.eth0.optimistic_dad=1"); err != nil {
					t.Fatal(err)
				}
			}
			a := startDirector(t, p.a, labConfig6("a", 150))
			b := startDirector(t, p.b, labConfig6("b", 100))
			mastered6(t, a, b, 5*time.Second)
			if err := p.a.SetLink("eth0", false); err != nil {
				t.Fatal(err)
			}
			mastered6(t, b, a, 3*time.Second)
			if err := p.a.SetLink("eth0", true); err != nil {
				t.Fatal(err)
			}
			mastered6(t, a, b, 5*time.Second)
			waitFor(t, "b following a", 3*time.Second, func() bool { return b.Status().Master == linkLocal(t, p.a) })
			errs := a.Status().SendErrors
			t.Logf("send errors of the returning master: %d", errs)
			if optimistic != (errs == 0) {
				t.Errorf("optimistic_dad=%v: %d send errors", optimistic, errs)
			}
		})
	}
}
