package director

import (
	"net"
	"net/netip"
	"testing"
	"time"

	"github.com/lvsha/lvsha/internal/testenv/lab"
	"github.com/lvsha/lvsha/internal/testenv/netns"
	"github.com/lvsha/lvsha/internal/testenv/testutil"
)

// TestARPLeakNetns: a real server holding the VIP on lo with arp_ignore=0
// answers the master's ARP probe and is named by its address; with
// arp_ignore=1 (as `lvsha realserver up` sets it) it is silent, and so is a
// correctly set up one all along.
func TestARPLeakNetns(t *testing.T) {
	testutil.NeedRoot(t)
	l, err := netns.NewLab(netns.UniquePrefix("arpl"))
	if err != nil {
		testutil.Unavailable(t, "namespaces: "+err.Error())
	}
	defer l.Close()
	dir, err := l.AddNode("dir", lab.Director1)
	if err != nil {
		t.Fatal(err)
	}
	web1, err := l.AddNode("web1", lab.Web1)
	if err != nil {
		t.Fatal(err)
	}
	web2, err := l.AddNode("web2", lab.Web2)
	if err != nil {
		t.Fatal(err)
	}
	if err := lab.AddAddr(dir.NS, "eth0", netip.PrefixFrom(lab.VIP, 32)); err != nil {
		t.Fatal(err)
	}
	// web2 is set up right; web1 has the VIP on lo but ARP suppression off.
	if err := lab.RealServer(web2.NS, lab.VIP); err != nil {
		t.Fatal(err)
	}
	if err := lab.AddAddr(web1.NS, "lo", netip.PrefixFrom(lab.VIP, 32)); err != nil {
		t.Fatal(err)
	}
	for _, ifc := range []string{"all", "eth0"} {
		if err := lab.Sysctl(web1.NS, "net.ipv4.conf."+ifc+".arp_ignore", "0"); err != nil {
			t.Fatal(err)
		}
	}
	// The director knows its real servers' MACs (health checks make the
	// neighbour entries); a connection attempt does it here.
	for _, w := range []netip.Prefix{lab.Web1, lab.Web2} {
		_ = dir.Do(func() error {
			c, err := net.DialTimeout("tcp", netip.AddrPortFrom(w.Addr(), 9).String(), time.Second)
			if err == nil {
				c.Close()
			}
			return nil
		})
	}
	var web1MAC string
	if err := web1.Do(func() error {
		ifi, err := net.InterfaceByName("eth0")
		if err == nil {
			web1MAC = ifi.HardwareAddr.String()
		}
		return err
	}); err != nil {
		t.Fatal(err)
	}

	probe := func() []arpLeak {
		t.Helper()
		var leaks []arpLeak
		if err := dir.Do(func() (err error) {
			leaks, err = probeARP("eth0", lab.VIP, 300*time.Millisecond)
			return err
		}); err != nil {
			t.Fatal(err)
		}
		return leaks
	}
	leaks := probe()
	if len(leaks) != 1 || leaks[0].MAC.String() != web1MAC || leaks[0].IP != lab.Web1.Addr() || leaks[0].VIP != lab.VIP {
		t.Fatalf("leaks %+v, want web1 (%s, %s) alone", leaks, lab.Web1.Addr(), web1MAC)
	}
	for _, ifc := range []string{"all", "eth0"} {
		if err := lab.Sysctl(web1.NS, "net.ipv4.conf."+ifc+".arp_ignore", "1"); err != nil {
			t.Fatal(err)
		}
	}
	if leaks := probe(); len(leaks) != 0 {
		t.Fatalf("after arp_ignore=1 on web1: leaks %+v, want none", leaks)
	}
}
