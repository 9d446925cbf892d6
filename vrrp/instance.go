package vrrp

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"maps"
	"net/netip"
	"strconv"
	"sync"
	"time"
)

// Config is one virtual router instance. Every field is taken as it is:
// lvsha's conf package sets the defaults and checks the config's rules; New
// checks only what the protocol and the driver need.
type Config struct {
	Name           string
	Interface      string
	VRID           uint8 // 1..255
	Priority       uint8 // 1..255; 255 = address owner
	AdvertInterval time.Duration
	Version        int // 2 or 3
	// Preempt lets a higher-priority backup take over from a lower-priority
	// master.
	Preempt      bool
	PreemptDelay time.Duration
	VIPs         []netip.Prefix
	// UnicastSrc and UnicastPeers replace multicast with unicast adverts.
	UnicastSrc   netip.Addr
	UnicastPeers []netip.Addr
	// AuthPass is the VRRPv2 simple password (at most 8 bytes).
	AuthPass     string
	ChecksumMode ChecksumMode
	// GARPRepeat (at least 1) is the number of gratuitous ARPs per VIP in
	// one burst; GARPInterval is the pause between two of them; GARPDelay
	// (>0) sends a second burst that long after taking over; GARPRefresh
	// (>0) sends a burst that often while master.
	GARPRepeat   int
	GARPDelay    time.Duration
	GARPRefresh  time.Duration
	GARPInterval time.Duration
	Track        []TrackInterface
	// Notify is a command run on every state change, without a shell, with
	// the instance name, new state and priority appended to its arguments.
	// NotifyTimeout (>0) bounds each run, and the wait for queued ones at
	// shutdown (at most 2s of it).
	Notify        []string
	NotifyTimeout time.Duration
}

// Status is a snapshot of an instance.
type Status struct {
	Name     string
	State    State
	Priority uint8
	Master   netip.Addr
	Since    time.Time
	Cause    string
	// AdvertsSent and AdvertsReceived count adverts sent and valid adverts
	// received; Dropped counts received packets refused, by reason (ttl,
	// checksum, version, length, vrid, auth, interval, own, peer, ...).
	AdvertsSent     uint64
	AdvertsReceived uint64
	Dropped         map[string]uint64
	Transitions     uint64
}

// Instance runs one virtual router.
type Instance struct {
	cfg  Config
	log  *slog.Logger
	open func() (*kernel, error)

	mu     sync.Mutex
	status Status
}

// New checks cfg and returns an instance ready to Run.
func New(cfg Config, log *slog.Logger) (*Instance, error) {
	if log == nil {
		log = slog.Default()
	}
	if err := cfg.validate(); err != nil {
		return nil, fmt.Errorf("vrrp instance %q: %w", cfg.Name, err)
	}
	in := &Instance{cfg: cfg, log: log.With("instance", cfg.Name)}
	in.open = func() (*kernel, error) { return openKernel(&in.cfg, in.log) }
	in.status = Status{Name: cfg.Name, State: Init, Priority: cfg.Priority, Dropped: map[string]uint64{}}
	return in, nil
}

func (c *Config) validate() error {
	switch {
	case c.Interface == "":
		return errors.New("no interface")
	case c.VRID == 0:
		return errors.New("virtual_router_id must be 1..255")
	case c.Priority == 0:
		return errors.New("priority must be 1..255")
	case c.Version != 2 && c.Version != 3:
		return fmt.Errorf("version %d: must be 2 or 3", c.Version)
	case len(c.VIPs) == 0:
		return errors.New("no virtual_ipaddress")
	case len(c.VIPs) > 255:
		return errors.New("more than 255 virtual addresses")
	case len(c.AuthPass) > 8:
		return errors.New("auth_pass longer than 8 bytes")
	case c.AuthPass != "" && c.Version != 2:
		return errors.New("auth_pass needs version 2 (VRRPv3 has no authentication)")
	case c.UnicastSrc.IsValid() && !c.UnicastSrc.Is4():
		return fmt.Errorf("unicast_src_ip %s is not IPv4", c.UnicastSrc)
	case c.GARPRepeat < 1:
		return errors.New("garp_master_repeat must be at least 1")
	case c.NotifyTimeout <= 0:
		return errors.New("notify timeout must be positive")
	}
	if c.Version == 3 {
		if c.AdvertInterval < 10*time.Millisecond || c.AdvertInterval > 4095*10*time.Millisecond || c.AdvertInterval%(10*time.Millisecond) != 0 {
			return fmt.Errorf("advert_interval %v: VRRPv3 needs a multiple of 10ms from 10ms to 40.95s", c.AdvertInterval)
		}
	} else if c.AdvertInterval < time.Second || c.AdvertInterval > 255*time.Second || c.AdvertInterval%time.Second != 0 {
		return fmt.Errorf("advert_interval %v: VRRPv2 needs whole seconds from 1s to 255s", c.AdvertInterval)
	}
	for _, v := range c.VIPs {
		if !v.Addr().Is4() {
			return fmt.Errorf("virtual address %s is not IPv4", v)
		}
	}
	for _, p := range c.UnicastPeers {
		if !p.Is4() {
			return fmt.Errorf("unicast peer %s is not IPv4", p)
		}
	}
	return nil
}

// Status returns a snapshot of the instance.
func (in *Instance) Status() Status {
	in.mu.Lock()
	defer in.mu.Unlock()
	s := in.status
	s.Dropped = maps.Clone(in.status.Dropped)
	return s
}

func (in *Instance) count(f func(s *Status)) {
	in.mu.Lock()
	f(&in.status)
	in.mu.Unlock()
}

type rxPacket struct {
	b    []byte
	info rxInfo
}

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
	warned   map[string]bool
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
		m: NewMachine(MachineConfig{
			VRID: cfg.VRID, Priority: cfg.Priority, Version: cfg.Version,
			AdvertInterval: cfg.AdvertInterval, Preempt: cfg.Preempt, PreemptDelay: cfg.PreemptDelay,
			PrimaryIP: k.primary, GARPDelay: cfg.GARPDelay, GARPRefresh: cfg.GARPRefresh, Track: cfg.Track,
		}),
		warned: map[string]bool{},
	}
	wg := &d.wg
	defer wg.Wait()
	defer close(d.done)
	defer d.stopTimers()

	d.notify = newNotifier(in.log, cfg.NotifyTimeout)
	notifyCtx, stopNotify := context.WithCancel(context.WithoutCancel(ctx))
	defer stopNotify()
	wg.Go(func() { d.notify.run(notifyCtx) })
	defer d.notify.close()

	rx := make(chan rxPacket, 16)
	wg.Go(func() { d.read(rx) })
	// Closing the socket is what stops the reader.
	defer k.conn.Close()

	watchCtx, stopWatch := context.WithCancel(ctx)
	defer stopWatch()
	linkCh := make(chan linkState, 16)
	names := []string{cfg.Interface}
	for _, t := range cfg.Track {
		names = append(names, t.Name)
	}
	wg.Go(func() { k.links.Watch(watchCtx, names, linkCh) })

	for _, t := range cfg.Track {
		up, err := k.links.Up(t.Name)
		if err != nil {
			in.log.Warn("vrrp: tracked interface", "interface", t.Name, "err", err)
		}
		d.step(TrackChanged{Name: t.Name, Up: up})
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
			// Give queued notify commands a short while to run.
			d.notify.close()
			grace := time.NewTimer(min(cfg.NotifyTimeout, 2*time.Second))
			select {
			case <-d.notify.finished:
			case <-grace.C:
				in.log.Warn("vrrp: notify commands still running at shutdown, stopping them")
			}
			grace.Stop()
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
		case ls := <-linkCh:
			switch {
			case ls.Name == cfg.Interface && ls.Up:
				d.step(LinkUp{})
			case ls.Name == cfg.Interface:
				d.step(LinkDown{})
			default:
				d.step(TrackChanged(ls))
			}
		}
	}
}

// drain handles the packets already received.
func (d *driver) drain(rx <-chan rxPacket) {
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
func (d *driver) read(out chan<- rxPacket) {
	buf := make([]byte, 1500)
	for {
		n, info, err := d.k.conn.ReadAdvert(buf)
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
		p := rxPacket{b: append([]byte(nil), buf[:n]...), info: info}
		select {
		case out <- p:
		case <-d.done:
			return
		}
	}
}

// receive checks a packet and feeds it to the machine, or drops and counts it.
func (d *driver) receive(p rxPacket) {
	a, reason := d.check(p)
	if reason != "" {
		d.in.count(func(s *Status) { s.Dropped[reason]++ })
		// The first drop of each kind is worth a warning; repeats would
		// flood the log.
		lvl := slog.LevelDebug
		if !d.warned[reason] {
			d.warned[reason] = true
			lvl = slog.LevelWarn
		}
		d.in.log.Log(context.Background(), lvl, "vrrp: dropped advert", "reason", reason, "from", p.info.Src, "ttl", p.info.TTL)
		return
	}
	d.in.count(func(s *Status) { s.AdvertsReceived++ })
	d.step(AdvertReceived{From: p.info.Src, Advert: a})
}

// check validates a received packet; reason is "" if it may be acted on.
func (d *driver) check(p rxPacket) (*Advert, string) {
	cfg := &d.in.cfg
	if p.info.Src == d.k.primary {
		return nil, "own"
	}
	if p.info.TTL != 255 {
		return nil, "ttl"
	}
	a, err := Unmarshal(p.b, p.info.Src, p.info.Dst)
	switch {
	case errors.Is(err, ErrTooShort), errors.Is(err, ErrLength), errors.Is(err, ErrAddrCount):
		return nil, "length"
	case errors.Is(err, ErrVersion):
		return nil, "version"
	case errors.Is(err, ErrType):
		return nil, "type"
	case errors.Is(err, ErrChecksum):
		return nil, "checksum"
	case err != nil:
		return nil, "malformed"
	}
	if a.VRID != cfg.VRID {
		return nil, "vrid"
	}
	if int(a.Version) != cfg.Version {
		return nil, "version"
	}
	if len(cfg.UnicastPeers) > 0 && !containsAddr(cfg.UnicastPeers, p.info.Src) {
		return nil, "peer"
	}
	if a.Version == 2 {
		var want [8]byte
		copy(want[:], cfg.AuthPass)
		if cfg.AuthPass == "" && a.AuthType != AuthNone ||
			cfg.AuthPass != "" && (a.AuthType != AuthPassword || a.AuthData != want) {
			return nil, "auth"
		}
		if time.Duration(a.AdvertInterval)*time.Second != cfg.AdvertInterval {
			return nil, "interval"
		}
	}
	return a, ""
}

func containsAddr(list []netip.Addr, a netip.Addr) bool {
	for _, x := range list {
		if x == a {
			return true
		}
	}
	return false
}

func (d *driver) step(ev Event) {
	now := time.Now()
	for _, act := range d.m.Step(now, ev) {
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
		for _, v := range cfg.VIPs {
			if err := d.k.addrs.Add(v); err != nil {
				d.in.log.Error("vrrp: add VIP", "err", err)
			}
		}
	case RemoveVIPs:
		d.stopGARP()
		for _, v := range cfg.VIPs {
			if v.Addr() == d.k.primary {
				continue // an owner's VIP is its own address
			}
			if err := d.k.addrs.Remove(v); err != nil {
				d.in.log.Error("vrrp: remove VIP", "err", err)
			}
		}
	case SendGARP:
		d.sendGARP()
	case Notify:
		d.in.count(func(s *Status) { s.Transitions++ })
		d.in.log.Info("vrrp: transition", "from", a.From.String(), "to", a.To.String(), "priority", a.Priority, "cause", a.Cause)
		if len(cfg.Notify) > 0 {
			argv := append(append([]string(nil), cfg.Notify...), cfg.Name, a.To.String(), strconv.Itoa(int(a.Priority)))
			d.notify.enqueue(argv)
		}
	}
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

func (d *driver) advert(prio uint8) *Advert {
	cfg := &d.in.cfg
	a := &Advert{Version: uint8(cfg.Version), Type: TypeAdvertisement, VRID: cfg.VRID, Priority: prio}
	for _, v := range cfg.VIPs {
		a.Addrs = append(a.Addrs, v.Addr())
	}
	if cfg.Version == 3 {
		a.MaxAdvertInterval = uint16(cfg.AdvertInterval / (10 * time.Millisecond))
	} else {
		a.AdvertInterval = uint8(cfg.AdvertInterval / time.Second)
		if cfg.AuthPass != "" {
			a.AuthType = AuthPassword
			copy(a.AuthData[:], cfg.AuthPass)
		}
	}
	return a
}

func (d *driver) sendAdvert(prio uint8) {
	cfg := &d.in.cfg
	dsts := cfg.UnicastPeers
	if len(dsts) == 0 {
		dsts = []netip.Addr{Group}
	}
	a := d.advert(prio)
	for _, dst := range dsts {
		b, err := a.Marshal(cfg.ChecksumMode, d.k.primary, dst)
		if err != nil {
			d.in.log.Error("vrrp: encode advert", "err", err)
			return
		}
		if err := d.k.conn.WriteAdvert(b, d.k.primary, dst); err != nil {
			// A link going down shows up here first; the link event
			// will move us to FAULT.
			d.in.log.Debug("vrrp: send advert", "err", err)
			continue
		}
		d.in.count(func(s *Status) { s.AdvertsSent++ })
	}
}

// sendGARP sends a burst: the first round at once (right after the advert),
// the rest, if spaced by GARPInterval, from a goroutine that a later burst or
// leaving MASTER cancels.
func (d *driver) sendGARP() {
	cfg := &d.in.cfg
	d.stopGARP()
	round := func() {
		for _, v := range cfg.VIPs {
			if err := d.k.garp.GARP(v.Addr()); err != nil {
				d.in.log.Debug("vrrp: gratuitous arp", "err", err)
			}
		}
	}
	if cfg.GARPInterval <= 0 {
		for range cfg.GARPRepeat {
			round()
		}
		return
	}
	round()
	ctx, cancel := context.WithCancel(context.Background())
	d.garpStop = cancel
	d.wg.Go(func() {
		t := time.NewTicker(cfg.GARPInterval)
		defer t.Stop()
		for range cfg.GARPRepeat - 1 {
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
