package vrrp

import (
	"fmt"
	"net/netip"
	"reflect"
	"slices"
	"strings"
	"testing"
	"time"
)

var (
	ipA = netip.MustParseAddr("10.0.0.1")
	ipB = netip.MustParseAddr("10.0.0.2")
	ipC = netip.MustParseAddr("10.0.0.0")
	t0  = time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
)

func cfg3(prio uint8) MachineConfig {
	return MachineConfig{VRID: 51, Priority: prio, Version: 3, AdvertInterval: time.Second, Preempt: true, PrimaryIP: ipA}
}

func adv(version, prio uint8, cs uint16) *Advert {
	a := &Advert{Version: version, Type: 1, VRID: 51, Priority: prio, Addrs: []netip.Addr{netip.MustParseAddr("10.0.0.100")}}
	if version == 3 {
		a.MaxAdvertInterval = cs
	} else {
		a.AdvertInterval = uint8(cs / 100)
	}
	return a
}

func started(t *testing.T, c MachineConfig) *Machine {
	t.Helper()
	m := NewMachine(c)
	m.Step(t0, Start{LinkUp: true})
	return m
}

// master returns a machine that has become MASTER by timeout.
func master(t *testing.T, c MachineConfig) *Machine {
	t.Helper()
	m := started(t, c)
	if m.State() != Master {
		m.Step(t0.Add(5*time.Second), TimerFired{TimerMasterDown})
	}
	if m.State() != Master {
		t.Fatalf("not master: %v", m.State())
	}
	return m
}

func find[T Action](acts []Action) (T, bool) {
	for _, a := range acts {
		if v, ok := a.(T); ok {
			return v, true
		}
	}
	var zero T
	return zero, false
}

func armed(t *testing.T, acts []Action, k TimerKind) time.Duration {
	t.Helper()
	for _, a := range acts {
		if v, ok := a.(ArmTimer); ok && v.Timer == k {
			return v.D
		}
	}
	t.Fatalf("no ArmTimer %v in %v", k, acts)
	return 0
}

func TestTimerFormulas(t *testing.T) {
	tests := []struct {
		version  int
		prio     uint8
		interval time.Duration
		skew, md time.Duration
	}{
		// v3: Skew = (256-P) * MAI / 256, MD = 3*MAI + Skew
		{3, 100, time.Second, 609375 * time.Microsecond, 3609375 * time.Microsecond},
		{3, 150, time.Second, 414062500 * time.Nanosecond, 3414062500 * time.Nanosecond},
		{3, 200, 100 * time.Millisecond, 21875 * time.Microsecond, 321875 * time.Microsecond},
		{3, 254, 10 * time.Millisecond, 78125 * time.Nanosecond, 30078125 * time.Nanosecond},
		// v2: Skew = (256-P)/256 seconds whatever the interval
		{2, 100, time.Second, 609375 * time.Microsecond, 3609375 * time.Microsecond},
		{2, 100, 3 * time.Second, 609375 * time.Microsecond, 9609375 * time.Microsecond},
		{2, 1, 2 * time.Second, 996093750 * time.Nanosecond, 6996093750 * time.Nanosecond},
	}
	for _, tt := range tests {
		c := cfg3(tt.prio)
		c.Version, c.AdvertInterval = tt.version, tt.interval
		m := NewMachine(c)
		acts := m.Step(t0, Start{LinkUp: true})
		if m.SkewTime() != tt.skew || m.MasterDownInterval() != tt.md {
			t.Errorf("v%d prio %d int %v: skew %v md %v, want %v %v", tt.version, tt.prio, tt.interval,
				m.SkewTime(), m.MasterDownInterval(), tt.skew, tt.md)
		}
		if s, md := SkewTime(tt.version, tt.prio, tt.interval), MasterDownInterval(tt.version, tt.prio, tt.interval); s != tt.skew || md != tt.md {
			t.Errorf("v%d prio %d int %v: SkewTime %v MasterDownInterval %v, want %v %v", tt.version, tt.prio, tt.interval, s, md, tt.skew, tt.md)
		}
		if d := armed(t, acts, TimerMasterDown); d != tt.md || m.State() != Backup {
			t.Errorf("v%d prio %d: start armed master-down %v in %v, want %v in BACKUP", tt.version, tt.prio, d, m.State(), tt.md)
		}
	}
}

func TestV3LearnsMasterInterval(t *testing.T) {
	m := started(t, cfg3(100))
	acts := m.Step(t0, AdvertReceived{ipB, adv(3, 150, 50)})
	want := 3*500*time.Millisecond + 156*500*time.Millisecond/256
	if d := armed(t, acts, TimerMasterDown); d != want {
		t.Errorf("master-down after 0.5s advert = %v, want %v", d, want)
	}
	if m.MasterAdverInterval() != 500*time.Millisecond || m.Master() != ipB {
		t.Errorf("learned %v from %v", m.MasterAdverInterval(), m.Master())
	}
	// v2 does not learn: the interval must match the configured one.
	c := cfg3(100)
	c.Version = 2
	m2 := started(t, c)
	acts = m2.Step(t0, AdvertReceived{ipB, adv(2, 150, 300)})
	if d := armed(t, acts, TimerMasterDown); d != 3*time.Second+156*time.Second/256 {
		t.Errorf("v2 master-down %v", d)
	}
}

func TestBackupPriorityZero(t *testing.T) {
	m := started(t, cfg3(100))
	m.Step(t0, AdvertReceived{ipB, adv(3, 150, 100)})
	acts := m.Step(t0.Add(time.Second), AdvertReceived{ipB, adv(3, 0, 100)})
	if d := armed(t, acts, TimerMasterDown); d != m.SkewTime() {
		t.Fatalf("priority 0: master-down %v, want skew %v", d, m.SkewTime())
	}
	acts = m.Step(t0.Add(2*time.Second), TimerFired{TimerMasterDown})
	n, ok := find[Notify](acts)
	if !ok || n.To != Master || n.Cause != "priority 0 from 10.0.0.2" {
		t.Fatalf("after skew: %+v", acts)
	}
}

func TestMasterPriorityZero(t *testing.T) {
	m := master(t, cfg3(100))
	acts := m.Step(t0.Add(6*time.Second), AdvertReceived{ipB, adv(3, 0, 100)})
	want := []Action{SendAdvert{100}, ArmTimer{TimerAdvert, time.Second}}
	if !reflect.DeepEqual(acts, want) || m.State() != Master {
		t.Errorf("master got priority 0: %v, want %v", acts, want)
	}
}

func TestBackupPreempt(t *testing.T) {
	tests := []struct {
		preempt bool
		theirs  uint8
		rearm   bool
	}{
		{true, 200, true},  // higher: follow it
		{true, 151, true},  // just higher
		{true, 150, true},  // equal: follow it (RFC: >=)
		{true, 149, false}, // lower: let the timer run out
		{true, 1, false},   // lowest
		{true, 255, true},  // owner
		{false, 200, true}, // no preempt: follow any master
		{false, 150, true},
		{false, 149, true},
		{false, 1, true},
	}
	for _, tt := range tests {
		c := cfg3(150)
		c.Preempt = tt.preempt
		m := started(t, c)
		acts := m.Step(t0, AdvertReceived{ipB, adv(3, tt.theirs, 100)})
		_, got := find[ArmTimer](acts)
		if got != tt.rearm || m.State() != Backup {
			t.Errorf("preempt=%v own 150 theirs %d: re-armed %v (%v), want %v", tt.preempt, tt.theirs, got, acts, tt.rearm)
		}
	}
}

func TestPreemptDelay(t *testing.T) {
	c := cfg3(150)
	c.PreemptDelay = 5 * time.Second
	m := started(t, c)
	low := adv(3, 100, 100)
	for _, tc := range []struct {
		at    time.Duration
		rearm bool
	}{{0, true}, {time.Second, true}, {4900 * time.Millisecond, true}, {5 * time.Second, false}, {6 * time.Second, false}} {
		acts := m.Step(t0.Add(tc.at), AdvertReceived{ipB, low})
		if _, ok := find[ArmTimer](acts); ok != tc.rearm {
			t.Errorf("at +%v: re-armed %v, want %v", tc.at, ok, tc.rearm)
		}
	}
	acts := m.Step(t0.Add(9*time.Second), TimerFired{TimerMasterDown})
	if n, ok := find[Notify](acts); !ok || n.To != Master {
		t.Errorf("after preempt delay the timer must make us master: %v", acts)
	}
}

func TestOwnerTakesOverAtOnce(t *testing.T) {
	m := NewMachine(cfg3(255))
	acts := m.Step(t0, Start{LinkUp: true})
	want := []Action{StopTimer{TimerMasterDown}, SendAdvert{255}, AddVIPs{}, SendGARP{}, ArmTimer{TimerAdvert, time.Second}}
	if m.State() != Master || !reflect.DeepEqual(acts[:len(want)], want) {
		t.Errorf("owner start: %v %v", m.State(), acts)
	}
	// Lower-priority master seen: assert ourselves.
	acts = m.Step(t0, AdvertReceived{ipB, adv(3, 254, 100)})
	if _, ok := find[SendGARP](acts); !ok || m.State() != Master {
		t.Errorf("owner vs 254: %v", acts)
	}
}

func TestMasterAnswers(t *testing.T) {
	tests := []struct {
		name   string
		from   netip.Addr
		theirs uint8
		backup bool
		cause  string
	}{
		{"higher", ipB, 150, true, "higher priority 150 from 10.0.0.2"},
		{"equal, higher IP", ipB, 100, true, "equal priority and higher address 100 from 10.0.0.2"},
		{"equal, lower IP", ipC, 100, false, ""},
		{"lower", ipB, 50, false, ""},
	}
	for _, tt := range tests {
		m := master(t, cfg3(100))
		acts := m.Step(t0.Add(10*time.Second), AdvertReceived{tt.from, adv(3, tt.theirs, 20)})
		if tt.backup {
			n, _ := find[Notify](acts)
			_, rm := find[RemoveVIPs](acts)
			if sa, ok := acts[0].(SendAdvert); !ok || sa.Priority != 100 {
				t.Errorf("%s: a yielding master first sends a last advert: %v", tt.name, acts)
			}
			if m.State() != Backup || !rm || n.Cause != tt.cause || n.From != Master {
				t.Errorf("%s: %v %v", tt.name, m.State(), acts)
			}
			// It learnt the new master's 200 ms interval.
			if d := armed(t, acts, TimerMasterDown); d != 600*time.Millisecond+156*200*time.Millisecond/256 {
				t.Errorf("%s: master-down %v", tt.name, d)
			}
			continue
		}
		// Split-brain heal: advert at once, a fresh GARP burst and
		// another one past the kernel's ARP locktime.
		want := []Action{SendAdvert{100}, ArmTimer{TimerAdvert, time.Second}, SendGARP{}, ArmTimer{TimerGARPHeal, healGARPDelay}}
		if m.State() != Master || !reflect.DeepEqual(acts, want) {
			t.Errorf("%s: %v, want %v", tt.name, acts, want)
		}
		// More lower adverts before it fires do not push it back.
		want = want[:3]
		if acts := m.Step(t0, AdvertReceived{tt.from, adv(3, tt.theirs, 20)}); !reflect.DeepEqual(acts, want) {
			t.Errorf("%s again: %v, want %v", tt.name, acts, want)
		}
		if acts := m.Step(t0, TimerFired{TimerGARPHeal}); !reflect.DeepEqual(acts, []Action{SendGARP{}}) {
			t.Errorf("%s heal timer: %v", tt.name, acts)
		}
	}
}

func TestMasterTimers(t *testing.T) {
	c := cfg3(100)
	c.GARPDelay, c.GARPRefresh = 5*time.Second, time.Minute
	m := started(t, c)
	acts := m.Step(t0.Add(4*time.Second), TimerFired{TimerMasterDown})
	if armed(t, acts, TimerGARPDelay) != 5*time.Second || armed(t, acts, TimerGARPRefresh) != time.Minute {
		t.Fatalf("takeover: %v", acts)
	}
	// Advert before GARP, VIPs before GARP.
	idx := func(f func(Action) bool) int { return slices.IndexFunc(acts, f) }
	ia := idx(func(a Action) bool { _, ok := a.(SendAdvert); return ok })
	iv := idx(func(a Action) bool { _, ok := a.(AddVIPs); return ok })
	ig := idx(func(a Action) bool { _, ok := a.(SendGARP); return ok })
	if ia < 0 || iv < 0 || ig < 0 || ia > ig || iv > ig {
		t.Errorf("order: %v", acts)
	}
	if got := m.Step(t0, TimerFired{TimerAdvert}); !reflect.DeepEqual(got, []Action{SendAdvert{100}, ArmTimer{TimerAdvert, time.Second}}) {
		t.Errorf("advert timer: %v", got)
	}
	if got := m.Step(t0, TimerFired{TimerGARPDelay}); !reflect.DeepEqual(got, []Action{SendGARP{}}) {
		t.Errorf("garp delay: %v", got)
	}
	if got := m.Step(t0, TimerFired{TimerGARPRefresh}); !reflect.DeepEqual(got, []Action{SendGARP{}, ArmTimer{TimerGARPRefresh, time.Minute}}) {
		t.Errorf("garp refresh: %v", got)
	}
	// Stale timers of another state do nothing.
	if got := m.Step(t0, TimerFired{TimerMasterDown}); got != nil {
		t.Errorf("master-down in MASTER: %v", got)
	}
}

func TestFaultAndRecovery(t *testing.T) {
	m := master(t, cfg3(100))
	acts := m.Step(t0.Add(10*time.Second), LinkDown{})
	n, _ := find[Notify](acts)
	if _, rm := find[RemoveVIPs](acts); !rm || m.State() != Fault || n.Cause != "link down" {
		t.Fatalf("link down: %v", acts)
	}
	if _, ok := find[SendAdvert](acts); ok {
		t.Errorf("fault must not advertise: %v", acts)
	}
	// Adverts and timers are ignored in FAULT.
	if got := m.Step(t0, AdvertReceived{ipB, adv(3, 50, 100)}); got != nil {
		t.Errorf("advert in FAULT: %v", got)
	}
	if got := m.Step(t0, TimerFired{TimerAdvert}); got != nil {
		t.Errorf("timer in FAULT: %v", got)
	}
	acts = m.Step(t0.Add(11*time.Second), LinkUp{})
	n, _ = find[Notify](acts)
	if m.State() != Backup || n.Cause != "link up" || armed(t, acts, TimerMasterDown) != m.MasterDownInterval() {
		t.Errorf("link up: %v", acts)
	}
	// Start with the link down: FAULT at once.
	m = NewMachine(cfg3(100))
	m.Step(t0, Start{LinkUp: false})
	if m.State() != Fault {
		t.Errorf("start with link down: %v", m.State())
	}
	// The owner goes straight back to MASTER.
	m = master(t, cfg3(255))
	m.Step(t0, LinkDown{})
	m.Step(t0, LinkUp{})
	if m.State() != Master {
		t.Errorf("owner after link up: %v", m.State())
	}
}

func TestTrackedInterfaces(t *testing.T) {
	c := cfg3(150)
	c.Track = []TrackInterface{{"eth1", -60}, {"eth2", 20}, {"eth3", 0}}
	m := master(t, c)
	if m.Priority() != 170 {
		t.Fatalf("all up: priority %d, want 170", m.Priority())
	}
	acts := m.Step(t0, TrackChanged{"eth1", false})
	if m.Priority() != 110 || !reflect.DeepEqual(acts, []Action{SendAdvert{110}, ArmTimer{TimerAdvert, time.Second}}) {
		t.Errorf("eth1 down: prio %d %v", m.Priority(), acts)
	}
	m.Step(t0, TrackChanged{"eth2", false})
	if m.Priority() != 90 {
		t.Errorf("eth2 down too: %d", m.Priority())
	}
	// Now a peer at 100 beats us.
	m.Step(t0, AdvertReceived{ipB, adv(3, 100, 100)})
	if m.State() != Backup {
		t.Errorf("priority 90 vs 100: %v", m.State())
	}
	// Weight 0 means FAULT.
	acts = m.Step(t0, TrackChanged{"eth3", false})
	if n, _ := find[Notify](acts); m.State() != Fault || n.Cause != "tracked interface eth3 down" {
		t.Errorf("eth3 down: %v", acts)
	}
	acts = m.Step(t0, TrackChanged{"eth3", true})
	if n, _ := find[Notify](acts); m.State() != Backup || n.Cause != "tracked interface eth3 up" {
		t.Errorf("eth3 up: %v", acts)
	}
	// Unknown interfaces are ignored; priority stays within 1..254.
	if m.Step(t0, TrackChanged{"eth9", false}) != nil {
		t.Error("untracked interface changed something")
	}
	c = cfg3(30)
	c.Track = []TrackInterface{{"eth1", -100}}
	m = started(t, c)
	m.Step(t0, TrackChanged{"eth1", false})
	if m.Priority() != 1 {
		t.Errorf("clamp: %d", m.Priority())
	}
}

func TestShutdown(t *testing.T) {
	m := master(t, cfg3(100))
	acts := m.Step(t0.Add(time.Minute), Shutdown{})
	if _, ok := acts[0].(SendAdvert); !ok || acts[0].(SendAdvert).Priority != 0 {
		t.Fatalf("shutdown must first send priority 0: %v", acts)
	}
	if _, ok := acts[1].(RemoveVIPs); !ok {
		t.Errorf("then remove VIPs: %v", acts)
	}
	if n, _ := find[Notify](acts); n.To != Init || m.State() != Init {
		t.Errorf("shutdown: %v", acts)
	}
	// A backup just stops.
	m = started(t, cfg3(100))
	acts = m.Step(t0, Shutdown{})
	if _, ok := find[SendAdvert](acts); ok {
		t.Errorf("backup shutdown sent an advert: %v", acts)
	}
}

// sim runs machines on a lossless zero-delay network with a virtual clock.
type sim struct {
	t      *testing.T
	now    time.Time
	ms     []*Machine
	ips    []netip.Addr
	down   []bool // node's link cut from the others
	timers []map[TimerKind]time.Time
	log    []string
	vips   []bool
}

func newSim(t *testing.T, cfgs ...MachineConfig) *sim {
	s := &sim{t: t, now: t0}
	for _, c := range cfgs {
		s.ms = append(s.ms, NewMachine(c))
		s.ips = append(s.ips, c.PrimaryIP)
		s.timers = append(s.timers, map[TimerKind]time.Time{})
		s.down = append(s.down, false)
		s.vips = append(s.vips, false)
	}
	return s
}

func (s *sim) step(i int, ev Event) {
	queue := []struct {
		i  int
		ev Event
	}{{i, ev}}
	for len(queue) > 0 {
		q := queue[0]
		queue = queue[1:]
		for _, a := range s.ms[q.i].Step(s.now, q.ev) {
			switch a := a.(type) {
			case ArmTimer:
				s.timers[q.i][a.Timer] = s.now.Add(a.D)
			case StopTimer:
				delete(s.timers[q.i], a.Timer)
			case AddVIPs:
				s.vips[q.i] = true
			case RemoveVIPs:
				s.vips[q.i] = false
			case Notify:
				s.log = append(s.log, fmt.Sprintf("%v n%d %v->%v (%s)", s.now.Sub(t0), q.i, a.From, a.To, a.Cause))
			case SendAdvert:
				if s.down[q.i] {
					continue
				}
				for j := range s.ms {
					if j != q.i && !s.down[j] {
						queue = append(queue, struct {
							i  int
							ev Event
						}{j, AdvertReceived{s.ips[q.i], adv(3, a.Priority, 100)}})
					}
				}
			}
		}
	}
}

// run advances the virtual clock to until, firing timers in order.
func (s *sim) run(until time.Duration) {
	end := t0.Add(until)
	for {
		bi, bk, bt := -1, TimerKind(0), end
		for i, ts := range s.timers {
			for k, at := range ts {
				if !at.After(bt) && (bi < 0 || at.Before(bt)) {
					bi, bk, bt = i, k, at
				}
			}
		}
		if bi < 0 {
			s.now = end
			return
		}
		s.now = bt
		delete(s.timers[bi], bk)
		s.step(bi, TimerFired{bk})
	}
}

func (s *sim) masters() []int {
	var out []int
	for i, m := range s.ms {
		if m.State() == Master {
			out = append(out, i)
		}
	}
	return out
}

func TestTranscriptPair(t *testing.T) {
	a, b := cfg3(150), cfg3(100)
	b.PrimaryIP = ipB
	s := newSim(t, a, b)
	s.step(0, Start{LinkUp: true})
	s.step(1, Start{LinkUp: true})
	s.run(10 * time.Second)
	if !slices.Equal(s.masters(), []int{0}) || !s.vips[0] || s.vips[1] {
		t.Fatalf("election: masters %v vips %v\n%s", s.masters(), s.vips, strings.Join(s.log, "\n"))
	}
	// Clean stop of the master: the backup takes over after Skew_Time.
	s.step(0, Shutdown{})
	stop := s.now
	s.run(11 * time.Second)
	if !slices.Equal(s.masters(), []int{1}) {
		t.Fatalf("after shutdown: %v\n%s", s.masters(), strings.Join(s.log, "\n"))
	}
	if got, want := s.ms[1].Since().Sub(stop), s.ms[1].SkewTime(); got != want {
		t.Errorf("takeover after clean stop took %v, want skew %v", got, want)
	}
	// The higher-priority node comes back and preempts.
	s.step(0, Start{LinkUp: true})
	s.run(20 * time.Second)
	if !slices.Equal(s.masters(), []int{0}) || s.vips[1] {
		t.Fatalf("preemption: %v\n%s", s.masters(), strings.Join(s.log, "\n"))
	}
	// Split brain: cut node 0 off; both masters; rejoin: exactly one.
	s.down[0] = true
	cut := s.now
	s.run(30 * time.Second)
	if len(s.masters()) != 2 {
		t.Fatalf("split: %v", s.masters())
	}
	if got, want := s.ms[1].Since().Sub(cut), s.ms[1].MasterDownInterval(); got > want || got < want-time.Second {
		t.Errorf("crash takeover after %v, master-down interval %v", got, want)
	}
	s.down[0] = false
	s.run(40 * time.Second)
	if !slices.Equal(s.masters(), []int{0}) || !s.vips[0] || s.vips[1] {
		t.Fatalf("heal: %v\n%s", s.masters(), strings.Join(s.log, "\n"))
	}
	t.Log("\n" + strings.Join(s.log, "\n"))
}
