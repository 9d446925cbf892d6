package vrrp

import (
	"bytes"
	"context"
	"fmt"
	"log/slog"
	"net/netip"
	"slices"
	"strconv"
	"sync"
	"time"
)

type timerEvent struct {
	kind TimerKind
	gen  uint64
}

// driver is the state of one Run.
type driver struct {
	in       *Instance
	k        *kernel
	m        *Machine
	timers   [numTimers]*time.Timer
	gens     [numTimers]uint64
	fired    chan timerEvent
	done     chan struct{}
	notify   *notifier
	garpStop context.CancelFunc
	drops    dropLog
	ownFault string // the last Machine.OwnFault told to onOwnFault
	wg       sync.WaitGroup
}

// Run runs the instance until ctx is cancelled, then shuts it down cleanly:
// a master sends a priority-0 advert and removes its VIPs. It returns nil
// after a clean shutdown, or an error if it could not start.
func (in *Instance) Run(ctx context.Context) error {
	k, err := in.open()
	if err != nil {
		return fmt.Errorf("vrrp instance %q: %w", in.cfg.Name, err)
	}
	defer k.close()
	cfg := &in.cfg

	// VIPs of ours left by a crashed run would answer for an address
	// another node may own now.
	list, err := k.addrs.List()
	if err != nil {
		return fmt.Errorf("vrrp instance %q: %w", cfg.Name, err)
	}
	for _, p := range list {
		if isVIP(p.Addr(), cfg.VIPs) && p.Addr() != k.primary {
			in.log.Warn("vrrp: removing leftover VIP", "vip", p)
			if err := k.addrs.Remove(p); err != nil {
				return fmt.Errorf("vrrp instance %q: %w", cfg.Name, err)
			}
		}
	}

	d := &driver{
		in:    in,
		k:     k,
		fired: make(chan timerEvent, 8),
		done:  make(chan struct{}),
		// Whatever it is after Start is news: a listener may still
		// hold the previous run's fault.
		ownFault: "\x00unknown",
		m: NewMachine(MachineConfig{
			VRID: cfg.VRID, Priority: cfg.Priority, Version: cfg.Version,
			AdvertInterval: cfg.AdvertInterval, Preempt: cfg.Preempt, PreemptDelay: cfg.PreemptDelay,
			PrimaryIP: k.primary, GARPDelay: cfg.GARPDelay, GARPRefresh: cfg.GARPRefresh, Track: cfg.Track,
			TrackFiles: cfg.TrackFiles, Scripts: cfg.TrackScripts,
			VIPs: vipAddrs(cfg.VIPs), UnicastPeers: cfg.UnicastPeers, AuthPass: cfg.AuthPass,
		}),
	}
	wg := &d.wg
	defer wg.Wait()
	defer close(d.done)
	defer d.stopTimers()

	d.notify = newNotifier(in.log, cfg.NotifyTimeout, in.startCmd)
	notifyCtx, stopNotify := context.WithCancel(context.WithoutCancel(ctx))
	defer stopNotify()
	wg.Go(func() { d.notify.run(notifyCtx) })
	defer d.notify.close()

	rx := make(chan Packet, 16)
	wg.Go(func() { d.read(rx) })
	// Closing the socket is what stops the reader.
	defer k.conn.Close()

	linkCh := make(chan linkState, 16)
	// watch follows our interface and the tracked ones; a reload that
	// changes the tracked ones replaces it.
	watch := func() (stop func()) {
		names := []string{cfg.Interface}
		for _, t := range cfg.Track {
			names = append(names, t.Name)
		}
		watchCtx, stop := context.WithCancel(ctx)
		wg.Go(func() { k.links.Watch(watchCtx, names, linkCh) })
		return stop
	}
	stopWatch := watch()
	defer func() { stopWatch() }()

	for _, t := range cfg.Track {
		d.trackNow(t.Name)
	}
	for _, ev := range in.trackEvents() {
		d.step(ev)
	}
	up, err := k.links.Up(cfg.Interface)
	if err != nil {
		return fmt.Errorf("vrrp instance %q: %w", cfg.Name, err)
	}
	in.log.Info("vrrp: starting", "interface", cfg.Interface, "vrid", cfg.VRID, "priority", cfg.Priority,
		"version", cfg.Version, "advert_interval", cfg.AdvertInterval, "source", k.primary, "link_up", up)
	d.step(Start{LinkUp: up})

	for {
		select {
		case <-ctx.Done():
			d.step(Shutdown{})
			d.stopGARP()
			d.finishNotify()
			in.log.Info("vrrp: stopped")
			return nil
		case p := <-rx:
			d.receive(p)
		case te := <-d.fired:
			// An advert that is already waiting beats a timer that ran
			// out at the same time (select picks at random): a busy
			// host must not fail over while the master's advert sits
			// in the queue.
			d.drain(rx)
			if te.kind == TimerMasterDown && te.gen == d.gens[te.kind] && d.k.conn.Pending() {
				// The master's advert may be in the socket, not yet
				// read: a host so busy that the reader has not run
				// must not fail over because of it. Let the reader
				// deliver it (bounded: a wedged reader cannot hold a
				// takeover back for long).
				wait := time.NewTimer(min(d.in.cfg.AdvertInterval, 50*time.Millisecond))
				select {
				case p := <-rx:
					d.receive(p)
					d.drain(rx)
				case <-wait.C:
				}
				wait.Stop()
			}
			if te.gen == d.gens[te.kind] {
				d.step(TimerFired{Timer: te.kind})
			}
		case c := <-in.updates:
			old := cfg.Track
			in.cfg = c // cfg points here: what follows uses the new values
			in.log.Info("vrrp: reload applied in place")
			d.notify.setTimeout(c.NotifyTimeout)
			d.step(Reconfigured{GARPDelay: c.GARPDelay, GARPRefresh: c.GARPRefresh, Track: c.Track,
				TrackFiles: c.TrackFiles, Scripts: c.TrackScripts})
			if !slices.Equal(c.Track, old) {
				stopWatch()
				stopWatch = watch()
				// As at start: a newly tracked interface counts as it
				// is now (missing is down), not as up.
				for _, t := range c.Track {
					if !slices.ContainsFunc(old, func(o TrackInterface) bool { return o.Name == t.Name }) {
						d.trackNow(t.Name)
					}
				}
			}
		case <-in.trackKick:
			// The machine ignores the values that did not change.
			for _, ev := range in.trackEvents() {
				d.step(ev)
			}
		case ls := <-linkCh:
			switch {
			case ls.Name == cfg.Interface && ls.Index != 0 && ls.Index != k.ifindex:
				// Our sockets are bound to the old ifindex: hear, send
				// and hold nothing there any more. Leave as a link
				// down would (FAULT, VIPs released), and let the
				// caller run the instance again on the new one.
				in.log.Warn("vrrp: interface re-created; reopening", "interface", cfg.Interface,
					"old_index", k.ifindex, "new_index", ls.Index)
				d.step(LinkDown{})
				d.stopGARP()
				d.finishNotify()
				return fmt.Errorf("vrrp instance %q: %s: %w", cfg.Name, cfg.Interface, ErrInterfaceReplaced)
			case ls.Name == cfg.Interface && ls.Up:
				d.step(LinkUp{})
			case ls.Name == cfg.Interface:
				d.step(LinkDown{})
			default:
				d.step(TrackChanged{Name: ls.Name, Up: ls.Up})
			}
		}
	}
}

// trackNow tells the machine the current state of a tracked interface.
func (d *driver) trackNow(name string) {
	up, err := d.k.links.Up(name)
	if err != nil {
		d.in.log.Warn("vrrp: tracked interface", "interface", name, "err", err)
	}
	d.step(TrackChanged{Name: name, Up: up})
}

// finishNotify gives the queued notify commands a short while to run
// before Run returns.
func (d *driver) finishNotify() {
	d.notify.close()
	grace := time.NewTimer(min(d.in.cfg.NotifyTimeout, 2*time.Second))
	defer grace.Stop()
	select {
	case <-d.notify.finished:
	case <-grace.C:
		d.in.log.Warn("vrrp: notify commands still running at shutdown, stopping them")
	}
}

func vipAddrs(vips []netip.Prefix) []netip.Addr {
	out := make([]netip.Addr, len(vips))
	for i, v := range vips {
		out[i] = v.Addr()
	}
	return out
}

// drain handles the packets already received.
func (d *driver) drain(rx <-chan Packet) {
	for {
		select {
		case p := <-rx:
			d.receive(p)
		default:
			return
		}
	}
}

// read turns socket reads into packets for the loop until the socket closes.
func (d *driver) read(out chan<- Packet) {
	buf := make([]byte, 1500)
	for {
		p, err := d.k.conn.ReadAdvert(buf)
		if err != nil {
			select {
			case <-d.done:
				return
			default:
			}
			if isClosed(err) {
				return
			}
			d.in.log.Warn("vrrp: read", "err", err)
			// Do not spin on an error that repeats.
			select {
			case <-d.done:
				return
			case <-time.After(100 * time.Millisecond):
			}
			continue
		}
		p.Payload = bytes.Clone(p.Payload)
		select {
		case out <- p:
		case <-d.done:
			return
		}
	}
}

// receive feeds a packet to the machine, which acts on it or refuses it; a
// refused one is counted and logged.
func (d *driver) receive(p Packet) {
	now := time.Now()
	acts, reason := d.m.Receive(now, p)
	if reason != "" {
		d.in.count(func(s *Status) { s.Dropped[reason]++ })
		lvl := slog.LevelDebug
		attrs := []any{"reason", reason, "from", p.Src, "ttl", p.TTL}
		if warn, missed := d.drops.note(now, reason); warn {
			lvl = slog.LevelWarn
			if missed > 0 {
				attrs = append(attrs, "dropped_since_last_warning", missed)
			}
		}
		if reason == "vip_mismatch" && d.in.log.Enabled(context.Background(), lvl) {
			// Another virtual router uses our VRID: say whose
			// addresses it announces (the checks passed, it decodes).
			if a, err := Unmarshal(p.Payload, p.Src, p.Dst); err == nil {
				attrs = append(attrs, "advert_addrs", a.Addrs, "vips", vipAddrs(d.in.cfg.VIPs))
			}
		}
		d.in.log.Log(context.Background(), lvl, "vrrp: dropped advert", attrs...)
		return
	}
	d.in.count(func(s *Status) { s.AdvertsReceived++ })
	d.run(now, acts)
}

func (d *driver) step(ev Event) {
	now := time.Now()
	d.run(now, d.m.Step(now, ev))
}

// tellOwnFault tells the listener when the machine's own fault changed.
func (d *driver) tellOwnFault() {
	if c := d.m.OwnFault(); c != d.ownFault && d.m.started {
		d.ownFault = c
		if d.in.onOwnFault != nil {
			d.in.onOwnFault(c)
		}
	}
}

// run carries out the machine's actions for an event at now.
func (d *driver) run(now time.Time, acts []Action) {
	defer d.tellOwnFault()
	for _, act := range acts {
		start := time.Now()
		d.do(now, act)
		// Every action should take microseconds; a slow one delays adverts.
		if took := time.Since(start); took > 20*time.Millisecond {
			d.in.log.Warn("vrrp: slow action", "action", fmt.Sprintf("%T", act), "took", took)
		}
	}
	d.in.count(func(s *Status) {
		s.State, s.Priority, s.Master = d.m.State(), d.m.Priority(), d.m.Master()
		s.Since, s.Cause = d.m.Since(), d.m.Cause()
		s.GARPSuppressed = d.m.GARPSuppressed()
	})
}

func (d *driver) do(now time.Time, act Action) {
	cfg := &d.in.cfg
	switch a := act.(type) {
	case SendAdvert:
		d.sendAdvert(a.Priority)
	case ArmTimer:
		d.arm(a.Timer, a.D)
	case StopTimer:
		if t := d.timers[a.Timer]; t != nil {
			t.Stop()
		}
		d.gens[a.Timer]++
	case AddVIPs:
		d.recordVIPs(true)
		for _, v := range cfg.VIPs {
			if err := d.k.addrs.Add(v); err != nil {
				d.in.log.Error("vrrp: add VIP", "err", err)
			}
		}
	case RemoveVIPs:
		d.stopGARP()
		removed := true
		for _, v := range cfg.VIPs {
			if v.Addr() == d.k.primary {
				continue // an owner's VIP is its own address
			}
			if err := d.k.addrs.Remove(v); err != nil {
				d.in.log.Error("vrrp: remove VIP", "err", err)
				removed = false
			}
		}
		if removed {
			d.recordVIPs(false)
		}
	case SendGARP:
		d.sendGARP()
	case Notify:
		d.in.count(func(s *Status) { s.Transitions++ })
		if d.in.onState != nil {
			d.in.onState(a.To)
		}
		d.in.log.Info("vrrp: transition", "from", a.From.String(), "to", a.To.String(), "priority", a.Priority, "cause", a.Cause)
		if len(cfg.Notify) > 0 {
			argv := append(append([]string(nil), cfg.Notify...), cfg.Name, a.To.String(), strconv.Itoa(int(a.Priority)))
			d.notify.enqueue(argv)
		}
	}
}

// recordVIPs tells the instance's recorder, if any, that it holds its VIPs
// or no longer does.
func (d *driver) recordVIPs(held bool) {
	if d.in.recordVIPs == nil {
		return
	}
	cfg := &d.in.cfg
	vips := slices.DeleteFunc(slices.Clone(cfg.VIPs), func(v netip.Prefix) bool { return v.Addr() == d.k.primary })
	d.in.recordVIPs(cfg.Interface, vips, held)
}

func (d *driver) arm(k TimerKind, dur time.Duration) {
	if t := d.timers[k]; t != nil {
		t.Stop()
	}
	d.gens[k]++
	ev := timerEvent{k, d.gens[k]}
	d.timers[k] = time.AfterFunc(dur, func() {
		select {
		case d.fired <- ev:
		case <-d.done:
		}
	})
}

func (d *driver) stopTimers() {
	for k, t := range d.timers {
		if t != nil {
			t.Stop()
		}
		d.gens[k]++
	}
}

func (d *driver) sendAdvert(prio uint8) {
	cfg := &d.in.cfg
	dsts := cfg.UnicastPeers
	if len(dsts) == 0 {
		dsts = []netip.Addr{GroupFor(cfg.VIPs[0].Addr())}
	}
	a := d.m.Advert(prio)
	for _, dst := range dsts {
		b, err := a.Marshal(cfg.ChecksumMode, d.k.primary, dst)
		if err != nil {
			d.in.log.Error("vrrp: encode advert", "err", err)
			return
		}
		if err := d.k.conn.WriteAdvert(b, d.k.primary, dst); err != nil {
			// A link going down shows up here first; the link event
			// will move us to FAULT. Status and metrics count it: a
			// master that cannot send is no master to its peer.
			d.in.log.Debug("vrrp: send advert", "err", err)
			d.in.count(func(s *Status) { s.SendErrors++; s.LastSendError = err.Error() })
			continue
		}
		d.in.count(func(s *Status) { s.AdvertsSent++; s.LastSendError = "" })
	}
}

// sendGARP sends a burst of gratuitous ARPs, or for IPv6 unsolicited
// neighbour advertisements (k.garp is the family's): the first round at
// once (right after the advert), the rest, if spaced by GARPInterval, from a
// goroutine that a later burst or leaving MASTER cancels.
func (d *driver) sendGARP() {
	// Copies: the goroutine below outlives this call, and a reload may
	// change the config meanwhile.
	vips, repeat, interval := d.in.cfg.VIPs, d.in.cfg.GARPRepeat, d.in.cfg.GARPInterval
	d.stopGARP()
	round := func() {
		for _, v := range vips {
			if err := d.k.garp.GARP(v.Addr()); err != nil {
				d.in.log.Debug("vrrp: gratuitous arp", "err", err)
			}
		}
	}
	if interval <= 0 {
		for range repeat {
			round()
		}
		return
	}
	round()
	ctx, cancel := context.WithCancel(context.Background())
	d.garpStop = cancel
	d.wg.Go(func() {
		t := time.NewTicker(interval)
		defer t.Stop()
		for range repeat - 1 {
			select {
			case <-ctx.Done():
				return
			case <-d.done:
				return
			case <-t.C:
				round()
			}
		}
	})
}

func (d *driver) stopGARP() {
	if d.garpStop != nil {
		d.garpStop()
		d.garpStop = nil
	}
}
