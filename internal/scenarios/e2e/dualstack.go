package e2e

import (
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"

	"github.com/lvsha/lvsha/internal/director/control"
	"github.com/lvsha/lvsha/internal/testenv/netns"
)

// The dual-stack seed topology: 2001:db8:94::/64 beside 192.168.94.0/24,
// the same host numbers.
var (
	VIP6        = netip.MustParseAddr("2001:db8:94::200")
	dualPrefix6 = "2001:db8:94::"
)

// DualStackReport is what RunDualStack measured.
type DualStackReport struct {
	Takeover time.Duration // SIGKILL of director1 to director2 MASTER of the IPv6 instance
	Outage   time.Duration // longest gap between IPv6 replies around the kill
	Out6     time.Duration // a stopped IPv6 server to weight 0 in the IPv6 service
}

// dualWeb is a web host's HTTP servers, one per family, so that the IPv6
// one can stop while the IPv4 one goes on: then only the IPv6 health check
// can see the difference.
type dualWeb struct {
	node *netns.Node
	srv  map[string]*http.Server // by network: tcp4, tcp6
}

func (w *dualWeb) start(network string) error {
	var ln net.Listener
	if err := w.node.Do(func() (err error) {
		// tcp6 on the wildcard is IPv6-only (Go sets IPV6_V6ONLY).
		ln, err = net.Listen(network, fmt.Sprintf(":%d", ServicePort))
		return err
	}); err != nil {
		return fmt.Errorf("%s: listen %s: %w", w.node.Role, network, err)
	}
	body := fmt.Sprintf("this is %s over %s\n", w.node.Role, map[string]string{"tcp4": "IPv4", "tcp6": "IPv6"}[network])
	srv := &http.Server{Handler: http.HandlerFunc(func(rw http.ResponseWriter, _ *http.Request) {
		_, _ = io.WriteString(rw, body)
	}), ReadHeaderTimeout: 10 * time.Second}
	go func() { _ = srv.Serve(ln) }()
	w.srv[network] = srv
	return nil
}

func (w *dualWeb) stop(network string) {
	if srv := w.srv[network]; srv != nil {
		_ = srv.Close()
		delete(w.srv, network)
	}
}

// dualConfig is a director's config: one VRRP instance per family on the
// same VRID, one DR service per family over web1 and web2, http checks.
func dualConfig(t Tuning, priority int) string {
	var b strings.Builder
	fmt.Fprintf(&b, "[global]\ncontrol_socket = %q\nstate_dir = %q\n\n", t.ControlSocket, t.StateDir)
	for _, in := range []struct{ name, vip string }{{"VI_4", VIP.String() + "/24"}, {"VI_6", VIP6.String() + "/64"}} {
		fmt.Fprintf(&b, "[[vrrp_instance]]\nname = %q\ninterface = %q\nvirtual_router_id = 51\npriority = %d\nadvert_interval = %q\nvirtual_ipaddress = [%q]\n\n",
			in.name, t.Interface, priority, t.AdvertInterval, in.vip)
	}
	for _, svc := range []struct{ vip, web1, web2 string }{
		{netip.AddrPortFrom(VIP, ServicePort).String(), netip.AddrPortFrom(Web1Addr.Addr(), ServicePort).String(), netip.AddrPortFrom(Web2Addr.Addr(), ServicePort).String()},
		{netip.AddrPortFrom(VIP6, ServicePort).String(), "[" + dualPrefix6 + "134]:80", "[" + dualPrefix6 + "135]:80"},
	} {
		fmt.Fprintf(&b, "[[virtual_server]]\naddress = %q\nscheduler = \"rr\"\nforwarding = \"dr\"\n", svc.vip)
		fmt.Fprintf(&b, "[virtual_server.check]\ntype = \"http\"\npath = \"/\"\ninterval = %q\ntimeout = %q\nfall = %d\nrise = %d\n",
			t.CheckInterval, t.CheckTimeout, t.Fall, t.Rise)
		for _, rs := range []string{svc.web1, svc.web2} {
			fmt.Fprintf(&b, "[[virtual_server.real_server]]\naddress = %q\n", rs)
		}
		b.WriteString("\n")
	}
	return b.String()
}

// get6 sends one request to [VIP6]:80 from the client on a new connection
// (its own source port, see nextClientPort) and returns the body.
func get6(ctx context.Context, cli *netns.Node, timeout time.Duration) (string, error) {
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	var conn net.Conn
	if err := cli.Do(func() (err error) {
		d := net.Dialer{LocalAddr: &net.TCPAddr{Port: nextClientPort()}}
		conn, err = d.DialContext(ctx, "tcp6", netip.AddrPortFrom(VIP6, ServicePort).String())
		return err
	}); err != nil {
		return "", fmt.Errorf("client: connect to [%v]:%d: %w", VIP6, ServicePort, err)
	}
	defer conn.Close()
	dl, _ := ctx.Deadline()
	_ = conn.SetDeadline(dl)
	req := fmt.Sprintf("GET / HTTP/1.1\r\nHost: [%v]\r\nConnection: close\r\n\r\n", VIP6)
	if _, err := io.WriteString(conn, req); err != nil {
		return "", err
	}
	b, err := io.ReadAll(conn)
	if err != nil {
		return "", err
	}
	_, body, ok := strings.Cut(string(b), "\r\n\r\n")
	if !ok || !strings.HasPrefix(string(b), "HTTP/1.1 200") {
		return "", fmt.Errorf("bad response %q", b)
	}
	return strings.TrimSpace(body), nil
}

// RunDualStack runs the seed scenario dual stack in the VM: IPv6 requests
// to the IPv6 VIP go round robin to web1 and web2 with the replies
// bypassing the director, a SIGKILL failover moves the IPv6 VIP (the
// client's neighbour entry follows the unsolicited NAs), and a web whose
// IPv6 server stops is taken out of the IPv6 service by its IPv6 check
// while the IPv4 service keeps it.
func RunDualStack(ctx context.Context, lvsha, workDir string, logf func(string, ...any)) (_ *DualStackReport, err error) {
	if _, err := os.Stat("/proc/net/ip_vs"); err != nil {
		return nil, fmt.Errorf("no IPVS in this kernel (the scenario runs in the VM): %w", err)
	}
	rep := &DualStackReport{}
	var cleanups []func()
	defer func() {
		for i := len(cleanups) - 1; i >= 0; i-- {
			cleanups[i]()
		}
	}()
	lab, err := netns.NewLab(netns.UniquePrefix("e2e6"))
	if err != nil {
		return nil, err
	}
	cleanups = append(cleanups, func() { _ = lab.Close() })
	nodes := map[string]*netns.Node{}
	for _, n := range []struct {
		role string
		addr netip.Prefix
	}{{"client", ClientAddr}, {"director1", Dir1Addr}, {"director2", Dir2Addr}, {"web1", Web1Addr}, {"web2", Web2Addr}} {
		node, err := lab.AddNode(n.role, n.addr)
		if err != nil {
			return nil, err
		}
		host := n.addr.Addr().As4()[3]
		if err := addAddr6(node, netip.MustParsePrefix(fmt.Sprintf("%s%d/64", dualPrefix6, host))); err != nil {
			return nil, fmt.Errorf("%s: %w", n.role, err)
		}
		nodes[n.role] = node
	}
	cli := nodes["client"]
	webs := map[string]*dualWeb{}
	for _, role := range []string{"web1", "web2"} {
		w := &dualWeb{node: nodes[role], srv: map[string]*http.Server{}}
		stateDir := "/run/lvsha-dual-" + role
		args := []string{"realserver", "up", "--vip", VIP.String(), "--vip", VIP6.String(), "--interface", "eth0", "--state-dir", stateDir}
		if out, err := w.node.Run(lvsha, args...); err != nil {
			return nil, fmt.Errorf("%s: lvsha %s: %w: %s", role, strings.Join(args, " "), err, out)
		}
		cleanups = append(cleanups, func() {
			_, _ = w.node.Run(lvsha, "realserver", "down", "--vip", VIP.String(), "--vip", VIP6.String(), "--interface", "eth0", "--state-dir", stateDir)
		})
		for _, network := range []string{"tcp4", "tcp6"} {
			if err := w.start(network); err != nil {
				return nil, err
			}
		}
		cleanups = append(cleanups, func() { w.stop("tcp4"); w.stop("tcp6") })
		webs[role] = w
	}
	logf("web1, web2: lvsha realserver up with %v and %v on lo; HTTP over IPv4 and IPv6", VIP, VIP6)

	t := DefaultTuning()
	dirs := map[string]*director{}
	for role, prio := range map[string]int{"director1": 150, "director2": 100} {
		d := newDirector(role, nodes[role], lvsha, workDir)
		d.socket = filepath.Join("/run/lvsha", role+"-dual.sock")
		tu := t
		tu.ControlSocket, tu.StateDir = d.socket, filepath.Join(workDir, role+"-dual-state")
		d.config = filepath.Join(workDir, role+"-dual.toml")
		if err := d.writeConfig(dualConfig(tu, prio)); err != nil {
			return nil, err
		}
		if out, err := d.checkConfig(); err != nil {
			return nil, fmt.Errorf("%w\n%s", err, out)
		}
		if err := d.start(); err != nil {
			return nil, err
		}
		cleanups = append(cleanups, func() { d.stop(5 * time.Second) })
		dirs[role] = d
	}
	d1, d2 := dirs["director1"], dirs["director2"]
	if _, err := waitFor(ctx, "director1 MASTER of both instances, director2 BACKUP", 20*time.Second, 20*time.Millisecond, func() error {
		return instancesIn(ctx, map[*director]string{d1: "MASTER", d2: "BACKUP"})
	}); err != nil {
		return nil, err
	}
	if _, err := waitFor(ctx, "the IPv6 service programmed with both webs up", 20*time.Second, 50*time.Millisecond, func() error {
		return realsIn(ctx, d1, "[2001:db8:94::134]:80", "up", 1)
	}); err != nil {
		return nil, err
	}

	// Round robin over IPv6, replies bypassing the director.
	before, err := readIPVSStats(d1.node.NS)
	if err != nil {
		return nil, err
	}
	var got []string
	for i := range 10 {
		body, err := get6(ctx, cli, 5*time.Second)
		if err != nil {
			return nil, fmt.Errorf("IPv6 request %d: %w", i+1, err)
		}
		got = append(got, body)
	}
	if err := alternates(got, "this is web1 over IPv6", "this is web2 over IPv6"); err != nil {
		return nil, err
	}
	var st ipvsStats
	if _, err := waitFor(ctx, "director1's IPVS counters to count the IPv6 connections", 10*time.Second, 100*time.Millisecond, func() error {
		if st, err = readIPVSStats(d1.node.NS); err != nil {
			return fatalError{err}
		}
		if st.Conns < before.Conns+10 {
			return fmt.Errorf("%+v", st)
		}
		return nil
	}); err != nil {
		return nil, err
	}
	if st.InPkts == before.InPkts || st.OutPkts != 0 {
		return nil, fmt.Errorf("director1's IPVS counters %+v (before %+v): want incoming packets and none outgoing (direct routing)", st, before)
	}
	logf("PASS: 10 IPv6 requests alternate web1/web2; director1 forwarded %d packets in, 0 out", st.InPkts-before.InPkts)

	// Failover: SIGKILL, cable pulled (as e2e's failoverStep explains).
	killAt := time.Now()
	if err := d1.signal(syscall.SIGKILL); err != nil {
		return nil, err
	}
	if err := lab.SetPort("director1", false); err != nil {
		return nil, err
	}
	if _, err := waitFor(ctx, "director2 MASTER of VI_6", 10*time.Second, 5*time.Millisecond, func() error {
		return instancesIn(ctx, map[*director]string{d2: "MASTER"})
	}); err != nil {
		return nil, err
	}
	rep.Takeover = time.Since(killAt)
	if st2, err := d2.status(ctx); err == nil {
		for _, v := range st2.VRRP {
			if v.Name == "VI_6" && v.Since.After(killAt) {
				rep.Takeover = v.Since.Sub(killAt)
			}
		}
	}
	lastOK := killAt
	if _, err := waitFor(ctx, "IPv6 requests to succeed through director2", 20*time.Second, 10*time.Millisecond, func() error {
		if _, err := get6(ctx, cli, 300*time.Millisecond); err != nil {
			return err
		}
		lastOK = time.Now()
		return nil
	}); err != nil {
		return nil, err
	}
	rep.Outage = lastOK.Sub(killAt)
	mac, err := cli.NeighbourMAC(VIP6)
	if err != nil || mac.String() != nodes["director2"].MAC.String() {
		return nil, fmt.Errorf("client's neighbour entry for %v: %v %v, want director2's %v", VIP6, mac, err, nodes["director2"].MAC)
	}
	logf("PASS: SIGKILL of director1: director2 MASTER of VI_6 after %v, IPv6 requests answered again within %v; the client's neighbour entry for %v is director2's MAC",
		rep.Takeover.Round(time.Millisecond), rep.Outage.Round(time.Millisecond), VIP6)

	// web1's IPv6 server stops: its IPv6 check takes it out of the IPv6
	// service only.
	stopAt := time.Now()
	webs["web1"].stop("tcp6")
	if _, err := waitFor(ctx, "web1 down in the IPv6 service", t.FailBound()+5*time.Second, 20*time.Millisecond, func() error {
		return realsIn(ctx, d2, "[2001:db8:94::134]:80", "down", 0)
	}); err != nil {
		return nil, err
	}
	rep.Out6 = time.Since(stopAt)
	if err := realsIn(ctx, d2, netip.AddrPortFrom(Web1Addr.Addr(), ServicePort).String(), "up", 1); err != nil {
		return nil, fmt.Errorf("the IPv4 service after web1's IPv6 server stopped: %w", err)
	}
	for i := range 4 {
		body, err := get6(ctx, cli, 5*time.Second)
		if err != nil {
			st, _ := d2.status(ctx)
			return nil, fmt.Errorf("IPv6 request %d with web1 out: %w (director2: %s)", i+1, err, describeChecks(st))
		}
		if body != "this is web2 over IPv6" {
			return nil, fmt.Errorf("IPv6 request %d with web1 out went to %q", i+1, body)
		}
	}
	logf("PASS: web1's IPv6 server stopped: out of the IPv6 service within %v (bound %v), still up in the IPv4 one; IPv6 requests go to web2",
		rep.Out6.Round(time.Millisecond), t.FailBound())
	return rep, nil
}

// addAddr6 adds p to the node's eth0 without duplicate address detection
// (the VM's busybox ip knows no nodad).
func addAddr6(node *netns.Node, p netip.Prefix) error {
	h, err := node.Handle()
	if err != nil {
		return err
	}
	defer h.Close()
	link, err := h.LinkByName("eth0")
	if err != nil {
		return fmt.Errorf("eth0: %w", err)
	}
	a := &netlink.Addr{IPNet: &net.IPNet{IP: p.Addr().AsSlice(), Mask: net.CIDRMask(p.Bits(), 128)}, Flags: unix.IFA_F_NODAD}
	if err := h.AddrAdd(link, a); err != nil {
		return fmt.Errorf("add %v to eth0: %w", p, err)
	}
	return nil
}

// instancesIn checks that every VRRP instance of each director is in the
// state given.
func instancesIn(ctx context.Context, want map[*director]string) error {
	for d, state := range want {
		st, err := d.status(ctx)
		if err != nil {
			return err
		}
		if len(st.VRRP) != 2 {
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

// realsIn checks one real server's health and kernel weight in d's status.
func realsIn(ctx context.Context, d *director, addr, health string, weight int) error {
	st, err := d.status(ctx)
	if err != nil {
		return err
	}
	r, ok := findReal(st, addr)
	if !ok {
		return fmt.Errorf("%s: no real server %s in %s", d.name, addr, describe(st))
	}
	if r.Health != health || r.KernelWeight != weight {
		return fmt.Errorf("%s: %s is %s with kernel weight %d", d.name, addr, r.Health, r.KernelWeight)
	}
	return nil
}

// describeChecks lists every real server with its last check result.
func describeChecks(st *control.Status) string {
	if st == nil {
		return "no status"
	}
	var b strings.Builder
	for _, s := range st.Services {
		for _, r := range s.Reals {
			fmt.Fprintf(&b, "%s %s weight %d (%s %s); ", r.Address, r.Health, r.KernelWeight, r.LastResult, r.LastError)
		}
	}
	return b.String()
}

func describe(st *control.Status) string {
	if st == nil {
		return "no status"
	}
	return describeReals(st)
}
