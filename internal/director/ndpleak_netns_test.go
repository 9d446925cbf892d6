package director

import (
	"net"
	"net/netip"
	"strings"
	"testing"
	"time"

	"github.com/lvsha/lvsha/internal/director/control"
	"github.com/lvsha/lvsha/internal/testenv/lab"
	"github.com/lvsha/lvsha/internal/testenv/netns"
	"github.com/lvsha/lvsha/internal/testenv/testutil"
)

// TestNDPLeakNetns: a real server holding the IPv6 VIP on its LAN
// interface (with nodad, as a hand-made setup would) answers the master's
// neighbour solicitation and is named by its address; once the VIP is on
// lo instead (as `lvsha realserver up` puts it) it is silent, and so is the
// correctly set up one all along (the control).
func TestNDPLeakNetns(t *testing.T) {
	testutil.NeedRoot(t)
	l, err := netns.NewLab(netns.UniquePrefix("ndpl"))
	if err != nil {
		testutil.Unavailable(t, "namespaces: "+err.Error())
	}
	defer l.Close()
	var (
		vip  = netip.MustParseAddr("2001:db8:95::100")
		addr = map[string]netip.Prefix{"dir": netip.MustParsePrefix("2001:db8:95::2/64"),
			"web1": netip.MustParsePrefix("2001:db8:95::21/64"), "web2": netip.MustParsePrefix("2001:db8:95::22/64")}
		nodes = map[string]*netns.Node{}
	)
	for role, v4 := range map[string]netip.Prefix{"dir": lab.Director1, "web1": lab.Web1, "web2": lab.Web2} {
		n, err := l.AddNode(role, v4)
		if err != nil {
			t.Fatal(err)
		}
		nodes[role] = n
		if out, err := n.Run("ip", "-6", "addr", "add", addr[role].String(), "dev", "eth0", "nodad"); err != nil {
			t.Fatalf("%s: %v: %s", role, err, out)
		}
	}
	dir, web1 := nodes["dir"], nodes["web1"]
	addVIP := func(n *netns.Node, dev string) {
		t.Helper()
		if out, err := n.Run("ip", "-6", "addr", "add", netip.PrefixFrom(vip, 128).String(), "dev", dev, "nodad"); err != nil {
			t.Fatalf("%s: %v: %s", n.Role, err, out)
		}
	}
	addVIP(dir, "eth0")
	addVIP(web1, "eth0")        // the leak
	addVIP(nodes["web2"], "lo") // set up right: the control
	// Link-local addresses out of DAD: the probe is sent from the
	// director's, the answers from the webs'.
	for _, n := range nodes {
		if !netns.WaitFor(5*time.Second, 50*time.Millisecond, func() bool {
			out, err := n.Run("ip", "-6", "addr", "show", "dev", "eth0", "tentative")
			return err == nil && strings.TrimSpace(out) == ""
		}) {
			t.Fatalf("%s: addresses still tentative", n.Role)
		}
	}
	// The director knows its real servers' MACs by their own addresses
	// (health checks make the entries); a connection attempt does it here.
	for _, w := range []string{"web1", "web2"} {
		_ = dir.Do(func() error {
			c, err := net.DialTimeout("tcp", netip.AddrPortFrom(addr[w].Addr(), 9).String(), time.Second)
			if err == nil {
				c.Close()
			}
			return nil
		})
	}

	probe := func() []arpLeak {
		t.Helper()
		var leaks []arpLeak
		if err := dir.Do(func() (err error) {
			leaks, err = probeNDP("eth0", vip, 300*time.Millisecond)
			return err
		}); err != nil {
			t.Fatal(err)
		}
		return leaks
	}
	leaks := probe()
	if len(leaks) != 1 || leaks[0].MAC.String() != web1.MAC.String() || leaks[0].IP != addr["web1"].Addr() || leaks[0].VIP != vip {
		t.Fatalf("leaks %+v, want web1 (%s, %s) alone", leaks, addr["web1"].Addr(), web1.MAC)
	}
	if out, err := web1.Run("ip", "-6", "addr", "del", netip.PrefixFrom(vip, 128).String(), "dev", "eth0"); err != nil {
		t.Fatalf("%v: %s", err, out)
	}
	addVIP(web1, "lo")
	if leaks := probe(); len(leaks) != 0 {
		t.Fatalf("after web1's VIP moved to lo: leaks %+v, want none", leaks)
	}
}

// TestNDPLeakDaemonNetns runs a real lvsha director with an IPv6 instance:
// once master it reports the real server holding the VIP on its LAN
// interface (with its address and real server, in status and metrics), not
// the one holding it on lo (the control), and clears the report once the
// VIP is moved to lo.
func TestNDPLeakDaemonNetns(t *testing.T) {
	testutil.NeedRoot(t)
	bin := buildLvsha(t)
	l, err := netns.NewLab(netns.UniquePrefix("ndpd"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { l.Close() })
	vip := netip.MustParseAddr("2001:db8:98::100")
	nodes := map[string]*netns.Node{}
	for _, n := range []struct{ role, v4, v6 string }{
		{"d1", "10.98.0.2/24", "2001:db8:98::2/64"}, {"web1", "10.98.0.20/24", "2001:db8:98::20/64"}, {"web2", "10.98.0.21/24", "2001:db8:98::21/64"},
	} {
		node, err := l.AddNode(n.role, netip.MustParsePrefix(n.v4))
		if err != nil {
			t.Fatal(err)
		}
		if out, err := node.Run("ip", "-6", "addr", "add", n.v6, "dev", "eth0", "nodad"); err != nil {
			t.Fatalf("%s: %v: %s", n.role, err, out)
		}
		nodes[n.role] = node
	}
	web1 := nodes["web1"]
	vip128 := netip.PrefixFrom(vip, 128).String()
	if out, err := web1.Run("ip", "-6", "addr", "add", vip128, "dev", "eth0", "nodad"); err != nil {
		t.Fatalf("%v: %s", err, out)
	}
	if out, err := nodes["web2"].Run("ip", "-6", "addr", "add", vip128, "dev", "lo", "nodad"); err != nil {
		t.Fatalf("%v: %s", err, out)
	}
	for _, n := range nodes {
		if !netns.WaitFor(5*time.Second, 50*time.Millisecond, func() bool {
			out, err := n.Run("ip", "-6", "addr", "show", "dev", "eth0", "tentative")
			return err == nil && strings.TrimSpace(out) == ""
		}) {
			t.Fatalf("%s: addresses still tentative", n.Role)
		}
	}
	d := startDirectorWith(t, bin, nodes["d1"], 150, t.TempDir(), `
[[vrrp_instance]]
name = "VI_6"
interface = "eth0"
virtual_router_id = 43
priority = 150
advert_interval = "100ms"
virtual_ipaddress = ["2001:db8:98::100/64"]

[[virtual_server]]
address = "[2001:db8:98::100]:80"
[virtual_server.check]
type = "tcp"
interval = "200ms"
timeout = "100ms"
[[virtual_server.real_server]]
address = "[2001:db8:98::20]:80"
[[virtual_server.real_server]]
address = "[2001:db8:98::21]:80"
`)
	var leak control.ARPLeak
	if !netns.WaitFor(2*arpProbeEvery+5*time.Second, 100*time.Millisecond, func() bool {
		st := d.status(t)
		if st == nil || len(st.ARPLeaks) != 1 || len(st.ARPLeaks[0].RealServers) != 1 {
			return false
		}
		leak = st.ARPLeaks[0]
		return true
	}) {
		t.Fatalf("no IPv6 leak reported with its real server; status: %+v", d.status(t))
	}
	if leak.VIP != vip.String() || leak.IP != "2001:db8:98::20" || leak.MAC != web1.MAC.String() ||
		leak.RealServers[0] != "TCP [2001:db8:98::100]:80 -> [2001:db8:98::20]:80" {
		t.Errorf("leak %+v, want web1 (%s)", leak, web1.MAC)
	}
	if m := scrapeIn(t, nodes["d1"], "127.0.0.1:9610"); !strings.Contains(m, `lvsha_arp_leaks{vip="2001:db8:98::100"} 1`) {
		t.Errorf("metrics: no lvsha_arp_leaks 1 for the IPv6 VIP:\n%s", grepLines(m, "arp"))
	}
	if out, err := web1.Run("ip", "-6", "addr", "del", vip128, "dev", "eth0"); err != nil {
		t.Fatalf("%v: %s", err, out)
	}
	if out, err := web1.Run("ip", "-6", "addr", "add", vip128, "dev", "lo", "nodad"); err != nil {
		t.Fatalf("%v: %s", err, out)
	}
	if !netns.WaitFor(arpProbeEvery+5*time.Second, 100*time.Millisecond, func() bool {
		st := d.status(t)
		return st != nil && len(st.ARPLeaks) == 0
	}) {
		t.Fatalf("leak still reported after the VIP moved to lo: %+v", d.status(t).ARPLeaks)
	}
}
