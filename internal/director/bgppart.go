package director

import (
	"context"
	"fmt"
	"log/slog"
	"net/netip"
	"os"
	"slices"
	"strings"
	"sync"
	"time"

	"golang.org/x/sys/unix"

	"github.com/lvsha/lvsha/conf"
	"github.com/lvsha/lvsha/internal/director/bgp"
	"github.com/lvsha/lvsha/internal/director/control"
	"github.com/lvsha/lvsha/lvs"
	"github.com/lvsha/lvsha/lvs/realserver"
)

// Speaker is what the director needs of a BGP speaker: *bgp.Speaker, or
// a fake in tests.
type Speaker interface {
	Announce(netip.Prefix) error
	Withdraw(netip.Prefix) error
	AddNeighbor(bgp.Neighbor) error
	DeleteNeighbor(netip.Addr) error
	Neighbors(context.Context) ([]bgp.NeighborStatus, error)
	Stop()
}

// bgpReevaluate is how often the announcements are checked even with no
// IPVS apply to prompt it: a failed announcement is retried at this pace.
const bgpReevaluate = 5 * time.Second

// bgpVerdicts says, for each VIP, why it must not be announced, "" if it
// may be: a director announces a VIP only while it can serve every
// service on it, that is, while IPVS holds the service (programmed) and
// the service's real servers that are up reach its quorum. A VIP that a
// director cannot fully serve is better served by the other directors
// alone: ECMP would send it a share of every flow.
func bgpVerdicts(vips []netip.Prefix, desired []lvs.Service, programmed func(lvs.Key) bool) map[netip.Prefix]string {
	out := make(map[netip.Prefix]string, len(vips))
	for _, vip := range vips {
		reason := "no virtual service on it"
		for i := range desired {
			s := &desired[i]
			if s.Key.Addr.Addr() != vip.Addr() {
				continue
			}
			if !programmed(s.Key) {
				reason = "IPVS does not hold " + s.Key.String()
				break
			}
			if !s.HasQuorum() {
				reason = "quorum lost: " + s.Key.String()
				break
			}
			reason = ""
		}
		out[vip] = reason
	}
	return out
}

// bgpRestartNeeded says why a reload cannot apply new to a running [bgp]
// (old), "" if it can: the speaker's identity and the VIPs' interface are
// fixed for its life, and a [bgp] section is added or removed only by a
// restart (a removal would have to withdraw and drain inside a reload).
func bgpRestartNeeded(old, new *conf.BGP) string {
	switch {
	case old == nil && new == nil:
		return ""
	case old == nil:
		return "adding [bgp] needs a restart"
	case new == nil:
		return "removing [bgp] needs a restart"
	case old.ASN != new.ASN || old.RouterID != new.RouterID || old.ListenPort != new.ListenPort || old.Interface != new.Interface:
		return "changes of bgp.asn, bgp.router_id, bgp.listen_port and bgp.interface need a restart"
	}
	return ""
}

// bgpPart holds the VIPs of [bgp] on their interface and keeps their
// announcements in line with bgpVerdicts. A reload may change what is
// announced, the neighbours and the drain time (update); the rest needs a
// restart (bgpRestartNeeded).
type bgpPart struct {
	log *slog.Logger
	// cfg is written by the run goroutine only (update hands it over),
	// under mu for status.
	cfg      conf.BGP
	open     func(conf.BGP) (Speaker, error)
	holdVIPs func(iface string, vips []netip.Prefix, add bool) error
	verdicts func(vips []netip.Prefix) map[netip.Prefix]string
	sysctl   func(key, value string) error
	// record notes in the state directory the VIPs held (vipRecord), so
	// that a VIP a killed run left, and since dropped from announce, is
	// removed at the next start or by `lvsha cleanup`.
	record func(iface string, vips []netip.Prefix, held bool)
	kick   chan struct{} // capacity 1
	quit   chan struct{}
	done   chan struct{}

	mu        sync.Mutex
	pending   *conf.BGP // from a reload, for the run goroutine
	sp        Speaker
	err       string
	announced map[netip.Prefix]bool
	reasons   map[netip.Prefix]string
	last      *control.BGPWithdraw
	withdrawn int // withdrawals so far
}

func newBGPPart(cfg conf.BGP, log *slog.Logger, open func(conf.BGP) (Speaker, error),
	holdVIPs func(string, []netip.Prefix, bool) error, verdicts func([]netip.Prefix) map[netip.Prefix]string) *bgpPart {
	if open == nil {
		open = openGoBGP(log)
	}
	if holdVIPs == nil {
		holdVIPs = holdVIPsOnLink
	}
	return &bgpPart{log: log, cfg: cfg, open: open, holdVIPs: holdVIPs, verdicts: verdicts, sysctl: writeSysctl,
		record: func(string, []netip.Prefix, bool) {},
		kick:   make(chan struct{}, 1), quit: make(chan struct{}), done: make(chan struct{}),
		announced: map[netip.Prefix]bool{}, reasons: map[netip.Prefix]string{}}
}

// openGoBGP starts the embedded GoBGP with cfg.
func openGoBGP(log *slog.Logger) func(conf.BGP) (Speaker, error) {
	return func(c conf.BGP) (Speaker, error) {
		bc := bgp.Config{ASN: uint32(c.ASN), RouterID: c.RouterIDAddr, ListenPort: uint16(c.ListenPort)}
		for _, n := range c.Neighbors {
			bc.Neighbors = append(bc.Neighbors, bgpNeighbor(n))
		}
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		return bgp.Start(ctx, bc, log)
	}
}

func bgpNeighbor(n conf.BGPNeighbor) bgp.Neighbor {
	return bgp.Neighbor{Addr: n.Addr, ASN: uint32(n.ASN), Password: n.Password,
		HoldTime: n.HoldTime.D(), ConnectRetry: n.ConnectRetry.D(), Port: uint16(n.Port)}
}

// holdVIPsOnLink adds (or removes) the VIPs on iface, scope host so that
// the kernel never picks one as the source of other traffic.
func holdVIPsOnLink(iface string, vips []netip.Prefix, add bool) error {
	h, err := realserver.NewHost()
	if err != nil {
		return err
	}
	defer h.Close()
	for _, p := range vips {
		a := realserver.Addr{Interface: iface, Prefix: p, HostScope: true}
		if p.Addr().Is6() {
			a.Flags = unix.IFA_F_NODAD
		}
		if add {
			err = h.AddAddr(a)
		} else {
			err = h.DelAddr(a)
		}
		if err != nil {
			return err
		}
	}
	return nil
}

// writeSysctl writes /proc/sys/KEY (dots for slashes).
func writeSysctl(key, value string) error {
	path := "/proc/sys/" + strings.ReplaceAll(key, ".", "/")
	// No O_CREATE: without the ip_vs module the key is missing, an error.
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_TRUNC, 0)
	if err != nil {
		return fmt.Errorf("sysctl %s: %w", key, err)
	}
	_, err = f.WriteString(value + "\n")
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return fmt.Errorf("sysctl %s: %w", key, err)
	}
	return nil
}

// start holds the VIPs and runs the speaker until stop.
func (b *bgpPart) start() {
	if b.cfg.SloppyTCP {
		// Without it IPVS schedules only SYNs: a flow that ECMP moves here
		// from another director gets a reset. Not fatal: the director
		// still serves new flows (status and logs say so).
		if err := b.sysctl("net.ipv4.vs.sloppy_tcp", "1"); err != nil {
			b.log.Warn("bgp: cannot set sloppy_tcp; flows moved from another director will be reset", "err", err)
		}
	}
	// Recorded before they are added: a crash in between leaves a record
	// of VIPs not there, which the cleanup skips.
	b.record(b.cfg.Interface, b.cfg.VIPs, true)
	if err := b.holdVIPs(b.cfg.Interface, b.cfg.VIPs, true); err != nil {
		// Announcing a VIP the director does not hold would black-hole
		// its share of the traffic: nothing is announced then.
		b.log.Error("bgp: cannot hold the VIPs; announcing nothing", "interface", b.cfg.Interface, "err", err)
		b.setErr("hold VIPs on " + b.cfg.Interface + ": " + err.Error())
		close(b.done)
		return
	}
	go b.run()
}

// poke asks for a re-evaluation (after each IPVS apply).
func (b *bgpPart) poke() {
	select {
	case b.kick <- struct{}{}:
	default:
	}
}

func (b *bgpPart) setErr(s string) {
	b.mu.Lock()
	b.err = s
	b.mu.Unlock()
}

func (b *bgpPart) run() {
	defer close(b.done)
	tick := time.NewTicker(bgpReevaluate)
	defer tick.Stop()
	failures := 0
	var retry <-chan time.Time
	for {
		b.mu.Lock()
		sp := b.sp
		b.mu.Unlock()
		if sp == nil && retry == nil {
			s, err := b.open(b.cfg)
			if err != nil {
				wait := backoff(failures)
				failures++
				b.log.Error("bgp: cannot start the speaker; retrying", "err", err, "retry_in", wait)
				b.setErr(err.Error())
				retry = time.After(wait)
			} else {
				b.mu.Lock()
				b.sp, b.err = s, ""
				b.mu.Unlock()
				b.log.Info("bgp: speaker started", "asn", b.cfg.ASN, "router_id", b.cfg.RouterID, "neighbors", len(b.cfg.Neighbors))
				b.evaluate(s)
			}
		}
		select {
		case <-b.quit:
			b.shutdown()
			return
		case <-retry:
			retry = nil
		case <-b.kick:
		case <-tick.C:
		}
		b.mu.Lock()
		sp, nc := b.sp, b.pending
		b.pending = nil
		b.mu.Unlock()
		if nc != nil {
			b.apply(sp, *nc)
		}
		if sp != nil {
			b.evaluate(sp)
		}
	}
}

// evaluate announces and withdraws what bgpVerdicts calls for.
func (b *bgpPart) evaluate(sp Speaker) {
	v := b.verdicts(b.cfg.VIPs)
	for _, vip := range b.cfg.VIPs {
		reason := v[vip]
		b.mu.Lock()
		was := b.announced[vip]
		b.reasons[vip] = reason
		b.mu.Unlock()
		switch {
		case reason == "" && !was:
			if err := sp.Announce(vip); err != nil {
				b.log.Error("bgp: announce failed", "vip", vip, "err", err)
				b.mu.Lock()
				b.reasons[vip] = "announce failed: " + err.Error()
				b.mu.Unlock()
				continue
			}
			b.log.Info("bgp: announced", "vip", vip)
			b.mu.Lock()
			b.announced[vip] = true
			b.mu.Unlock()
		case reason != "" && was:
			b.withdraw(sp, vip, reason)
		}
	}
}

// update hands a reloaded [bgp] to the run goroutine; bgpRestartNeeded
// must have accepted it.
func (b *bgpPart) update(nc conf.BGP) {
	b.mu.Lock()
	b.pending = &nc
	b.mu.Unlock()
	b.poke()
}

// apply makes a reloaded [bgp] the running one: new VIPs are held (and
// announced once they may be, by evaluate), removed ones withdrawn at once
// and released, and neighbours added, removed or, when changed, replaced
// (only that session restarts). Without a running speaker, the next start
// uses nc.
func (b *bgpPart) apply(sp Speaker, nc conf.BGP) {
	old := b.cfg
	added := slices.DeleteFunc(slices.Clone(nc.VIPs), func(p netip.Prefix) bool { return slices.Contains(old.VIPs, p) })
	removed := slices.DeleteFunc(slices.Clone(old.VIPs), func(p netip.Prefix) bool { return slices.Contains(nc.VIPs, p) })
	if len(added) > 0 {
		b.record(nc.Interface, slices.Concat(old.VIPs, added), true)
		if err := b.holdVIPs(nc.Interface, added, true); err != nil {
			// Announcing a VIP not held would black-hole its traffic.
			b.log.Error("bgp: reload: cannot hold the new VIPs; not announcing them", "vips", added, "err", err)
			b.setErr("hold VIPs on " + nc.Interface + ": " + err.Error())
			nc.VIPs = slices.DeleteFunc(nc.VIPs, func(p netip.Prefix) bool { return slices.Contains(added, p) })
		}
	}
	for _, vip := range removed {
		b.mu.Lock()
		was := b.announced[vip]
		b.mu.Unlock()
		if was && sp != nil {
			b.withdraw(sp, vip, "removed from announce by a reload")
		}
	}
	if len(removed) > 0 {
		if err := b.holdVIPs(old.Interface, removed, false); err != nil {
			b.log.Error("bgp: reload: cannot release the VIPs removed from announce", "vips", removed, "err", err)
		}
	}
	if sp != nil {
		b.applyNeighbors(sp, old.Neighbors, nc.Neighbors)
	}
	b.mu.Lock()
	b.cfg = nc
	for _, vip := range removed {
		delete(b.reasons, vip)
		delete(b.announced, vip) // a failed withdrawal: the session's next reset drops it
	}
	b.mu.Unlock()
	b.record(nc.Interface, nc.VIPs, true)
	if nc.SloppyTCP && !old.SloppyTCP {
		if err := b.sysctl("net.ipv4.vs.sloppy_tcp", "1"); err != nil {
			b.log.Warn("bgp: cannot set sloppy_tcp; flows moved from another director will be reset", "err", err)
		}
	}
	b.log.Info("bgp: reload applied", "added", added, "removed", removed, "neighbors", len(nc.Neighbors))
	if sp != nil {
		b.evaluate(sp)
	}
}

// applyNeighbors adds the new neighbours, removes the gone ones and
// replaces the changed ones.
func (b *bgpPart) applyNeighbors(sp Speaker, old, nc []conf.BGPNeighbor) {
	find := func(list []conf.BGPNeighbor, a netip.Addr) (conf.BGPNeighbor, bool) {
		for _, n := range list {
			if n.Addr == a {
				return n, true
			}
		}
		return conf.BGPNeighbor{}, false
	}
	for _, o := range old {
		if n, ok := find(nc, o.Addr); ok && n == o {
			continue
		}
		if err := sp.DeleteNeighbor(o.Addr); err != nil {
			b.log.Error("bgp: reload: cannot remove a neighbour", "neighbor", o.Addr, "err", err)
		}
	}
	for _, n := range nc {
		if o, ok := find(old, n.Addr); ok && n == o {
			continue
		}
		if err := sp.AddNeighbor(bgpNeighbor(n)); err != nil {
			b.log.Error("bgp: reload: cannot add a neighbour", "neighbor", n.Addr, "err", err)
		}
	}
}

// withdraw withdraws vip and records why. A failed withdrawal leaves it
// recorded as announced, so it is tried again.
func (b *bgpPart) withdraw(sp Speaker, vip netip.Prefix, reason string) {
	if err := sp.Withdraw(vip); err != nil {
		b.log.Error("bgp: withdraw failed", "vip", vip, "reason", reason, "err", err)
		return
	}
	b.log.Warn("bgp: withdrawn", "vip", vip, "reason", reason)
	b.mu.Lock()
	delete(b.announced, vip)
	b.last = &control.BGPWithdraw{Prefix: vip.String(), Reason: reason, At: time.Now()}
	b.withdrawn++
	b.mu.Unlock()
}

// shutdown withdraws every VIP, lets the routers move the flows while this
// director still serves them (drain_time), then ends the sessions and
// releases the VIPs.
func (b *bgpPart) shutdown() {
	b.mu.Lock()
	sp := b.sp
	b.mu.Unlock()
	if sp != nil {
		n := 0
		for _, vip := range b.cfg.VIPs {
			b.mu.Lock()
			was := b.announced[vip]
			b.mu.Unlock()
			if was {
				b.withdraw(sp, vip, "shutdown")
				n++
			}
		}
		if drain := b.cfg.DrainTime.D(); n > 0 && drain > 0 {
			b.log.Info("bgp: withdrawn; draining before stopping", "drain_time", drain)
			time.Sleep(drain)
		}
		// Status stops asking the speaker before it stops.
		b.mu.Lock()
		b.sp = nil
		b.mu.Unlock()
		sp.Stop()
	}
	if err := b.holdVIPs(b.cfg.Interface, b.cfg.VIPs, false); err != nil {
		// Kept recorded: the next start or `lvsha cleanup` tries again.
		b.log.Error("bgp: cannot release the VIPs", "interface", b.cfg.Interface, "err", err)
		return
	}
	b.record(b.cfg.Interface, b.cfg.VIPs, false)
}

func (b *bgpPart) stop() {
	select {
	case <-b.done: // never ran
		return
	default:
	}
	close(b.quit)
	<-b.done
}

// status reports the sessions and the VIPs' announcements.
func (b *bgpPart) status(ctx context.Context) *control.BGPStatus {
	b.mu.Lock()
	st := &control.BGPStatus{ASN: uint32(b.cfg.ASN), RouterID: b.cfg.RouterID, Neighbors: []control.BGPNeighborStatus{}, VIPs: []control.BGPVIPStatus{}}
	sp := b.sp
	st.Error = b.err
	st.Withdrawals = b.withdrawn
	for _, vip := range b.cfg.VIPs {
		vs := control.BGPVIPStatus{Prefix: vip.String(), Announced: b.announced[vip], Reason: b.reasons[vip]}
		if !vs.Announced && vs.Reason == "" {
			vs.Reason = "not evaluated yet"
		}
		st.VIPs = append(st.VIPs, vs)
	}
	if b.last != nil {
		l := *b.last
		st.LastWithdraw = &l
	}
	b.mu.Unlock()
	if sp != nil {
		ns, err := sp.Neighbors(ctx)
		if err != nil {
			st.Error = fmt.Sprint(err)
		}
		for _, n := range ns {
			st.Neighbors = append(st.Neighbors, control.BGPNeighborStatus{Address: n.Address, ASN: n.ASN, State: n.State, Since: n.Since, HoldTime: n.HoldTime})
		}
	}
	return st
}
