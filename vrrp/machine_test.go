package vrrp

import (
	"net/netip"
	"reflect"
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
	return MachineConfig{VRID: 51, Priority: prio, Version: 3, AdvertInterval: time.Second, Preempt: true, PrimaryIP: ipA,
		VIPs: []netip.Addr{netip.MustParseAddr("10.0.0.100")}}
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

// rx is an advert as it arrives from a router on the link.
func rx(t *testing.T, from netip.Addr, a *Advert) Packet {
	t.Helper()
	b, err := a.Marshal(ChecksumPseudoHeader, from, Group)
	if err != nil {
		t.Fatal(err)
	}
	return Packet{Src: from, Dst: Group, TTL: 255, Payload: b}
}

// recv gives m an advert that passes the receive checks and returns the
// actions it takes.
func recv(t *testing.T, m *Machine, now time.Time, from netip.Addr, a *Advert) []Action {
	t.Helper()
	acts, drop := m.Receive(now, rx(t, from, a))
	if drop != "" {
		t.Fatalf("advert from %s dropped: %s", from, drop)
	}
	return acts
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
	acts := recv(t, m, t0, ipB, adv(3, 150, 50))
	want := 3*500*time.Millisecond + 156*500*time.Millisecond/256
	if d := armed(t, acts, TimerMasterDown); d != want {
		t.Errorf("master-down after 0.5s advert = %v, want %v", d, want)
	}
	if m.MasterAdverInterval() != 500*time.Millisecond || m.Master() != ipB {
		t.Errorf("learned %v from %v", m.MasterAdverInterval(), m.Master())
	}
	// v2 does not learn: an advert with another interval is dropped, and
	// Skew_Time is in seconds whatever the interval.
	c := cfg3(100)
	c.Version = 2
	m2 := started(t, c)
	if acts, drop := m2.Receive(t0, rx(t, ipB, adv(2, 150, 300))); drop != "interval" || acts != nil {
		t.Errorf("v2 advert with a 3s interval to a 1s router: %v, dropped %q", acts, drop)
	}
	acts = recv(t, m2, t0, ipB, adv(2, 150, 100))
	if d := armed(t, acts, TimerMasterDown); d != 3*time.Second+156*time.Second/256 {
		t.Errorf("v2 master-down %v", d)
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
		acts := recv(t, m, t0, ipB, adv(3, tt.theirs, 100))
		_, got := find[ArmTimer](acts)
		if got != tt.rearm || m.State() != Backup {
			t.Errorf("preempt=%v own 150 theirs %d: re-armed %v (%v), want %v", tt.preempt, tt.theirs, got, acts, tt.rearm)
		}
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
		acts := recv(t, m, t0.Add(10*time.Second), tt.from, adv(3, tt.theirs, 20))
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
		// More lower adverts before it fires do not push it back (a
		// second apart: closer ones get no GARP burst, see
		// TestLowerGARPRateLimit).
		want = want[:3]
		if acts := recv(t, m, t0.Add(11*time.Second), tt.from, adv(3, tt.theirs, 20)); !reflect.DeepEqual(acts, want) {
			t.Errorf("%s again: %v, want %v", tt.name, acts, want)
		}
		if acts := m.Step(t0.Add(12*time.Second), TimerFired{TimerGARPHeal}); !reflect.DeepEqual(acts, []Action{SendGARP{}}) {
			t.Errorf("%s heal timer: %v", tt.name, acts)
		}
	}
}

// TestLowerGARPRateLimit: a master answers every lower-priority advert
// with an advert, but sends a GARP burst for them (or for the heal timer)
// only if the last such burst is a second old or more.
func TestLowerGARPRateLimit(t *testing.T) {
	m := master(t, cfg3(100))
	start := t0.Add(10 * time.Second)
	steps := []struct {
		at   time.Duration
		heal bool // the heal timer fires, not an advert
		garp bool
	}{
		{0, false, true},
		{10 * time.Millisecond, false, false},
		{999 * time.Millisecond, false, false},
		{time.Second, false, true},
		{1100 * time.Millisecond, true, false}, // the heal timer armed at 0
		{1500 * time.Millisecond, false, false},
		{3 * time.Second, true, true}, // armed at 1.5s, no burst since 1s
	}
	var suppressed uint64
	for _, s := range steps {
		var acts []Action
		if s.heal {
			acts = m.Step(start.Add(s.at), TimerFired{TimerGARPHeal})
		} else {
			acts = recv(t, m, start.Add(s.at), ipB, adv(3, 50, 100))
			if sa, ok := acts[0].(SendAdvert); !ok || sa.Priority != 100 {
				t.Errorf("%v: no advert in answer: %v", s.at, acts)
			}
		}
		_, garp := find[SendGARP](acts)
		if !s.garp {
			suppressed++
		}
		if garp != s.garp || m.GARPSuppressed() != suppressed {
			t.Errorf("%v: GARP %v, suppressed %d; want %v, %d", s.at, garp, m.GARPSuppressed(), s.garp, suppressed)
		}
	}
}

// TestCheckAdvertInterval: the intervals each version's field can carry,
// at the edges (conf reports these on advert_interval; New refuses them).
func TestCheckAdvertInterval(t *testing.T) {
	ms := time.Millisecond
	for _, tc := range []struct {
		version int
		d       time.Duration
		ok      bool
	}{
		{3, 10 * ms, true}, {3, 40950 * ms, true}, {3, 100 * ms, true},
		{3, 0, false}, {3, 9 * ms, false}, {3, 40960 * ms, false}, {3, 15 * ms, false},
		{2, time.Second, true}, {2, 255 * time.Second, true},
		{2, 0, false}, {2, 1500 * ms, false}, {2, 256 * time.Second, false},
		{4, time.Second, false},
	} {
		if err := CheckAdvertInterval(tc.version, tc.d); (err == nil) != tc.ok {
			t.Errorf("v%d %v: err %v, want ok=%v", tc.version, tc.d, err, tc.ok)
		}
	}
}
