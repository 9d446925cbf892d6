package director

import (
	"net"
	"net/netip"
	"strings"
	"testing"
	"time"

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
