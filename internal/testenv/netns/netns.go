// Package netns builds throw-away network topologies for lvsha's tests and
// benchmarks: named network namespaces joined by veth pairs to a bridge that
// lives in a namespace of its own, so nothing touches the host's network.
// It also runs commands and Go code inside a namespace and reads a
// namespace's neighbour (ARP) table. Everything needs root.
package netns

import (
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"time"

	"github.com/vishvananda/netlink"
	vnetns "github.com/vishvananda/netns"
	"golang.org/x/sys/unix"
)

// NS is a named network namespace (a bind mount under /run/netns, so that
// `ip netns exec NAME` works on it too).
type NS struct {
	Name string
	h    vnetns.NsHandle
}

// New creates the named namespace with lo up. An old namespace of the same
// name (left by a crashed run) is deleted first.
func New(name string) (_ *NS, err error) {
	if _, err := os.Stat(filepath.Join("/run/netns", name)); err == nil {
		_ = vnetns.DeleteNamed(name)
	}
	// NewNamed switches the calling thread into the new namespace: do it on
	// a locked thread and switch back. If switching back fails the thread
	// stays locked, so the runtime throws it away with the goroutine.
	errc := make(chan error, 1)
	var h vnetns.NsHandle
	go func() {
		runtime.LockOSThread()
		orig, err := vnetns.Get()
		if err != nil {
			errc <- fmt.Errorf("netns %s: current namespace: %w", name, err)
			return
		}
		defer orig.Close()
		h, err = vnetns.NewNamed(name)
		if serr := vnetns.Set(orig); serr != nil {
			errc <- errors.Join(err, fmt.Errorf("netns %s: back to original namespace: %w", name, serr))
			return
		}
		runtime.UnlockOSThread()
		errc <- err
	}()
	if err := <-errc; err != nil {
		return nil, fmt.Errorf("netns %s: create: %w", name, err)
	}
	n := &NS{Name: name, h: h}
	defer func() {
		if err != nil {
			n.Close()
		}
	}()
	nh, err := n.Handle()
	if err != nil {
		return nil, err
	}
	defer nh.Close()
	lo, err := nh.LinkByName("lo")
	if err == nil {
		err = nh.LinkSetUp(lo)
	}
	if err != nil {
		return nil, fmt.Errorf("netns %s: lo up: %w", name, err)
	}
	return n, nil
}

// Close deletes the namespace. Processes still running in it keep it alive
// until they exit.
func (n *NS) Close() error {
	n.h.Close()
	if err := vnetns.DeleteNamed(n.Name); err != nil && !errors.Is(err, os.ErrNotExist) {
		return fmt.Errorf("netns %s: delete: %w", n.Name, err)
	}
	return nil
}

// Path is the namespace's bind mount, usable by setns and `nsenter --net=`.
func (n *NS) Path() string { return filepath.Join("/run/netns", n.Name) }

// Handle opens a netlink handle inside the namespace. Only NETLINK_ROUTE:
// the default set also opens XFRM and NETFILTER sockets, which some kernels
// refuse. The caller closes it.
func (n *NS) Handle() (*netlink.Handle, error) {
	h, err := netlink.NewHandleAt(n.h, unix.NETLINK_ROUTE)
	if err != nil {
		return nil, fmt.Errorf("netns %s: netlink: %w", n.Name, err)
	}
	return h, nil
}

// Do runs f on a thread switched into the namespace. Sockets that f opens
// stay in the namespace after Do returns.
func (n *NS) Do(f func() error) error {
	errc := make(chan error, 1)
	go func() {
		runtime.LockOSThread()
		orig, err := vnetns.Get()
		if err != nil {
			errc <- fmt.Errorf("netns %s: current namespace: %w", n.Name, err)
			return
		}
		defer orig.Close()
		if err := vnetns.Set(n.h); err != nil {
			errc <- fmt.Errorf("netns %s: enter: %w", n.Name, err)
			return
		}
		ferr := f()
		if err := vnetns.Set(orig); err != nil {
			// Leave the thread locked: the runtime discards it.
			errc <- errors.Join(ferr, fmt.Errorf("netns %s: leave: %w", n.Name, err))
			return
		}
		runtime.UnlockOSThread()
		errc <- ferr
	}()
	return <-errc
}

// Start starts cmd inside the namespace: the child is forked from a thread
// that is in the namespace, so it and its children live there.
func (n *NS) Start(cmd *exec.Cmd) error {
	return n.Do(cmd.Start)
}

// Run runs a command inside the namespace and returns its combined output.
func (n *NS) Run(name string, args ...string) (string, error) {
	cmd := exec.Command(name, args...)
	var out strings.Builder
	cmd.Stdout, cmd.Stderr = &out, &out
	if err := n.Start(cmd); err != nil {
		return "", fmt.Errorf("netns %s: %s: %w", n.Name, name, err)
	}
	if err := cmd.Wait(); err != nil {
		return out.String(), fmt.Errorf("netns %s: %s %s: %w: %s", n.Name, name, strings.Join(args, " "), err, out.String())
	}
	return out.String(), nil
}

// Neighbour is one entry of a neighbour table.
type Neighbour struct {
	IP    netip.Addr
	MAC   net.HardwareAddr
	State int // netlink.NUD_*
}

// Neighbours returns the neighbour tables (ARP and NDP) of the namespace.
func (n *NS) Neighbours() ([]Neighbour, error) {
	h, err := n.Handle()
	if err != nil {
		return nil, err
	}
	defer h.Close()
	var list []netlink.Neigh
	for range 5 {
		list, err = h.NeighList(0, netlink.FAMILY_ALL)
		if !errors.Is(err, netlink.ErrDumpInterrupted) {
			break
		}
	}
	if err != nil {
		return nil, fmt.Errorf("netns %s: neighbours: %w", n.Name, err)
	}
	out := make([]Neighbour, 0, len(list))
	for _, e := range list {
		ip, ok := netip.AddrFromSlice(e.IP)
		if !ok {
			continue
		}
		out = append(out, Neighbour{IP: ip.Unmap(), MAC: e.HardwareAddr, State: e.State})
	}
	return out, nil
}

// NeighbourMAC returns the MAC the namespace's neighbour table holds for ip
// (nil if there is no usable entry).
func (n *NS) NeighbourMAC(ip netip.Addr) (net.HardwareAddr, error) {
	list, err := n.Neighbours()
	if err != nil {
		return nil, err
	}
	for _, e := range list {
		if e.IP == ip && len(e.MAC) > 0 && e.State&(netlink.NUD_INCOMPLETE|netlink.NUD_FAILED) == 0 {
			return e.MAC, nil
		}
	}
	return nil, nil
}

// Addrs returns the addresses (IPv4 and IPv6) of an interface in the namespace.
func (n *NS) Addrs(ifname string) ([]netip.Prefix, error) {
	h, err := n.Handle()
	if err != nil {
		return nil, err
	}
	defer h.Close()
	l, err := h.LinkByName(ifname)
	if err != nil {
		return nil, fmt.Errorf("netns %s: %s: %w", n.Name, ifname, err)
	}
	list, err := h.AddrList(l, netlink.FAMILY_ALL)
	if err != nil {
		return nil, fmt.Errorf("netns %s: addresses of %s: %w", n.Name, ifname, err)
	}
	var out []netip.Prefix
	for _, a := range list {
		ip, _ := netip.AddrFromSlice(a.IP)
		ones, _ := a.Mask.Size()
		out = append(out, netip.PrefixFrom(ip.Unmap(), ones))
	}
	return out, nil
}

// HasAddr reports whether ifname in the namespace holds ip.
func (n *NS) HasAddr(ifname string, ip netip.Addr) (bool, error) {
	list, err := n.Addrs(ifname)
	if err != nil {
		return false, err
	}
	for _, p := range list {
		if p.Addr() == ip {
			return true, nil
		}
	}
	return false, nil
}

// SetLink sets an interface of the namespace up or down.
func (n *NS) SetLink(ifname string, up bool) error {
	h, err := n.Handle()
	if err != nil {
		return err
	}
	defer h.Close()
	l, err := h.LinkByName(ifname)
	if err != nil {
		return fmt.Errorf("netns %s: %s: %w", n.Name, ifname, err)
	}
	if up {
		err = h.LinkSetUp(l)
	} else {
		err = h.LinkSetDown(l)
	}
	if err != nil {
		return fmt.Errorf("netns %s: set %s up=%v: %w", n.Name, ifname, up, err)
	}
	return nil
}

// Lab is a LAN: a bridge in its own namespace and nodes, each a namespace
// whose eth0 is a veth plugged into the bridge.
type Lab struct {
	Prefix string
	Bridge *NS
	Nodes  map[string]*Node
	order  []*Node
}

// Node is a namespace on the lab's LAN.
type Node struct {
	*NS
	Role string
	Addr netip.Prefix     // address of eth0
	MAC  net.HardwareAddr // MAC of eth0
	Port string           // the veth end in the bridge namespace
}

// BridgeName is the bridge's name inside the lab's bridge namespace.
const BridgeName = "br0"

const isolationBridge = "br-iso"

// NewLab creates the bridge namespace. prefix must be unique to the caller
// (e.g. "lvv123-"): every namespace of the lab is named prefix+role, and
// stale namespaces with that prefix are removed first.
func NewLab(prefix string) (_ *Lab, err error) {
	Cleanup(prefix)
	l := &Lab{Prefix: prefix, Nodes: map[string]*Node{}}
	if l.Bridge, err = New(prefix + "br"); err != nil {
		return nil, err
	}
	defer func() {
		if err != nil {
			l.Close()
		}
	}()
	h, err := l.Bridge.Handle()
	if err != nil {
		return nil, err
	}
	defer h.Close()
	// The second bridge holds isolated ports (see Isolate).
	for _, name := range []string{BridgeName, isolationBridge} {
		// No multicast snooping: VRRP's group must reach every port.
		br := &netlink.Bridge{LinkAttrs: netlink.LinkAttrs{Name: name}, MulticastSnooping: new(bool)}
		if err := h.LinkAdd(br); err != nil {
			return nil, fmt.Errorf("lab %s: add bridge %s: %w", prefix, name, err)
		}
		if err := h.LinkSetUp(br); err != nil {
			return nil, fmt.Errorf("lab %s: bridge %s up: %w", prefix, name, err)
		}
	}
	return l, nil
}

// AddNode creates namespace prefix+role with eth0 (address addr) on the LAN.
func (l *Lab) AddNode(role string, addr netip.Prefix) (_ *Node, err error) {
	ns, err := New(l.Prefix + role)
	if err != nil {
		return nil, err
	}
	node := &Node{NS: ns, Role: role, Addr: addr, Port: "p-" + role}
	if len(node.Port) > 15 {
		node.Port = node.Port[:15]
	}
	l.Nodes[role] = node
	l.order = append(l.order, node)
	if err := l.plug(node); err != nil {
		return nil, err
	}
	return node, nil
}

// Recreate deletes a node's eth0 and makes a new one with the same name and
// address (a new ifindex and MAC), as a network manager rebuilding a VLAN
// or bond does.
func (l *Lab) Recreate(role string) error {
	n, ok := l.Nodes[role]
	if !ok {
		return fmt.Errorf("lab: no node %q", role)
	}
	bh, err := l.Bridge.Handle()
	if err != nil {
		return err
	}
	defer bh.Close()
	port, err := bh.LinkByName(n.Port)
	if err != nil {
		return fmt.Errorf("lab: port %s: %w", n.Port, err)
	}
	// Deleting one end of a veth pair deletes the other, eth0.
	if err := bh.LinkDel(port); err != nil {
		return fmt.Errorf("lab: delete %s: %w", n.Port, err)
	}
	return l.plug(n)
}

// plug gives node a veth pair: eth0 in its namespace with its address, up,
// and its port on the bridge.
func (l *Lab) plug(node *Node) error {
	role, addr, ns := node.Role, node.Addr, node.NS
	bh, err := l.Bridge.Handle()
	if err != nil {
		return err
	}
	defer bh.Close()
	veth := &netlink.Veth{
		LinkAttrs:     netlink.LinkAttrs{Name: node.Port},
		PeerName:      "eth0",
		PeerNamespace: netlink.NsFd(ns.h),
	}
	if err := bh.LinkAdd(veth); err != nil {
		return fmt.Errorf("lab: veth for %s: %w", role, err)
	}
	port, err := bh.LinkByName(node.Port)
	if err != nil {
		return fmt.Errorf("lab: port %s: %w", node.Port, err)
	}
	br, err := bh.LinkByName(BridgeName)
	if err != nil {
		return fmt.Errorf("lab: bridge: %w", err)
	}
	if err := bh.LinkSetMaster(port, br); err != nil {
		return fmt.Errorf("lab: plug %s: %w", node.Port, err)
	}
	if err := bh.LinkSetUp(port); err != nil {
		return fmt.Errorf("lab: port %s up: %w", node.Port, err)
	}
	nh, err := ns.Handle()
	if err != nil {
		return err
	}
	defer nh.Close()
	eth, err := nh.LinkByName("eth0")
	if err != nil {
		return fmt.Errorf("lab: %s eth0: %w", role, err)
	}
	node.MAC = eth.Attrs().HardwareAddr
	if addr.IsValid() {
		a := &netlink.Addr{IPNet: &net.IPNet{IP: addr.Addr().AsSlice(), Mask: net.CIDRMask(addr.Bits(), 32)}}
		if err := nh.AddrAdd(eth, a); err != nil {
			return fmt.Errorf("lab: %s address %s: %w", role, addr, err)
		}
	}
	if err := nh.LinkSetUp(eth); err != nil {
		return fmt.Errorf("lab: %s eth0 up: %w", role, err)
	}
	return nil
}

// SetPort plugs (up) or unplugs (down) a node's port on the bridge: the
// node's eth0 loses carrier as if its cable were pulled.
func (l *Lab) SetPort(role string, up bool) error {
	n, ok := l.Nodes[role]
	if !ok {
		return fmt.Errorf("lab: no node %q", role)
	}
	return l.Bridge.SetLink(n.Port, up)
}

// Isolate moves a node's port to a second, empty bridge (isolated) or back
// to the LAN: the node's link stays up but it can reach nobody, which is how
// a split brain looks to VRRP.
func (l *Lab) Isolate(role string, isolated bool) error {
	n, ok := l.Nodes[role]
	if !ok {
		return fmt.Errorf("lab: no node %q", role)
	}
	h, err := l.Bridge.Handle()
	if err != nil {
		return err
	}
	defer h.Close()
	port, err := h.LinkByName(n.Port)
	if err != nil {
		return fmt.Errorf("lab: port %s: %w", n.Port, err)
	}
	target := BridgeName
	if isolated {
		target = isolationBridge
	}
	br, err := h.LinkByName(target)
	if err != nil {
		return fmt.Errorf("lab: bridge %s: %w", target, err)
	}
	if err := h.LinkSetMaster(port, br); err != nil {
		return fmt.Errorf("lab: move %s to %s: %w", n.Port, target, err)
	}
	return nil
}

// Close deletes every namespace of the lab.
func (l *Lab) Close() error {
	var errs []error
	for i := len(l.order) - 1; i >= 0; i-- {
		errs = append(errs, l.order[i].Close())
	}
	if l.Bridge != nil {
		errs = append(errs, l.Bridge.Close())
	}
	return errors.Join(errs...)
}

// Cleanup deletes namespaces whose names start with prefix (left over by a
// crashed run). An empty prefix does nothing.
func Cleanup(prefix string) {
	if prefix == "" {
		return
	}
	entries, _ := os.ReadDir("/run/netns")
	for _, e := range entries {
		if strings.HasPrefix(e.Name(), prefix) {
			_ = vnetns.DeleteNamed(e.Name())
		}
	}
}

// UniquePrefix returns a short namespace-name prefix unique to this process
// and tag, e.g. "lvv-1234-" for tag "lvv".
func UniquePrefix(tag string) string {
	return fmt.Sprintf("%s%d-", tag, os.Getpid()%100000)
}

// WaitFor polls cond every interval until it returns true or timeout passes.
func WaitFor(timeout, interval time.Duration, cond func() bool) bool {
	deadline := time.Now().Add(timeout)
	for {
		if cond() {
			return true
		}
		if time.Now().After(deadline) {
			return false
		}
		time.Sleep(interval)
	}
}
