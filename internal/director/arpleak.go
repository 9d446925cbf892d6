package director

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"os"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/lvsha/lvsha/conf"
	"github.com/lvsha/lvsha/internal/director/control"
	"github.com/lvsha/lvsha/vrrp"

	"github.com/mdlayher/arp"
	"github.com/mdlayher/ethernet"
	"github.com/vishvananda/netlink"
)

// ARP-leak detection (README, "ARP-leak detection"): a DR real server must
// hold the VIP on lo without answering ARP for it. One that answers (its
// arp_ignore left at 0) competes with the master for the clients' and the
// router's ARP caches, and whoever it wins sends its traffic to that one
// server, past the director. The master asks who has the VIP, as a client
// would, and every answer from a MAC that is not its own is such a leak.

// arpLeak is one host that answered ARP for a VIP.
type arpLeak struct {
	VIP netip.Addr
	MAC net.HardwareAddr
	// IP is the host's address by the master's neighbour table (the MAC's
	// entry); invalid when the table has none.
	IP netip.Addr
}

// probeARP asks, on ifname, who has vip, and returns every host other than
// this one that answered within wait. The request is sent from the
// interface's own address (not the VIP): it must not move anyone's ARP
// entry for the VIP.
func probeARP(ifname string, vip netip.Addr, wait time.Duration) ([]arpLeak, error) {
	ifi, err := net.InterfaceByName(ifname)
	if err != nil {
		return nil, fmt.Errorf("arp probe: %w", err)
	}
	src, err := ownAddr(ifi, vip)
	if err != nil {
		return nil, err
	}
	c, err := arp.Dial(ifi)
	if err != nil {
		return nil, fmt.Errorf("arp probe on %s: %w", ifname, err)
	}
	defer c.Close()
	p, err := arp.NewPacket(arp.OperationRequest, ifi.HardwareAddr, src, ethernet.Broadcast, vip)
	if err != nil {
		return nil, fmt.Errorf("arp probe for %s: %w", vip, err)
	}
	if err := c.SetReadDeadline(time.Now().Add(wait)); err != nil {
		return nil, fmt.Errorf("arp probe: %w", err)
	}
	if err := c.WriteTo(p, ethernet.Broadcast); err != nil {
		return nil, fmt.Errorf("arp probe for %s on %s: %w", vip, ifname, err)
	}
	var out []arpLeak
	for {
		r, _, err := c.Read()
		if errors.Is(err, os.ErrDeadlineExceeded) {
			break
		}
		if err != nil {
			var ne net.Error
			if errors.As(err, &ne) && ne.Timeout() {
				break
			}
			// A malformed frame on the wire is no reason to stop listening.
			continue
		}
		if r.Operation != arp.OperationReply || r.SenderIP != vip || bytes.Equal(r.SenderHardwareAddr, ifi.HardwareAddr) ||
			slices.ContainsFunc(out, func(l arpLeak) bool { return bytes.Equal(l.MAC, r.SenderHardwareAddr) }) {
			continue
		}
		out = append(out, arpLeak{VIP: vip, MAC: slices.Clone(r.SenderHardwareAddr)})
	}
	if len(out) > 0 {
		nameNeighbours(ifi.Index, vip, out)
	}
	slices.SortFunc(out, func(a, b arpLeak) int { return bytes.Compare(a.MAC, b.MAC) })
	return out, nil
}

// ownAddr is an IPv4 address of ifi other than vip.
func ownAddr(ifi *net.Interface, vip netip.Addr) (netip.Addr, error) {
	addrs, err := ifi.Addrs()
	if err != nil {
		return netip.Addr{}, fmt.Errorf("arp probe: addresses of %s: %w", ifi.Name, err)
	}
	for _, a := range addrs {
		if n, ok := a.(*net.IPNet); ok {
			if ip, ok := netip.AddrFromSlice(n.IP.To4()); ok && ip != vip {
				return ip, nil
			}
		}
	}
	return netip.Addr{}, fmt.Errorf("arp probe: %s has no IPv4 address of its own to ask from", ifi.Name)
}

// nameNeighbours fills in each leak's IP from the neighbour table of the
// interface: the entry with its MAC and an address of vip's family other
// than the VIP (and, for IPv6, not link-local: real servers are known by
// their global addresses).
func nameNeighbours(ifindex int, vip netip.Addr, leaks []arpLeak) {
	family := netlink.FAMILY_V4
	if vip.Is6() {
		family = netlink.FAMILY_V6
	}
	neighs, err := netlink.NeighList(ifindex, family)
	if err != nil && !errors.Is(err, netlink.ErrDumpInterrupted) {
		return
	}
	for i := range leaks {
		for _, n := range neighs {
			ip, ok := netip.AddrFromSlice(n.IP)
			ip = ip.Unmap()
			if ok && ip != vip && !ip.IsLinkLocalUnicast() && bytes.Equal(n.HardwareAddr, leaks[i].MAC) {
				leaks[i].IP = ip
				break
			}
		}
	}
}

// arpProbeEvery is how often the master probes its VIPs for ARP leaks, and
// arpProbeWait how long it listens for answers (a LAN answers in well under
// a millisecond; a busy host's ARP reply can take tens). arpConfirmAfter is
// when a VIP whose probe got an answer not yet confirmed is probed again.
const (
	arpProbeEvery   = 10 * time.Second
	arpProbeWait    = 300 * time.Millisecond
	arpConfirmAfter = time.Second
)

// arpWatch probes the VIPs of the instances in MASTER state every
// arpProbeEvery and at once after a takeover, keeps what it found for
// status and metrics, and logs each change.
//
// A host is reported only when two probes in a row got its answer: the
// director that held the VIP until this one took over still answers the
// probe sent at the takeover, for as long as it takes to hear the new
// master's first advert and drop the VIP (seen in CI: a false report 300 ms
// after a takeover). A second probe arpConfirmAfter later no longer hears
// it, while a real server that leaks answers both.
type arpWatch struct {
	log     *slog.Logger
	masters func() []vrrp.Config // the instances now MASTER
	probe   func(ifname string, vip netip.Addr, wait time.Duration) ([]arpLeak, error)
	// changed is called after a round that changed the reported leaks.
	changed func()
	kick    chan struct{}

	mu    sync.Mutex
	leaks map[netip.Addr][]arpLeak // reported (confirmed), by VIP
	seen  map[netip.Addr][]arpLeak // what the last probe of each VIP got
	// fresh are the VIPs taken over since the last round began (allFresh:
	// every VIP): what seen holds for them predates the takeover and
	// confirms nothing.
	fresh    map[netip.Addr]bool
	allFresh bool
}

func newARPWatch(log *slog.Logger, masters func() []vrrp.Config, changed func()) *arpWatch {
	return &arpWatch{log: log, masters: masters, probe: probeVIP, changed: changed, kick: make(chan struct{}, 1),
		leaks: map[netip.Addr][]arpLeak{}, seen: map[netip.Addr][]arpLeak{}, fresh: map[netip.Addr]bool{}}
}

// takeover asks for a probe now: this node just became master of vips
// (nil: of an instance it cannot name, so of every VIP).
func (w *arpWatch) takeover(vips []netip.Prefix) {
	w.mu.Lock()
	w.allFresh = w.allFresh || vips == nil
	for _, p := range vips {
		w.fresh[p.Addr()] = true
	}
	w.mu.Unlock()
	select {
	case w.kick <- struct{}{}:
	default:
	}
}

func (w *arpWatch) run(ctx context.Context) {
	t := time.NewTimer(arpProbeEvery)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		case <-w.kick:
		}
		next := arpProbeEvery
		if w.round() {
			next = arpConfirmAfter
		}
		t.Reset(next)
	}
}

// confirmLeaks is the leaks of now that the previous probe of the same VIP
// (prev) got too, by MAC; unconfirmed says now holds an answer prev did not.
func confirmLeaks(prev, now []arpLeak) (confirmed []arpLeak, unconfirmed bool) {
	for _, l := range now {
		if slices.ContainsFunc(prev, func(p arpLeak) bool { return bytes.Equal(p.MAC, l.MAC) }) {
			confirmed = append(confirmed, l)
		} else {
			unconfirmed = true
		}
	}
	return confirmed, unconfirmed
}

// round probes every VIP of the instances that are MASTER; the VIPs of the
// others are no longer this node's to watch and are forgotten. It says
// whether an answer awaits confirmation by the next probe.
func (w *arpWatch) round() (pending bool) {
	w.mu.Lock()
	prevSeen, fresh, allFresh := w.seen, w.fresh, w.allFresh
	w.fresh, w.allFresh = map[netip.Addr]bool{}, false
	w.mu.Unlock()
	found := map[netip.Addr][]arpLeak{}
	seen := map[netip.Addr][]arpLeak{}
	probed := map[netip.Addr]bool{}
	for _, cfg := range w.masters() {
		for _, p := range cfg.VIPs {
			vip := p.Addr()
			if probed[vip] {
				continue
			}
			probed[vip] = true
			leaks, err := w.probe(cfg.Interface, vip, arpProbeWait)
			if err != nil {
				w.log.Warn("arp leak probe failed", "vip", vip, "interface", cfg.Interface, "err", err)
				// Keep what the last probe found.
				w.mu.Lock()
				found[vip], seen[vip] = w.leaks[vip], w.seen[vip]
				w.mu.Unlock()
				continue
			}
			prev := prevSeen[vip]
			if allFresh || fresh[vip] {
				prev = nil
			}
			var unconfirmed bool
			found[vip], unconfirmed = confirmLeaks(prev, leaks)
			seen[vip] = leaks
			pending = pending || unconfirmed
		}
	}
	w.mu.Lock()
	old := w.leaks
	w.leaks, w.seen = found, seen
	w.mu.Unlock()
	changed := false
	for vip := range old {
		if _, ok := found[vip]; !ok && len(old[vip]) > 0 {
			changed = true // no longer this node's VIP: its leaks fail no one
		}
	}
	for vip, leaks := range found {
		if leakKey(leaks) == leakKey(old[vip]) {
			continue
		}
		changed = true
		if len(leaks) == 0 {
			if len(old[vip]) > 0 {
				w.log.Info("arp leak cleared: only this director answers ARP for the VIP", "vip", vip)
			}
			continue
		}
		for _, l := range leaks {
			w.log.Warn("arp leak: another host answers ARP for the VIP (a real server without arp_ignore=1?)",
				"vip", vip, "mac", l.MAC.String(), "ip", ipString(l.IP))
		}
	}
	if changed && w.changed != nil {
		w.changed()
	}
	return pending
}

// snapshot is what the last round found, sorted by VIP.
func (w *arpWatch) snapshot() []arpLeak {
	w.mu.Lock()
	defer w.mu.Unlock()
	var out []arpLeak
	for _, leaks := range w.leaks {
		out = append(out, leaks...)
	}
	slices.SortStableFunc(out, func(a, b arpLeak) int { return a.VIP.Compare(b.VIP) })
	return out
}

// masterConfigs are the configs of the instances now MASTER.
func (d *Daemon) masterConfigs() []vrrp.Config {
	var out []vrrp.Config
	for _, r := range d.vrrpRunners() {
		if r.status().State == vrrp.Master.String() {
			out = append(out, r.config())
		}
	}
	return out
}

// arpLeakStatus is the watch's findings with the real servers at each
// leaking address.
func arpLeakStatus(leaks []arpLeak, cfg *conf.Config) []control.ARPLeak {
	var out []control.ARPLeak
	for _, l := range leaks {
		out = append(out, control.ARPLeak{VIP: l.VIP.String(), MAC: l.MAC.String(), IP: ipString(l.IP), RealServers: realsAt(cfg, l.IP)})
	}
	return out
}

// realsAt are the IDs of cfg's real servers at address ip, in config order.
func realsAt(cfg *conf.Config, ip netip.Addr) []string {
	if !ip.IsValid() {
		return nil
	}
	var out []string
	for i := range cfg.Services {
		vs := &cfg.Services[i]
		for j, rs := range vs.Reals {
			if vs.IPVS.Reals[j].Addr.Addr() == ip {
				out = append(out, rs.ID)
			}
		}
	}
	return out
}

// arpFailed are the real servers that global.arp_leak = "fail" takes out
// of every service, by ID, each with why: those at the address of a
// reported leak (the MAC's neighbour entry). A leak whose MAC has no entry
// names no one and fails no one.
func arpFailed(cfg *conf.Config, leaks []arpLeak) map[string]string {
	if !cfg.Global.ARPLeakFails {
		return nil
	}
	out := map[string]string{}
	for _, l := range leaks {
		for _, id := range realsAt(cfg, l.IP) {
			if _, ok := out[id]; !ok {
				out[id] = fmt.Sprintf("arp leak: %s answers for VIP %s (global.arp_leak = \"fail\")", l.MAC, l.VIP)
			}
		}
	}
	return out
}

// verdicts are the health verdicts IPVS follows: the checker's, with the
// real servers arpFailed names down (failed the way a check fails them:
// their service's on_failure applies); failed says why for those.
func (d *Daemon) verdicts(cfg *conf.Config) (health map[string]bool, failed map[string]string) {
	health = d.hc.Verdicts()
	failed = arpFailed(cfg, d.arp.snapshot())
	for id := range failed {
		health[id] = false
	}
	return health, failed
}

// onARPLeaks applies a change of the reported leaks: IPVS gets the real
// servers arp_leak fails, and each one failed or restored is logged once.
func (d *Daemon) onARPLeaks() {
	d.noteARPFailed(d.config())
	d.reconcile("arp leak")
}

// noteARPFailed logs each real server that cfg's arp_leak newly fails or
// no longer fails, before IPVS is given the change.
func (d *Daemon) noteARPFailed(cfg *conf.Config) {
	failed := arpFailed(cfg, d.arp.snapshot())
	for id, why := range failed {
		if _, was := d.arpDown[id]; !was {
			d.log.Warn("real server DOWN: it answers ARP for a VIP", "real_server", id, "reason", why)
		}
	}
	for id := range d.arpDown {
		if _, still := failed[id]; !still {
			d.log.Info("real server no longer failed for an ARP leak", "real_server", id)
		}
	}
	d.arpDown = failed
}

func leakKey(leaks []arpLeak) string {
	var b strings.Builder
	for _, l := range leaks {
		b.WriteString(l.MAC.String() + "/" + ipString(l.IP) + " ")
	}
	return b.String()
}

func ipString(ip netip.Addr) string {
	if !ip.IsValid() {
		return ""
	}
	return ip.String()
}
