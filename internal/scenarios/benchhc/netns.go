package main

import (
	"fmt"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"strconv"

	"github.com/vishvananda/netlink"

	"github.com/lvsha/lvsha/internal/testenv/netns"
)

// The netns topology puts the checker and the HTTP servers on opposite ends
// of a veth pair, each in a namespace of its own and on a CPU of its own
// (checker on CPU 0, servers on CPU 1), with receive packet steering
// sending each side's incoming packets to its own CPU. On loopback the
// kernel runs the servers' TCP receive path inside the sending checker, so
// half of what the checker was charged was the servers' work; across the
// veth with RPS it is charged to CPU 1, as it would be on the real servers.
const (
	nsPrefix   = "lvsha-bhc-"
	checkerNS  = nsPrefix + "check"
	serversNS  = nsPrefix + "serve"
	checkerCPU = 0
	serversCPU = 1
)

var (
	checkerAddr = netip.MustParsePrefix("10.77.0.1/30")
	serversAddr = netip.MustParsePrefix("10.77.0.2/30")
	// The servers' namespace routes this whole /24 to lo (AnyIP), so
	// servers can listen on any of its addresses without adding each one.
	targetNet = netip.MustParsePrefix("10.77.1.0/24")
)

type topology struct{ check, serve *netns.NS }

func (t *topology) Close() {
	if t.check != nil {
		t.check.Close()
	}
	if t.serve != nil {
		t.serve.Close()
	}
}

func newTopology() (_ *topology, err error) {
	netns.Cleanup(nsPrefix)
	t := &topology{}
	defer func() {
		if err != nil {
			t.Close()
		}
	}()
	if t.check, err = netns.New(checkerNS); err != nil {
		return nil, err
	}
	if t.serve, err = netns.New(serversNS); err != nil {
		return nil, err
	}
	h, err := t.check.Handle()
	if err != nil {
		return nil, err
	}
	defer h.Close()
	nsf, err := os.Open(t.serve.Path())
	if err != nil {
		return nil, err
	}
	defer nsf.Close()
	veth := &netlink.Veth{LinkAttrs: netlink.LinkAttrs{Name: "eth0"}, PeerName: "eth0", PeerNamespace: netlink.NsFd(int(nsf.Fd()))}
	if err := h.LinkAdd(veth); err != nil {
		return nil, fmt.Errorf("veth: %w", err)
	}
	for _, side := range []struct {
		ns    *netns.NS
		addr  netip.Prefix
		route func(*netlink.Handle, netlink.Link) error
	}{
		{t.check, checkerAddr, func(h *netlink.Handle, l netlink.Link) error {
			return h.RouteAdd(&netlink.Route{LinkIndex: l.Attrs().Index, Dst: ipnet(targetNet),
				Gw: net.IP(serversAddr.Addr().AsSlice())})
		}},
		{t.serve, serversAddr, func(h *netlink.Handle, _ netlink.Link) error {
			lo, err := h.LinkByName("lo")
			if err != nil {
				return err
			}
			return h.RouteAdd(&netlink.Route{LinkIndex: lo.Attrs().Index, Dst: ipnet(targetNet),
				Type: 2 /* RTN_LOCAL */, Table: 255 /* local */, Scope: netlink.SCOPE_HOST})
		}},
	} {
		sh, err := side.ns.Handle()
		if err != nil {
			return nil, err
		}
		l, err := sh.LinkByName("eth0")
		if err == nil {
			err = sh.AddrAdd(l, &netlink.Addr{IPNet: ipnet(side.addr)})
		}
		if err == nil {
			err = sh.LinkSetUp(l)
		}
		if err == nil {
			err = side.route(sh, l)
		}
		sh.Close()
		if err != nil {
			return nil, fmt.Errorf("netns %s: eth0: %w", side.ns.Name, err)
		}
	}
	// rps_cpus is read through sysfs, which shows the devices of the
	// namespace it was mounted in: `ip netns exec` mounts a fresh one.
	for _, s := range []struct {
		ns  *netns.NS
		cpu int
	}{{t.check, checkerCPU}, {t.serve, serversCPU}} {
		mask := strconv.FormatInt(1<<s.cpu, 16)
		out, err := exec.Command("ip", "netns", "exec", s.ns.Name, "sh", "-c",
			"echo "+mask+" > /sys/class/net/eth0/queues/rx-0/rps_cpus").CombinedOutput()
		if err != nil {
			return nil, fmt.Errorf("netns %s: rps_cpus: %w: %s", s.ns.Name, err, out)
		}
	}
	return t, nil
}

func ipnet(p netip.Prefix) *net.IPNet {
	return &net.IPNet{IP: p.Addr().AsSlice(), Mask: net.CIDRMask(p.Bits(), p.Addr().BitLen())}
}

// inNS returns a command that runs exe with args in namespace ns, pinned
// to cpu (taskset sets the affinity before exec, so every thread of the
// Go program inherits it).
func inNS(ns string, cpu int, exe string, args ...string) *exec.Cmd {
	argv := append([]string{"netns", "exec", ns, "taskset", "-c", strconv.Itoa(cpu), exe}, args...)
	cmd := exec.Command("ip", argv...)
	cmd.Stderr = os.Stderr
	return cmd
}
