// Package scaleout proves active-active directors over BGP on a real
// kernel: FRR's bgpd and zebra in a router namespace (ECMP over up to 8
// paths, hashing the 5-tuple), three lvsha directors that peer with it and program
// real IPVS (mh scheduler, DR) over three echo servers, and a client
// behind the router. It runs inside the QEMU VM (internal/testenv/vm).
//
//	client 172.16.0.2 --- eth1 router 172.16.0.1 / 10.0.0.254
//	LAN 10.0.0.0/24: router, d1..d3 10.0.0.1-3, web1..web3 10.0.0.11-13
//	VIP 10.99.0.1:80, announced by each director while it can serve it
package scaleout

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/lvsha/lvsha/internal/scenarios/connsync"
	"github.com/lvsha/lvsha/internal/testenv/lab"
	"github.com/lvsha/lvsha/internal/testenv/netns"
	"github.com/lvsha/lvsha/internal/testenv/vm"
	"github.com/vishvananda/netlink"
	vnetns "github.com/vishvananda/netns"
)

// Guest paths of the binaries the VM carries.
const (
	GuestLvsha = connsync.GuestLvsha
	BGPD       = "/usr/lib/frr/bgpd"
	Zebra      = "/usr/lib/frr/zebra"
)

// The lab's addresses.
var (
	VIP        = netip.MustParseAddr("10.99.0.1")
	Target     = netip.AddrPortFrom(VIP, connsync.Port)
	Router     = netip.MustParsePrefix("10.0.0.254/24")
	ClientAddr = netip.MustParsePrefix("172.16.0.2/24")
	ClientGW   = netip.MustParsePrefix("172.16.0.1/24")
)

// DirectorAddr is director i's (1-based) address.
func DirectorAddr(i int) netip.Prefix {
	return netip.PrefixFrom(netip.AddrFrom4([4]byte{10, 0, 0, byte(i)}), 24)
}

// WebAddr is web i's (1-based) address.
func WebAddr(i int) netip.Prefix {
	return netip.PrefixFrom(netip.AddrFrom4([4]byte{10, 0, 0, byte(10 + i)}), 24)
}

// Options are one lab's settings.
type Options struct {
	Lvsha     string // default GuestLvsha
	WorkDir   string // default /tmp/lvsha-scaleout-<tag>
	Directors int    // default 3
	Webs      int    // default 3
	// NoSloppy sets sloppy_tcp = false on the directors: the negative
	// control (a flow ECMP moves to another director is reset).
	NoSloppy bool
	// HoldTime is the directors' proposed BGP hold time; default 9s (the
	// router's datacenter profile proposes 9 s too).
	HoldTime time.Duration
	// CheckInterval is the interval of the exec checks (3 per director,
	// each a fork and exec of sh); default 1s.
	CheckInterval time.Duration
	// Sync gives every director a [sync] with no instance (master and
	// backup daemons all the time, on eth0), so each has the others'
	// connections.
	Sync bool
}

// Lab is the router, the directors, the webs and the client.
type Lab struct {
	o         Options
	lan       *netns.Lab
	Router    *netns.Node
	Client    *netns.NS
	Directors []*connsync.Director
	Webs      []*netns.Node
	frr       []*exec.Cmd
	frrLog    *syncBuffer
	servers   []net.Listener
}

// New builds the lab, starts FRR and writes the directors' configs (it
// does not start them: Start does).
func New(tag string, o Options) (_ *Lab, err error) {
	if o.Lvsha == "" {
		o.Lvsha = GuestLvsha
	}
	if o.WorkDir == "" {
		o.WorkDir = "/tmp/lvsha-scaleout-" + tag
	}
	if o.Directors == 0 {
		o.Directors = 3
	}
	if o.Webs == 0 {
		o.Webs = 3
	}
	if o.HoldTime == 0 {
		o.HoldTime = 9 * time.Second
	}
	if o.CheckInterval == 0 {
		o.CheckInterval = time.Second
	}
	if err := os.MkdirAll(o.WorkDir, 0o755); err != nil {
		return nil, err
	}
	prefix := netns.UniquePrefix("so" + tag)
	lan, err := netns.NewLab(prefix)
	if err != nil {
		return nil, err
	}
	l := &Lab{o: o, lan: lan, frrLog: &syncBuffer{}}
	defer func() {
		if err != nil {
			l.Close()
		}
	}()
	if l.Router, err = lan.AddNode("r", Router); err != nil {
		return nil, err
	}
	if err := l.addClient(prefix + "client"); err != nil {
		return nil, err
	}
	// ECMP on the 5-tuple. Not policy 1 (L4): for a packet that arrives
	// with an L4 hash it reuses that hash, and a veth hands the router the
	// client socket's own, which TCP draws anew on every retransmission
	// timeout (sk_rethink_txhash): flows would jump between directors
	// with no route change. A router's NIC hashes the headers (RSS);
	// policy 3 with the 5-tuple's fields makes this router do the same.
	for _, kv := range [][2]string{{"net.ipv4.ip_forward", "1"}, {"net.ipv4.fib_multipath_hash_policy", "3"},
		{"net.ipv4.fib_multipath_hash_fields", "0x0037"}} {
		if err := lab.Sysctl(l.Router.NS, kv[0], kv[1]); err != nil {
			return nil, err
		}
	}
	for i := 1; i <= o.Webs; i++ {
		name := fmt.Sprintf("web%d", i)
		n, err := lan.AddNode(name, WebAddr(i))
		if err != nil {
			return nil, err
		}
		l.Webs = append(l.Webs, n)
		if err := lab.RealServer(n.NS, VIP); err != nil {
			return nil, err
		}
		// Replies go straight to the client, through the router.
		if err := defaultRoute(n.NS, Router.Addr()); err != nil {
			return nil, err
		}
		ln, err := connsync.EchoServer(n.NS, name)
		if err != nil {
			return nil, err
		}
		l.servers = append(l.servers, ln)
	}
	for i := 1; i <= o.Directors; i++ {
		name := fmt.Sprintf("d%d", i)
		n, err := lan.AddNode(name, DirectorAddr(i))
		if err != nil {
			return nil, err
		}
		// A director resets a flow it cannot schedule: the reset must
		// reach the client for the negative control to see it.
		if err := defaultRoute(n.NS, Router.Addr()); err != nil {
			return nil, err
		}
		d := connsync.NewDirector(name, n, o.Lvsha, filepath.Join(o.WorkDir, name+".toml"),
			filepath.Join("/run/lvsha", "so"+tag+"-"+name+".sock"), filepath.Join(o.WorkDir, name+".log"))
		if err := os.WriteFile(d.Config, []byte(l.config(i, d.Socket)), 0o644); err != nil {
			return nil, err
		}
		if out, err := n.Run(o.Lvsha, "-t", "-f", d.Config); err != nil {
			return nil, fmt.Errorf("%s: lvsha -t: %w\n%s", name, err, out)
		}
		l.Directors = append(l.Directors, d)
	}
	if err := l.startFRR(); err != nil {
		return nil, err
	}
	return l, nil
}

// addClient makes the client's namespace, linked to the router's eth1.
func (l *Lab) addClient(name string) error {
	ns, err := netns.New(name)
	if err != nil {
		return err
	}
	l.Client = ns
	fd, err := vnetns.GetFromPath(ns.Path())
	if err != nil {
		return fmt.Errorf("client namespace: %w", err)
	}
	defer fd.Close()
	rh, err := l.Router.Handle()
	if err != nil {
		return err
	}
	defer rh.Close()
	veth := &netlink.Veth{LinkAttrs: netlink.LinkAttrs{Name: "eth1"}, PeerName: "eth0", PeerNamespace: netlink.NsFd(fd)}
	if err := rh.LinkAdd(veth); err != nil {
		return fmt.Errorf("router eth1: %w", err)
	}
	if err := upWithAddr(l.Router.NS, "eth1", ClientGW); err != nil {
		return err
	}
	if err := upWithAddr(ns, "eth0", ClientAddr); err != nil {
		return err
	}
	return defaultRoute(ns, ClientGW.Addr())
}

func upWithAddr(ns *netns.NS, ifname string, p netip.Prefix) error {
	if err := lab.AddAddr(ns, ifname, p); err != nil {
		return err
	}
	return ns.SetLink(ifname, true)
}

func defaultRoute(ns *netns.NS, gw netip.Addr) error {
	h, err := ns.Handle()
	if err != nil {
		return err
	}
	defer h.Close()
	if err := h.RouteReplace(&netlink.Route{Gw: gw.AsSlice()}); err != nil {
		return fmt.Errorf("%s: default route via %v: %w", ns.Name, gw, err)
	}
	return nil
}

// config is director i's: the VIP's service with mh over the webs
// (fallback, port hashing), each web checked by an exec check that
// fails while the file down-webN (all directors) or dN-down (this
// director only) exists; [bgp] towards the router.
func (l *Lab) config(i int, socket string) string {
	var b strings.Builder
	name := fmt.Sprintf("d%d", i)
	fmt.Fprintf(&b, "[global]\nrouter_id = %q\ncontrol_socket = %q\nstate_dir = %q\nrealtime_priority = 0\n\n",
		name, socket, filepath.Join(l.o.WorkDir, name+"-state"))
	fmt.Fprintf(&b, "[[virtual_server]]\naddress = \"%v\"\nscheduler = \"mh\"\nmh_fallback = true\nmh_port = true\nforwarding = \"dr\"\n", Target)
	// Each director lists the webs in another order (rotated by i-1):
	// the same table on every director then rests on lvsha adding mh
	// destinations in address order, as the kernel's Maglev table
	// depends on the order they were added.
	for k := range l.o.Webs {
		w := (k+i-1)%l.o.Webs + 1
		fmt.Fprintf(&b, "\n[[virtual_server.real_server]]\naddress = \"%v:%d\"\n", WebAddr(w).Addr(), connsync.Port)
		fmt.Fprintf(&b, "[virtual_server.real_server.check]\ntype = \"exec\"\nargv = [\"/bin/sh\", \"-c\", \"! test -e %s -o -e %s\"]\n"+
			"interval = %q\ntimeout = \"900ms\"\nrise = 1\nfall = 3\n",
			l.WebDownFile(w), l.DirectorDownFile(i), l.o.CheckInterval.String())
	}
	if l.o.Sync {
		b.WriteString("\n[sync]\ninterface = \"eth0\"\nsync_id = 9\n")
	}
	sloppy := !l.o.NoSloppy
	fmt.Fprintf(&b, "\n[bgp]\nasn = 65001\nrouter_id = %q\nannounce = [%q]\ndrain_time = \"2s\"\nsloppy_tcp = %v\n"+
		"[[bgp.neighbor]]\naddress = %q\nasn = 65000\nhold_time = %q\nconnect_retry = \"1s\"\n",
		DirectorAddr(i).Addr(), VIP.String(), sloppy, Router.Addr(), l.o.HoldTime.String())
	return b.String()
}

// WebDownFile fails web w's checks on every director; DirectorDownFile
// fails all of director i's checks.
func (l *Lab) WebDownFile(w int) string {
	return filepath.Join(l.o.WorkDir, fmt.Sprintf("down-web%d", w))
}
func (l *Lab) DirectorDownFile(i int) string {
	return filepath.Join(l.o.WorkDir, fmt.Sprintf("d%d-down", i))
}

// GuestFiles are the files the VM needs beside the test binary: lvsha,
// FRR's bgpd and zebra and iproute2's ip, with their shared libraries.
func GuestFiles(lvsha string) (map[string]string, error) {
	files := map[string]string{GuestLvsha: lvsha}
	for _, exe := range []string{BGPD, Zebra} {
		if _, err := os.Stat(exe); err != nil {
			return nil, fmt.Errorf("FRR is not installed (internal/testenv/setup.sh installs it): %w", err)
		}
		fs, err := vm.WithLibs(exe)
		if err != nil {
			return nil, err
		}
		maps.Copy(files, fs)
	}
	ip, err := exec.LookPath("ip")
	if err == nil {
		ip, err = filepath.EvalSymlinks(ip)
	}
	if err != nil {
		return nil, fmt.Errorf("iproute2's ip: %w", err)
	}
	fs, err := vm.WithLibs(ip)
	if err != nil {
		return nil, err
	}
	delete(fs, ip)
	maps.Copy(files, fs)
	files[GuestIP] = ip
	return files, nil
}

// Start starts director i (1-based).
func (l *Lab) Start(i int) error { return l.Directors[i-1].Start() }

// StartAll starts every director.
func (l *Lab) StartAll() error {
	for i := range l.Directors {
		if err := l.Start(i + 1); err != nil {
			return err
		}
	}
	return nil
}

// Close stops everything and removes the namespaces.
func (l *Lab) Close() {
	for _, d := range l.Directors {
		d.Kill()
	}
	for _, c := range l.frr {
		_ = c.Process.Kill()
		_ = c.Wait()
	}
	for _, ln := range l.servers {
		_ = ln.Close()
	}
	if l.Client != nil {
		_ = l.Client.Close()
	}
	_ = l.lan.Close()
}

// Plug puts director i's cable in or pulls it: a dead host, as the router
// sees it (no FIN, no keepalive: the hold time runs out).
func (l *Lab) Plug(i int, in bool) error { return l.lan.SetPort(fmt.Sprintf("d%d", i), in) }

// Once opens one connection from the client's port sport to the VIP,
// sends a line, reads the echo and closes it with a reset (SO_LINGER 0),
// so the same 5-tuple can be used again at once. It returns the name of
// the real server that answered.
func (l *Lab) Once(ctx context.Context, sport uint16) (string, error) {
	var c net.Conn
	err := l.Client.Do(func() (err error) {
		d := net.Dialer{Timeout: 5 * time.Second, LocalAddr: &net.TCPAddr{IP: ClientAddr.Addr().AsSlice(), Port: int(sport)},
			Control: func(_, _ string, rc syscall.RawConn) error {
				var serr error
				err := rc.Control(func(fd uintptr) {
					serr = syscall.SetsockoptInt(int(fd), syscall.SOL_SOCKET, syscall.SO_REUSEADDR, 1)
				})
				return errors.Join(err, serr)
			}}
		c, err = d.DialContext(ctx, "tcp", Target.String())
		return err
	})
	if err != nil {
		return "", err
	}
	defer func() {
		_ = c.(*net.TCPConn).SetLinger(0)
		_ = c.Close()
	}()
	_ = c.SetDeadline(time.Now().Add(10 * time.Second))
	if _, err := fmt.Fprintf(c, "0\n"); err != nil {
		return "", err
	}
	buf := make([]byte, 64)
	n, err := c.Read(buf)
	if err != nil {
		return "", err
	}
	name, _, _ := strings.Cut(strings.TrimSpace(string(buf[:n])), " ")
	return name, nil
}

// Conns counts the client's ESTABLISHED connections in director i's IPVS
// table and, per real server name, over all of them.
func (l *Lab) Conns(i int) (int, map[string]int, error) {
	es, err := lab.IPVSConns(l.Directors[i-1].Node.NS)
	if err != nil {
		return 0, nil, err
	}
	n, per := 0, map[string]int{}
	for _, e := range es {
		if e.Client.Addr() == ClientAddr.Addr() && e.State == "ESTABLISHED" {
			n++
			per[WebName(e.Dest.Addr())]++
		}
	}
	return n, per, nil
}

// Duplicates lists the client's connections in more than one director's
// IPVS table, with their states there (for failure messages).
func (l *Lab) Duplicates() string {
	where := map[netip.AddrPort][]string{}
	for i, d := range l.Directors {
		es, err := lab.IPVSConns(d.Node.NS)
		if err != nil {
			return err.Error()
		}
		for _, e := range es {
			if e.Client.Addr() == ClientAddr.Addr() {
				where[e.Client] = append(where[e.Client], fmt.Sprintf("d%d %s -> %s", i+1, e.State, WebName(e.Dest.Addr())))
			}
		}
	}
	var out []string
	for c, w := range where {
		if len(w) > 1 {
			out = append(out, fmt.Sprintf("%v: %s", c, strings.Join(w, ", ")))
		}
	}
	slices.Sort(out)
	return strings.Join(out, "; ")
}

// WebName names a web by address as its echo does.
func WebName(a netip.Addr) string {
	b := a.As4()
	if b[0] == 10 && b[1] == 0 && b[2] == 0 && b[3] > 10 && b[3] < 20 {
		return fmt.Sprintf("web%d", b[3]-10)
	}
	return a.String()
}

// TotalConns is director i's IPVS count of connections ever scheduled
// (the first column of /proc/net/ip_vs_stats, hexadecimal). On the VM's
// 6.1 kernel the estimator refreshes it every 2 s: it lags by that much.
func (l *Lab) TotalConns(i int) (uint64, error) {
	b, err := l.procNet(i, "ip_vs_stats")
	if err != nil {
		return 0, err
	}
	lines := strings.Split(strings.TrimSpace(b), "\n")
	if len(lines) < 3 || len(strings.Fields(lines[2])) == 0 {
		return 0, fmt.Errorf("d%d: ip_vs_stats %q", i, b)
	}
	return strconv.ParseUint(strings.Fields(lines[2])[0], 16, 64)
}

// Weights are director i's IPVS weights of the VIP service's real
// servers, by name.
func (l *Lab) Weights(i int) (map[string]int, error) {
	b, err := l.procNet(i, "ip_vs")
	if err != nil {
		return nil, err
	}
	ws := map[string]int{}
	for _, line := range strings.Split(b, "\n") {
		f := strings.Fields(line)
		// "  -> 0A00000B:0050      Route   1      0          0"
		if len(f) < 4 || f[0] != "->" {
			continue
		}
		hexAddr, _, _ := strings.Cut(f[1], ":")
		v, err := strconv.ParseUint(hexAddr, 16, 32)
		if err != nil {
			continue // the header line
		}
		w, err := strconv.Atoi(f[3])
		if err != nil {
			return nil, fmt.Errorf("d%d: ip_vs line %q", i, line)
		}
		ws[WebName(netip.AddrFrom4([4]byte{byte(v >> 24), byte(v >> 16), byte(v >> 8), byte(v)}))] = w
	}
	return ws, nil
}

// Sysctl reads a sysctl in director i's namespace.
func (l *Lab) Sysctl(i int, key string) (string, error) {
	var b []byte
	err := l.Directors[i-1].Node.Do(func() (err error) {
		b, err = os.ReadFile("/proc/sys/" + strings.ReplaceAll(key, ".", "/"))
		return err
	})
	return strings.TrimSpace(string(b)), err
}

func (l *Lab) procNet(i int, name string) (string, error) {
	var b []byte
	err := l.Directors[i-1].Node.Do(func() (err error) {
		// /proc/net follows the process's first thread, not this one.
		b, err = os.ReadFile("/proc/thread-self/net/" + name)
		return err
	})
	if err != nil {
		return "", fmt.Errorf("d%d: %s: %w", i, name, err)
	}
	return string(b), nil
}

type syncBuffer struct {
	mu sync.Mutex
	b  strings.Builder
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}
