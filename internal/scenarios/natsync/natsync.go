// Package natsync proves that a pair of lvsha directors in NAT mode is
// highly available with a sync group: each director has an outside
// interface holding the VIP (instance "outside") and an inside one holding
// the real servers' default gateway (instance "inside"); IPVS rewrites the
// VIP to a real server on the way in and back on the way out, so the
// answers must go back through the director that took the request. With
// both instances in one [[sync_group]] they move together whichever side
// fails; without it an inside failure splits them across the directors and
// requests fail. It runs inside the QEMU VM (internal/testenv/vm), whose
// kernel has IPVS.
package natsync

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"time"

	"github.com/lvsha/lvsha/internal/director/control"
	"github.com/lvsha/lvsha/internal/scenarios/connsync"
	"github.com/lvsha/lvsha/internal/testenv/lab"
	"github.com/lvsha/lvsha/internal/testenv/netns"
	"github.com/vishvananda/netlink"
)

// GuestLvsha is where the lvsha binary is inside the VM.
const GuestLvsha = "/usr/sbin/lvsha"

// The two networks. Only the directors are on both; the client never sees
// an inside address (IPVS NAT rewrites it).
var (
	Client    = netip.MustParsePrefix("10.98.0.10/24")
	OutsideIP = [2]netip.Prefix{netip.MustParsePrefix("10.98.0.2/24"), netip.MustParsePrefix("10.98.0.3/24")}
	VIP       = netip.MustParsePrefix("10.98.0.100/24")
	InsideIP  = [2]netip.Prefix{netip.MustParsePrefix("10.99.0.2/24"), netip.MustParsePrefix("10.99.0.3/24")}
	Gateway   = netip.MustParsePrefix("10.99.0.1/24") // the real servers' default route
	Webs      = []netip.Prefix{netip.MustParsePrefix("10.99.0.11/24"), netip.MustParsePrefix("10.99.0.12/24")}
)

// Port is the service port.
const Port = 80

// Instances are the VRRP instances' names, outside first.
var Instances = []string{"outside", "inside"}

// Options are one run's settings.
type Options struct {
	Lvsha     string // the binary; default GuestLvsha
	WorkDir   string // configs and logs; default /tmp/lvsha-natsync-<tag>
	SyncGroup bool   // both instances in one [[sync_group]]
	// Preempt lets director1 (priority 150) take both instances back
	// when it recovers; without it the master stays where it is.
	Preempt bool
}

// Topology is one lab: a client on the outside network, two directors on
// both, two web servers on the inside network.
type Topology struct {
	o           Options
	outside     *netns.Lab
	inside      *netns.Lab
	Client      *netns.Node
	D           [2]*Director
	webs        []*netns.Node
	servers     []*http.Server
	insidePorts [2]string // each director's eth1 port on the inside bridge
}

// New builds both networks and writes the directors' configs (checked
// with lvsha -t); Start runs a director.
func New(tag string, o Options) (_ *Topology, err error) {
	if o.Lvsha == "" {
		o.Lvsha = GuestLvsha
	}
	if o.WorkDir == "" {
		o.WorkDir = "/tmp/lvsha-natsync-" + tag
	}
	if err := os.MkdirAll(o.WorkDir, 0o755); err != nil {
		return nil, fmt.Errorf("natsync: %w", err)
	}
	t := &Topology{o: o}
	defer func() {
		if err != nil {
			t.Close()
		}
	}()
	if t.outside, err = netns.NewLab(netns.UniquePrefix("no" + tag)); err != nil {
		return nil, err
	}
	if t.inside, err = netns.NewLab(netns.UniquePrefix("ni" + tag)); err != nil {
		return nil, err
	}
	if t.Client, err = t.outside.AddNode("client", Client); err != nil {
		return nil, err
	}
	for i := range t.D {
		name := fmt.Sprintf("director%d", i+1)
		n, err := t.outside.AddNode(name, OutsideIP[i])
		if err != nil {
			return nil, err
		}
		t.insidePorts[i] = "q-" + name
		if err := attach(t.inside.Bridge, n.NS, t.insidePorts[i], "eth1", InsideIP[i]); err != nil {
			return nil, err
		}
		// NAT: the answers are routed through the director.
		if err := lab.Sysctl(n.NS, "net.ipv4.ip_forward", "1"); err != nil {
			return nil, err
		}
		d := &Director{connsync.NewDirector(name, n, o.Lvsha, filepath.Join(o.WorkDir, name+".toml"),
			filepath.Join("/run/lvsha", "ns"+tag+"-"+name+".sock"), filepath.Join(o.WorkDir, name+".log"))}
		if err := os.WriteFile(d.Config, []byte(t.config(d, 150-50*i)), 0o644); err != nil {
			return nil, fmt.Errorf("natsync: %w", err)
		}
		if out, err := n.Run(o.Lvsha, "-t", "-f", d.Config); err != nil {
			return nil, fmt.Errorf("%s: lvsha -t: %w\n%s", name, err, out)
		}
		t.D[i] = d
	}
	for i, a := range Webs {
		name := fmt.Sprintf("web%d", i+1)
		n, err := t.inside.AddNode(name, a)
		if err != nil {
			return nil, err
		}
		t.webs = append(t.webs, n)
		if err := defaultRoute(n.NS, Gateway.Addr()); err != nil {
			return nil, err
		}
		srv, err := lab.ServeText(n.NS, netip.AddrPortFrom(netip.IPv4Unspecified(), Port), name+"\n")
		if err != nil {
			return nil, err
		}
		t.servers = append(t.servers, srv)
	}
	return t, nil
}

// config is a director's lvsha.toml.
func (t *Topology) config(d *Director, prio int) string {
	var b strings.Builder
	fmt.Fprintf(&b, "[global]\nrouter_id = %q\ncontrol_socket = %q\nstate_dir = %q\n\n", d.Name, d.Socket,
		filepath.Join(t.o.WorkDir, d.Name+"-state"))
	for i, in := range []struct {
		ifname string
		vip    netip.Prefix
	}{{"eth0", VIP}, {"eth1", Gateway}} {
		// Adverts every second: 100 ms made the emulated CPUs fail over
		// falsely under load.
		fmt.Fprintf(&b, "[[vrrp_instance]]\nname = %q\ninterface = %q\nvirtual_router_id = %d\npriority = %d\n"+
			"preempt = %v\nadvert_interval = \"1s\"\nvirtual_ipaddress = [\"%v\"]\n\n", Instances[i], in.ifname, 51+i, prio, t.o.Preempt, in.vip)
	}
	if t.o.SyncGroup {
		fmt.Fprintf(&b, "[[sync_group]]\nname = \"NAT\"\ninstances = [%q, %q]\n\n", Instances[0], Instances[1])
	}
	fmt.Fprintf(&b, "[[virtual_server]]\naddress = \"%v:%d\"\nscheduler = \"rr\"\nforwarding = \"nat\"\n", VIP.Addr(), Port)
	for _, w := range Webs {
		fmt.Fprintf(&b, "\n[[virtual_server.real_server]]\naddress = \"%v:%d\"\n", w.Addr(), Port)
	}
	return b.String()
}

// attach gives a node a second interface, ifname with addr, whose peer
// port is on the bridge of another lab's bridge namespace.
func attach(bridgeNS, node *netns.NS, port, ifname string, addr netip.Prefix) error {
	f, err := os.Open(node.Path())
	if err != nil {
		return fmt.Errorf("natsync: %w", err)
	}
	defer f.Close()
	bh, err := bridgeNS.Handle()
	if err != nil {
		return err
	}
	defer bh.Close()
	veth := &netlink.Veth{LinkAttrs: netlink.LinkAttrs{Name: port}, PeerName: ifname, PeerNamespace: netlink.NsFd(int(f.Fd()))}
	if err := bh.LinkAdd(veth); err != nil {
		return fmt.Errorf("natsync: veth %s: %w", port, err)
	}
	p, err := bh.LinkByName(port)
	if err != nil {
		return fmt.Errorf("natsync: %s: %w", port, err)
	}
	br, err := bh.LinkByName(netns.BridgeName)
	if err != nil {
		return fmt.Errorf("natsync: bridge: %w", err)
	}
	if err := bh.LinkSetMaster(p, br); err != nil {
		return fmt.Errorf("natsync: plug %s: %w", port, err)
	}
	if err := bh.LinkSetUp(p); err != nil {
		return fmt.Errorf("natsync: %s up: %w", port, err)
	}
	if err := lab.AddAddr(node, ifname, addr); err != nil {
		return err
	}
	return node.SetLink(ifname, true)
}

// defaultRoute routes the namespace's traffic through gw.
func defaultRoute(n *netns.NS, gw netip.Addr) error {
	h, err := n.Handle()
	if err != nil {
		return err
	}
	defer h.Close()
	if err := h.RouteAdd(&netlink.Route{Gw: gw.AsSlice()}); err != nil {
		return fmt.Errorf("natsync %s: default route via %v: %w", n.Name, gw, err)
	}
	return nil
}

// Unplug pulls (or puts back) a director's cable on one side: its bridge
// port goes down, so its interface loses carrier.
func (t *Topology) Unplug(i int, side string, unplugged bool) error {
	if side == "outside" {
		return t.outside.SetPort(t.D[i].Node.Role, !unplugged)
	}
	return t.inside.Bridge.SetLink(t.insidePorts[i], !unplugged)
}

// Close stops everything and removes the namespaces.
func (t *Topology) Close() {
	for _, d := range t.D {
		if d != nil {
			d.Stop()
		}
	}
	for _, s := range t.servers {
		_ = s.Close()
	}
	for _, l := range []*netns.Lab{t.inside, t.outside} {
		if l != nil {
			_ = l.Close()
		}
	}
}

// Announced says whether the hosts that use a VIP have it at d's MAC in
// their neighbour tables: the client for the outside VIP, the web servers
// for the gateway VIP. Only the new master's gratuitous ARPs move them
// quickly: an entry in use stays REACHABLE, then STALE, for tens of seconds.
func (t *Topology) Announced(d *Director) error {
	for _, c := range []struct {
		ifname string
		vip    netip.Addr
		hosts  []*netns.Node
	}{{"eth0", VIP.Addr(), []*netns.Node{t.Client}}, {"eth1", Gateway.Addr(), t.webs}} {
		want, err := d.MAC(c.ifname)
		if err != nil {
			return err
		}
		for _, h := range c.hosts {
			mac, err := h.NeighbourMAC(c.vip)
			if err != nil {
				return err
			}
			if mac.String() != want {
				return fmt.Errorf("%s has %v at %q, not at %s's %s", h.Role, c.vip, mac, d.Name, want)
			}
		}
	}
	return nil
}

// MAC is an interface's MAC in a director's namespace.
func (d *Director) MAC(ifname string) (string, error) {
	h, err := d.Node.Handle()
	if err != nil {
		return "", err
	}
	defer h.Close()
	l, err := h.LinkByName(ifname)
	if err != nil {
		return "", fmt.Errorf("%s: %s: %w", d.Name, ifname, err)
	}
	return l.Attrs().HardwareAddr.String(), nil
}

// Get makes one HTTP request to the VIP from the client on a new
// connection (so IPVS schedules each one) and returns the body.
func (t *Topology) Get(ctx context.Context, timeout time.Duration) (string, error) {
	c := lab.HTTPClient(t.Client.NS, false)
	c.Timeout = timeout
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, fmt.Sprintf("http://%v:%d/", VIP.Addr(), Port), nil)
	if err != nil {
		return "", err
	}
	resp, err := c.Do(req)
	if err != nil {
		return "", err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		return "", err
	}
	return strings.TrimSpace(string(b)), nil
}

// Answered makes n requests and fails unless all of them are answered and
// both web servers answered.
func (t *Topology) Answered(ctx context.Context, n int, timeout time.Duration) error {
	seen := map[string]int{}
	for range n {
		body, err := t.Get(ctx, timeout)
		if err != nil {
			return err
		}
		seen[body]++
	}
	if seen["web1"] == 0 || seen["web2"] == 0 || len(seen) != 2 {
		return fmt.Errorf("answers %v, want web1 and web2", seen)
	}
	return nil
}

// States are the directors' instance states, "director1 outside=MASTER
// inside=MASTER, director2 ...".
func (t *Topology) States(ctx context.Context) (string, error) {
	var parts []string
	for _, d := range t.D {
		s, err := d.States(ctx)
		if err != nil {
			return "", err
		}
		parts = append(parts, d.Name+" "+s)
	}
	return strings.Join(parts, ", "), nil
}

// Want formats the States answer for the given states, director1's
// outside and inside first.
func Want(d1out, d1in, d2out, d2in string) string {
	return fmt.Sprintf("director1 outside=%s inside=%s, director2 outside=%s inside=%s", d1out, d1in, d2out, d2in)
}

// WaitFor polls cond every 50 ms until it returns nil, at most timeout, and
// returns how long that took; the error carries cond's last answer.
func WaitFor(ctx context.Context, what string, timeout time.Duration, cond func() error) (time.Duration, error) {
	start := time.Now()
	for {
		err := cond()
		if err == nil {
			return time.Since(start), nil
		}
		if time.Since(start) > timeout {
			return time.Since(start), fmt.Errorf("timed out after %v waiting for %s: %w", timeout, what, err)
		}
		select {
		case <-ctx.Done():
			return time.Since(start), errors.Join(ctx.Err(), err)
		case <-time.After(50 * time.Millisecond):
		}
	}
}

// WaitStates waits until the directors' instances are in the wanted
// states (see Want).
func (t *Topology) WaitStates(ctx context.Context, want string) (time.Duration, error) {
	return WaitFor(ctx, want, 30*time.Second, func() error {
		got, err := t.States(ctx)
		if err == nil && got != want {
			err = errors.New(got)
		}
		return err
	})
}

// Director is a director of the lab: connsync's lvsha daemon, with what
// this scenario asks of it.
type Director struct{ *connsync.Director }

// States is "outside=STATE inside=STATE" as the status says.
func (d *Director) States(ctx context.Context) (string, error) {
	st, err := d.Status(ctx)
	if err != nil {
		return "", err
	}
	var s []string
	for _, name := range Instances {
		i := slices.IndexFunc(st.VRRP, func(v control.VRRPStatus) bool { return v.Name == name })
		if i < 0 {
			return "", fmt.Errorf("%s: no instance %s in status", d.Name, name)
		}
		s = append(s, name+"="+st.VRRP[i].State)
	}
	return strings.Join(s, " "), nil
}
