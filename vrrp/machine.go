package vrrp

import (
	"fmt"
	"net/netip"
	"time"
)

// healGARPDelay is how long after answering a lower-priority master the
// winner sends a second GARP burst. Linux ignores a second ARP update for
// the same address within the neighbour "locktime" (1 s by default), so the
// first burst can lose against the loser's own takeover burst sent just
// before; the second one, past locktime, wins.
const healGARPDelay = 1100 * time.Millisecond

// lowerGARPEvery is the least time between two GARP bursts that answer
// lower-priority adverts. Each such advert is answered with an advert at
// once, but a stream of them (forged VRRPv3 needs no password) must not turn
// the master into a broadcast ARP flood; one burst a second still heals a
// split brain.
const lowerGARPEvery = time.Second

// TrackInterface is an interface whose state changes the instance's priority.
// A negative weight is added while it is down, a positive one while it is up;
// weight 0 puts the instance in FAULT while it is down (keepalived's rules).
type TrackInterface struct {
	Name   string
	Weight int
}

// TrackFile is a file holding a number that changes the instance's
// priority (keepalived's track_file): the number times Weight (negated by
// Reverse) is added; a result below -253 puts the instance in FAULT. With
// weight 0 any number but 0 puts it in FAULT. A missing or unreadable file,
// or one without a number, counts as 0, as keepalived does.
type TrackFile struct {
	Name    string
	Weight  int
	Reverse bool
}

// TrackScript is a command whose result changes the instance's priority
// (keepalived's vrrp_script): a positive weight is added while it succeeds,
// a negative one while it fails, and weight 0 puts the instance in FAULT
// while it fails. Reverse swaps success and failure.
type TrackScript struct {
	Name    string
	Weight  int
	Reverse bool
}

// trackFault is the lowest tracked-file result that does not put the
// instance in FAULT (keepalived's rule: "less than -253" faults).
const trackFault = -253

// MachineConfig is what the pure state machine needs to know.
type MachineConfig struct {
	VRID           uint8
	Priority       uint8 // configured priority; 255 = address owner
	Version        int   // 2 or 3
	AdvertInterval time.Duration
	Preempt        bool
	PreemptDelay   time.Duration
	// PrimaryIP is the source address of our adverts; it breaks ties
	// between masters of equal priority (the higher one wins).
	PrimaryIP   netip.Addr
	GARPDelay   time.Duration // >0: a second GARP burst this long after takeover
	GARPRefresh time.Duration // >0: a GARP burst this often while master
	Track       []TrackInterface
	TrackFiles  []TrackFile
	Scripts     []TrackScript
	// VIPs are the addresses our adverts carry.
	VIPs []netip.Addr
	// UnicastPeers, if any, are the only sources adverts are accepted from.
	UnicastPeers []netip.Addr
	// AuthPass is the VRRPv2 simple password sent and required ("": none).
	AuthPass string
}

// Machine is the VRRP state machine of one virtual router, without I/O: Step
// takes an event and the current time and returns the actions to perform.
type Machine struct {
	cfg     MachineConfig
	state   State
	started bool
	linkUp  bool
	trackUp map[string]bool
	// fileVal and scriptOK are the last values of tracked files and
	// scripts; a file not yet read counts as 0, a script not yet run as
	// succeeding.
	fileVal  map[string]int64
	scriptOK map[string]bool
	// groupFault is why the instance's sync group holds it in FAULT ("":
	// it does not).
	groupFault string

	masterAdverInterval time.Duration // learned from the master in v3
	master              netip.Addr    // current master as far as we know
	since               time.Time
	cause               string
	preemptAt           time.Time // preempt_delay: do not preempt before this
	downCause           string    // cause to report if the master-down timer fires
	healArmed           bool      // TimerGARPHeal is pending
	lowerGARPAt         time.Time // last GARP burst answering a lower priority
	garpSuppressed      uint64    // such bursts not sent: within lowerGARPEvery
}

// NewMachine returns a machine in INIT; send it Start.
func NewMachine(cfg MachineConfig) *Machine {
	m := &Machine{cfg: cfg, linkUp: true, trackUp: map[string]bool{},
		fileVal: map[string]int64{}, scriptOK: map[string]bool{}, masterAdverInterval: cfg.AdvertInterval}
	for _, t := range cfg.Track {
		m.trackUp[t.Name] = true
	}
	return m
}

// State returns the current state.
func (m *Machine) State() State { return m.state }

// Priority returns the effective priority: the configured one adjusted by
// the weights of tracked interfaces, scripts and files, kept within 1..254
// (255 never changes).
func (m *Machine) Priority() uint8 {
	if m.cfg.Priority == 255 {
		return 255
	}
	p := int64(m.cfg.Priority)
	for _, t := range m.cfg.Track {
		p += int64(weightIf(t.Weight, m.trackUp[t.Name]))
	}
	for _, t := range m.cfg.Scripts {
		p += int64(weightIf(t.Weight, m.scriptGood(t)))
	}
	for _, t := range m.cfg.TrackFiles {
		if r := m.fileResult(t); t.Weight != 0 && r >= trackFault {
			p += r
		}
	}
	return uint8(min(max(p, 1), 254))
}

// weightIf is what a tracked interface or script of weight w adds to the
// priority in state good: a positive weight while good, a negative one
// while not.
func weightIf(w int, good bool) int {
	if (w > 0 && good) || (w < 0 && !good) {
		return w
	}
	return 0
}

func (m *Machine) scriptGood(t TrackScript) bool {
	ok, known := m.scriptOK[t.Name]
	return (ok || !known) != t.Reverse
}

// fileResult is a tracked file's number times its weight (negated by
// Reverse); the number is kept within ±2^31 so the product cannot overflow.
func (m *Machine) fileResult(t TrackFile) int64 {
	v := min(max(m.fileVal[t.Name], -1<<31), 1<<31)
	r := v * int64(t.Weight)
	if t.Reverse {
		r = -r
	}
	return r
}

// Master returns the address of the current master: ours when MASTER, the
// last accepted advert's source when BACKUP.
func (m *Machine) Master() netip.Addr {
	if m.state == Master {
		return m.cfg.PrimaryIP
	}
	return m.master
}

// GARPSuppressed returns how many GARP bursts answering lower-priority
// adverts were not sent because one had been sent less than
// lowerGARPEvery before.
func (m *Machine) GARPSuppressed() uint64 { return m.garpSuppressed }

// Since returns when the current state was entered.
func (m *Machine) Since() time.Time { return m.since }

// Cause returns why the current state was entered.
func (m *Machine) Cause() string { return m.cause }

// MasterAdverInterval returns the master's advert interval as learned (v3)
// or configured (v2).
func (m *Machine) MasterAdverInterval() time.Duration { return m.masterAdverInterval }

// SkewTime returns Skew_Time for the current priority and master interval.
func (m *Machine) SkewTime() time.Duration {
	return SkewTime(m.cfg.Version, m.Priority(), m.masterAdverInterval)
}

// MasterDownInterval returns Master_Down_Interval for the current priority
// and master interval.
func (m *Machine) MasterDownInterval() time.Duration {
	return MasterDownInterval(m.cfg.Version, m.Priority(), m.masterAdverInterval)
}

// SkewTime is Skew_Time for a router of the given VRRP version and priority
// that follows a master advertising every masterAdverInterval:
// (256 - Priority) * Master_Adver_Interval / 256 in VRRPv3 (RFC 9568 6.1),
// (256 - Priority) / 256 seconds whatever the interval in VRRPv2 (RFC 3768).
func SkewTime(version int, priority uint8, masterAdverInterval time.Duration) time.Duration {
	p := time.Duration(256 - int(priority))
	if version == 2 {
		return p * time.Second / 256
	}
	return p * masterAdverInterval / 256
}

// MasterDownInterval is 3 * Master_Adver_Interval + Skew_Time: how long a
// backup waits for a silent master before it takes over.
func MasterDownInterval(version int, priority uint8, masterAdverInterval time.Duration) time.Duration {
	return 3*masterAdverInterval + SkewTime(version, priority, masterAdverInterval)
}

// faultCause says why the instance must be in FAULT, or "" if it need not.
func (m *Machine) faultCause() string {
	if c := m.OwnFault(); c != "" {
		return c
	}
	return m.groupFault
}

// OwnFault says why the instance must be in FAULT by what it follows
// itself (its link, what it tracks), leaving out its sync group; "" if it
// need not. The members of a sync group hold each other down with it.
func (m *Machine) OwnFault() string {
	if !m.linkUp {
		return "link down"
	}
	for _, t := range m.cfg.Track {
		if t.Weight == 0 && !m.trackUp[t.Name] {
			return fmt.Sprintf("tracked interface %s down", t.Name)
		}
	}
	for _, t := range m.cfg.Scripts {
		if t.Weight == 0 && !m.scriptGood(t) {
			return fmt.Sprintf("tracked script %s failing", t.Name)
		}
	}
	for _, t := range m.cfg.TrackFiles {
		if v := m.fileVal[t.Name]; (t.Weight == 0 && v != 0) || m.fileResult(t) < trackFault {
			return fmt.Sprintf("tracked file %s: %d", t.Name, v)
		}
	}
	return ""
}

// Step advances the machine by one event at time now.
func (m *Machine) Step(now time.Time, ev Event) []Action {
	switch ev := ev.(type) {
	case Start:
		if m.started {
			return nil
		}
		m.started = true
		m.linkUp = ev.LinkUp
		return m.settle(now, "startup")
	case LinkDown:
		m.linkUp = false
		if !m.started {
			return nil
		}
		return m.settle(now, "")
	case LinkUp:
		m.linkUp = true
		if !m.started {
			return nil
		}
		return m.settle(now, "link up")
	case TrackChanged:
		if _, ok := m.trackUp[ev.Name]; !ok {
			return nil
		}
		return m.tracked(now, func() { m.trackUp[ev.Name] = ev.Up }, fmt.Sprintf("tracked interface %s up", ev.Name))
	case TrackFileValue:
		if v, ok := m.fileVal[ev.Name]; ok && v == ev.Value {
			return nil
		}
		return m.tracked(now, func() { m.fileVal[ev.Name] = ev.Value }, fmt.Sprintf("tracked file %s: %d", ev.Name, ev.Value))
	case TrackScriptResult:
		if ok, known := m.scriptOK[ev.Name]; known && ok == ev.OK {
			return nil
		}
		what := "failing"
		if ev.OK {
			what = "succeeding"
		}
		return m.tracked(now, func() { m.scriptOK[ev.Name] = ev.OK }, fmt.Sprintf("tracked script %s %s", ev.Name, what))
	case GroupFault:
		if ev.Cause == m.groupFault {
			return nil
		}
		return m.tracked(now, func() { m.groupFault = ev.Cause }, "sync group up")
	case GroupBackup:
		if m.state != Master {
			return nil
		}
		return append([]Action{SendAdvert{0}}, m.becomeBackup(now, ev.Cause)...)
	case Reconfigured:
		return m.reconfigure(now, ev)
	case TimerFired:
		return m.timer(now, ev.Timer)
	case Shutdown:
		if !m.started {
			return nil
		}
		m.started = false
		var acts []Action
		if m.state == Master {
			acts = append(acts, SendAdvert{0})
		}
		acts = append(acts, m.leave()...)
		return append(acts, m.enter(now, Init, "shutdown"))
	}
	return nil
}

// tracked applies a change of something tracked (set records it): FAULT
// entered or left, or, for a master whose priority changed, an advert at
// once so that a now-better backup can preempt.
func (m *Machine) tracked(now time.Time, set func(), recoverCause string) []Action {
	before := m.Priority()
	set()
	if !m.started {
		return nil
	}
	acts := m.settle(now, recoverCause)
	if acts == nil && m.state == Master && m.Priority() != before {
		acts = append(acts, SendAdvert{m.Priority()}, ArmTimer{TimerAdvert, m.cfg.AdvertInterval})
	}
	return acts
}

// reconfigure applies a reload's in-place changes: a master arms or stops
// its GARP refresh for the new period and, if the tracked interfaces change
// its priority, tells its peers at once, as a tracked interface changing
// state would.
func (m *Machine) reconfigure(now time.Time, ev Reconfigured) []Action {
	before, refresh := m.Priority(), m.cfg.GARPRefresh
	m.cfg.GARPDelay, m.cfg.GARPRefresh, m.cfg.Track = ev.GARPDelay, ev.GARPRefresh, ev.Track
	m.cfg.TrackFiles, m.cfg.Scripts = ev.TrackFiles, ev.Scripts
	trackUp := make(map[string]bool, len(ev.Track))
	for _, t := range ev.Track {
		up, known := m.trackUp[t.Name]
		trackUp[t.Name] = up || !known
	}
	m.trackUp = trackUp
	if !m.started {
		return nil
	}
	acts := m.settle(now, "reload")
	if acts == nil && m.state == Master {
		if m.Priority() != before {
			acts = append(acts, SendAdvert{m.Priority()}, ArmTimer{TimerAdvert, m.cfg.AdvertInterval})
		}
		switch {
		case m.cfg.GARPRefresh == refresh:
		case m.cfg.GARPRefresh > 0:
			acts = append(acts, ArmTimer{TimerGARPRefresh, m.cfg.GARPRefresh})
		default:
			acts = append(acts, StopTimer{TimerGARPRefresh})
		}
	}
	return acts
}

// settle moves between FAULT and the running states after a change of link
// or tracked-interface state; recoverCause is the cause if it recovers.
func (m *Machine) settle(now time.Time, recoverCause string) []Action {
	if fc := m.faultCause(); fc != "" {
		if m.state == Fault {
			return nil
		}
		var acts []Action
		if m.state == Master && m.linkUp {
			// A tracked interface faulted us but the advert link still
			// works: priority 0 lets the backup take over after
			// Skew_Time, not Master_Down_Interval (keepalived does the
			// same). On a down link there is nothing to send it on.
			acts = append(acts, SendAdvert{0})
		}
		acts = append(acts, m.leave()...)
		return append(acts, m.enter(now, Fault, fc))
	}
	if m.state != Fault && m.state != Init {
		return nil
	}
	if m.Priority() == 255 {
		return m.becomeMaster(now, recoverCause+", address owner (priority 255)")
	}
	return m.becomeBackup(now, recoverCause)
}

// leave undoes what the current state holds: timers, and the VIPs of a master.
func (m *Machine) leave() []Action {
	var acts []Action
	if m.state == Master {
		acts = append(acts, RemoveVIPs{})
	}
	m.healArmed = false
	return append(acts,
		StopTimer{TimerAdvert}, StopTimer{TimerMasterDown},
		StopTimer{TimerGARPDelay}, StopTimer{TimerGARPRefresh}, StopTimer{TimerGARPHeal})
}

func (m *Machine) enter(now time.Time, s State, cause string) Notify {
	n := Notify{From: m.state, To: s, Priority: m.Priority(), Cause: cause}
	m.state, m.since, m.cause = s, now, cause
	m.preemptAt = time.Time{}
	m.downCause = ""
	return n
}

func (m *Machine) becomeMaster(now time.Time, cause string) []Action {
	acts := []Action{
		StopTimer{TimerMasterDown},
		SendAdvert{m.Priority()},
		AddVIPs{},
		SendGARP{},
		ArmTimer{TimerAdvert, m.cfg.AdvertInterval},
	}
	if m.cfg.GARPDelay > 0 {
		acts = append(acts, ArmTimer{TimerGARPDelay, m.cfg.GARPDelay})
	}
	if m.cfg.GARPRefresh > 0 {
		acts = append(acts, ArmTimer{TimerGARPRefresh, m.cfg.GARPRefresh})
	}
	m.master = m.cfg.PrimaryIP
	return append(acts, m.enter(now, Master, cause))
}

func (m *Machine) becomeBackup(now time.Time, cause string) []Action {
	var acts []Action
	if m.state == Master {
		acts = append(acts, RemoveVIPs{},
			StopTimer{TimerAdvert}, StopTimer{TimerGARPDelay}, StopTimer{TimerGARPRefresh}, StopTimer{TimerGARPHeal})
		m.healArmed = false
	}
	if m.state != Backup {
		if m.state != Master {
			// Startup or recovery: assume our own interval until a
			// master tells us its own.
			m.masterAdverInterval = m.cfg.AdvertInterval
		}
		n := m.enter(now, Backup, cause)
		acts = append(acts, ArmTimer{TimerMasterDown, m.MasterDownInterval()}, n)
	}
	return acts
}

// learn takes the master's interval from a v3 advert (RFC 5798 6.4.2).
func (m *Machine) learn(a *Advert) {
	if m.cfg.Version == 3 && a.Version == 3 && a.MaxAdvertInterval > 0 {
		m.masterAdverInterval = time.Duration(a.MaxAdvertInterval) * 10 * time.Millisecond
	}
}

func (m *Machine) advert(now time.Time, from netip.Addr, a *Advert) []Action {
	mine := m.Priority()
	switch m.state {
	case Backup:
		if a.Priority == 0 {
			// The master is leaving: take over after Skew_Time only.
			m.downCause = fmt.Sprintf("priority 0 from %s", from)
			return []Action{ArmTimer{TimerMasterDown, m.SkewTime()}}
		}
		accept := !m.cfg.Preempt || a.Priority >= mine
		if !accept && m.cfg.PreemptDelay > 0 {
			// A lower-priority master: wait preempt_delay after first
			// seeing it before letting the master-down timer run out.
			if m.preemptAt.IsZero() {
				m.preemptAt = now.Add(m.cfg.PreemptDelay)
			}
			accept = now.Before(m.preemptAt)
		} else if a.Priority >= mine {
			m.preemptAt = time.Time{}
		}
		if !accept {
			// Lower priority and we preempt: let the timer run out.
			return nil
		}
		m.learn(a)
		m.master = from
		m.downCause = ""
		return []Action{ArmTimer{TimerMasterDown, m.MasterDownInterval()}}
	case Master:
		if a.Priority == 0 {
			return []Action{SendAdvert{mine}, ArmTimer{TimerAdvert, m.cfg.AdvertInterval}}
		}
		if a.Priority > mine || (a.Priority == mine && from.Compare(m.cfg.PrimaryIP) > 0) {
			m.learn(a)
			m.master = from
			what := "higher priority"
			if a.Priority == mine {
				what = "equal priority and higher address"
			}
			// One last advert of ours tells the winner that there were
			// two masters: it answers a lower priority with gratuitous
			// ARPs, which brings back the hosts that followed us. Without
			// it a healed partition can leave them on our MAC, when the
			// winner's advert reaches us before any of ours reached it.
			acts := []Action{SendAdvert{mine}}
			return append(acts, m.becomeBackup(now, fmt.Sprintf("%s %d from %s", what, a.Priority, from))...)
		}
		// A lower-priority master exists (split brain, or a peer just
		// starting): assert ourselves at once and re-announce the VIPs so
		// caches that followed the other node come back.
		acts := []Action{SendAdvert{mine}, ArmTimer{TimerAdvert, m.cfg.AdvertInterval}}
		acts = append(acts, m.lowerGARP(now)...)
		if !m.healArmed {
			m.healArmed = true
			acts = append(acts, ArmTimer{TimerGARPHeal, healGARPDelay})
		}
		return acts
	}
	return nil
}

func (m *Machine) timer(now time.Time, k TimerKind) []Action {
	switch {
	case m.state == Master && k == TimerAdvert:
		return []Action{SendAdvert{m.Priority()}, ArmTimer{TimerAdvert, m.cfg.AdvertInterval}}
	case m.state == Master && k == TimerGARPDelay:
		return []Action{SendGARP{}}
	case m.state == Master && k == TimerGARPRefresh:
		return []Action{SendGARP{}, ArmTimer{TimerGARPRefresh, m.cfg.GARPRefresh}}
	case m.state == Master && k == TimerGARPHeal:
		m.healArmed = false
		return m.lowerGARP(now)
	case m.state == Backup && k == TimerMasterDown:
		cause := "master down timer expired"
		if m.downCause != "" {
			cause = m.downCause
		}
		return m.becomeMaster(now, cause)
	}
	return nil
}

// lowerGARP is the GARP burst that answers a lower-priority master, unless
// one went out less than lowerGARPEvery ago.
func (m *Machine) lowerGARP(now time.Time) []Action {
	if !m.lowerGARPAt.IsZero() && now.Sub(m.lowerGARPAt) < lowerGARPEvery {
		m.garpSuppressed++
		return nil
	}
	m.lowerGARPAt = now
	return []Action{SendGARP{}}
}
