package director

import (
	"net"
	"net/netip"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/lvsha/lvsha/internal/director/control"

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

// TestARPLeakDaemonNetns runs a real lvsha director: once master it reports
// a real server that answers ARP for the VIP, in status (with the real
// server it is) and metrics, and clears the report once the server is
// fixed (the next periodic probe).
func TestARPLeakDaemonNetns(t *testing.T) {
	testutil.NeedRoot(t)
	bin := buildLvsha(t)
	l, err := netns.NewLab(netns.UniquePrefix("arpd"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { l.Close() })
	n1, err := l.AddNode("d1", netip.MustParsePrefix("10.98.0.2/24"))
	if err != nil {
		t.Fatal(err)
	}
	web, err := l.AddNode("web", netip.MustParsePrefix("10.98.0.20/24"))
	if err != nil {
		t.Fatal(err)
	}
	vip := netip.MustParseAddr("10.98.0.100")
	if err := lab.AddAddr(web.NS, "lo", netip.PrefixFrom(vip, 32)); err != nil {
		t.Fatal(err)
	}
	setIgnore := func(v string) {
		for _, ifc := range []string{"all", "eth0"} {
			if err := lab.Sysctl(web.NS, "net.ipv4.conf."+ifc+".arp_ignore", v); err != nil {
				t.Fatal(err)
			}
		}
	}
	setIgnore("0")
	d := startDirector(t, bin, n1, 150)
	// A checked real server: its checks give the director the neighbour
	// entry that names the leak.
	d.write(t, 150, "\n[[virtual_server]]\naddress = \"10.98.0.100:80\"\n[virtual_server.check]\ntype = \"tcp\"\ninterval = \"200ms\"\ntimeout = \"100ms\"\n[[virtual_server.real_server]]\naddress = \"10.98.0.20:80\"\n")
	waitCond(t, "d1 MASTER", func() bool { return d.vrrp(t).State == "MASTER" })
	if err := d.cmd.Process.Signal(syscall.SIGHUP); err != nil {
		t.Fatal(err)
	}
	var leak control.ARPLeak
	if !netns.WaitFor(2*arpProbeEvery+5*time.Second, 100*time.Millisecond, func() bool {
		st := d.status(t)
		if st == nil || len(st.ARPLeaks) != 1 || len(st.ARPLeaks[0].RealServers) != 1 {
			return false
		}
		leak = st.ARPLeaks[0]
		return true
	}) {
		t.Fatalf("no ARP leak reported with its real server; status: %+v", d.status(t))
	}
	if leak.VIP != vip.String() || leak.IP != "10.98.0.20" || leak.RealServers[0] != "TCP 10.98.0.100:80 -> 10.98.0.20:80" || leak.MAC == "" {
		t.Errorf("leak %+v", leak)
	}
	if m := scrapeIn(t, n1, "127.0.0.1:9610"); !strings.Contains(m, `lvsha_arp_leaks{vip="10.98.0.100"} 1`) {
		t.Errorf("metrics: no lvsha_arp_leaks 1:\n%s", grepLines(m, "arp"))
	}
	if !strings.Contains(d.log.String(), "arp leak: another host answers ARP for the VIP") {
		t.Errorf("no log line for the leak")
	}
	setIgnore("1")
	if !netns.WaitFor(arpProbeEvery+5*time.Second, 100*time.Millisecond, func() bool {
		st := d.status(t)
		return st != nil && len(st.ARPLeaks) == 0
	}) {
		t.Fatalf("leak still reported after arp_ignore=1: %+v", d.status(t).ARPLeaks)
	}
	if m := scrapeIn(t, n1, "127.0.0.1:9610"); !strings.Contains(m, `lvsha_arp_leaks{vip="10.98.0.100"} 0`) {
		t.Errorf("metrics after the fix:\n%s", grepLines(m, "arp"))
	}
	if !strings.Contains(d.log.String(), "arp leak cleared") {
		t.Errorf("no log line for the fix")
	}
}

func grepLines(s, sub string) string {
	var out []string
	for _, l := range strings.Split(s, "\n") {
		if strings.Contains(l, sub) {
			out = append(out, l)
		}
	}
	return strings.Join(out, "\n")
}
