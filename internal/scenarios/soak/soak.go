package main

import (
	"context"
	"fmt"
	"io"
	"math/rand/v2"
	"net/netip"
	"os"
	"sync"
	"time"

	"github.com/lvsha/lvsha/internal/testenv/netns"
	"github.com/lvsha/lvsha/internal/testenv/probe"
	"github.com/lvsha/lvsha/vrrp"
)

// Bounds of the invariants. margin is the slack every time bound gets: the
// 10 ms sampling and probing, and a scheduler shared with other work on a
// 2-core machine.
const (
	margin = 100 * time.Millisecond
	// healthMargin adds the 100 ms status polling to margin.
	healthMargin = margin + 100*time.Millisecond
	// sampleEvery is how often the VIP holders are read.
	sampleEvery = 10 * time.Millisecond
	// probeEvery is how often the client pings the VIP.
	probeEvery = 10 * time.Millisecond
	// settleTimeout: after each fault the pair must be back to a MASTER
	// holding the VIP and b BACKUP within this time.
	settleTimeout = 10 * time.Second
)

var (
	// mdi is the backup's Master_Down_Interval, the protocol's floor for
	// a takeover after the master falls silent.
	mdi = vrrp.MasterDownInterval(3, 100, advertInterval)
	// healthBound is fall x interval + timeout.
	healthBound = time.Duration(checkFall)*checkInterval + checkTimeout
	// attribution: an outage belongs to a fault that started before it
	// and ended at most this long before it (the restarted master takes
	// the VIP back a Master_Down_Interval after its start-up).
	attribution = mdi + time.Second
)

// Fault kinds, in the report's order.
const (
	kLinkFlap   = "master link flap"
	kKill       = "SIGKILL + restart"
	kReloadOK   = "SIGHUP, valid config"
	kReloadBad  = "SIGHUP, invalid config"
	kChecker    = "SIGKILL checker"
	kRealServer = "real server stop/start"
	kRecreate   = "eth0 deleted + re-created"
	kMalformed  = "malformed adverts"
	kCollision  = "VRID-colliding adverts"
	kSplit      = "split (control)"
	kNone       = "(no fault)"
)

var kinds = []string{kLinkFlap, kKill, kReloadOK, kReloadBad, kChecker, kRealServer, kRecreate, kMalformed, kCollision}

// moves reports whether a fault of this kind may move the VIP to the other
// director: the client may then miss replies for up to
// Master_Down_Interval + margin. Every other fault must not interrupt it.
func moves(kind string) bool {
	return kind == kLinkFlap || kind == kKill || kind == kRecreate || kind == kSplit
}

type fault struct {
	kind, target string
	start, end   time.Time // end zero while in progress
	// master: the target held the VIP when the fault began.
	master bool
}

type violation struct {
	at    time.Time
	kind  string // the fault it is attributed to, or kNone
	cause string
}

type options struct {
	bin      string
	duration time.Duration
	seed     uint64
	keep     bool
	out      io.Writer
	// control runs the negative control after the chaos: a split the
	// checker must flag.
	control bool
}

type result struct {
	start      time.Time
	violations []violation
	// control holds the violations the negative control caused.
	control  []violation
	injected map[string]int
	worst    map[string]time.Duration
	detect   time.Duration // worst time for a stopped real server to be reported down
	res      map[string]string
}

// soaker is one run.
type soaker struct {
	o     options
	lab   *netns.Lab
	a, b  *director
	ds    []*director
	reals []*realServer
	e     *netns.Node
	pr    *probe.Prober
	rng   *rand.Rand
	rngMu sync.Mutex
	t0    time.Time
	out   io.Writer

	mu         sync.Mutex
	faults     []*fault
	violations []violation
	controlOn  bool
	control    []violation
	injected   map[string]int
	worst      map[string]time.Duration
	detect     time.Duration
	checkerAt  map[string]time.Time // when each director's checker came back after a kill
	samples    map[string][][]resources
}

func (s *soaker) rand(n time.Duration) time.Duration {
	s.rngMu.Lock()
	defer s.rngMu.Unlock()
	return time.Duration(s.rng.Int64N(int64(n)))
}

func (s *soaker) intn(n int) int {
	s.rngMu.Lock()
	defer s.rngMu.Unlock()
	return s.rng.IntN(n)
}

func (s *soaker) rel(t time.Time) string {
	return fmt.Sprintf("+%.3fs", t.Sub(s.t0).Seconds())
}

func (s *soaker) violate(at time.Time, kind, format string, args ...any) {
	v := violation{at: at, kind: kind, cause: fmt.Sprintf(format, args...)}
	s.mu.Lock()
	if s.controlOn {
		s.control = append(s.control, v)
	} else {
		s.violations = append(s.violations, v)
	}
	ctl := s.controlOn
	s.mu.Unlock()
	tag := "VIOLATION"
	if ctl {
		tag = "VIOLATION (control, expected)"
	}
	fmt.Fprintf(s.out, "%s %s [%s]: %s\n", s.rel(at), tag, kind, v.cause)
}

func (s *soaker) begin(kind, target string, master bool) *fault {
	f := &fault{kind: kind, target: target, start: time.Now(), master: master}
	s.mu.Lock()
	s.faults = append(s.faults, f)
	s.injected[kind]++
	s.mu.Unlock()
	return f
}

func (s *soaker) finish(f *fault) {
	s.mu.Lock()
	f.end = time.Now()
	s.mu.Unlock()
}

func (s *soaker) logf(format string, args ...any) {
	fmt.Fprintf(s.out, "%s %s\n", s.rel(time.Now()), fmt.Sprintf(format, args...))
}

// run builds the lab, injects faults for o.duration while checking the
// invariants, and returns what it saw.
func run(ctx context.Context, o options) (_ *result, err error) {
	if o.out == nil {
		o.out = os.Stdout
	}
	s := &soaker{o: o, out: o.out, rng: rand.New(rand.NewPCG(o.seed, o.seed^0x5eed)),
		injected: map[string]int{}, worst: map[string]time.Duration{}, checkerAt: map[string]time.Time{},
		samples: map[string][][]resources{}}
	dir, err := os.MkdirTemp("", "lvsha-soak")
	if err != nil {
		return nil, err
	}
	if o.keep {
		fmt.Fprintln(s.out, "work directory (configs, director logs):", dir)
	}
	defer func() {
		// The directors' logs are the evidence of a violation: keep them.
		if o.keep || len(s.violations) > 0 {
			fmt.Fprintln(s.out, "configs and director logs kept in", dir)
			return
		}
		os.RemoveAll(dir)
	}()
	if s.lab, err = netns.NewLab(netns.UniquePrefix("lvk")); err != nil {
		return nil, err
	}
	defer s.lab.Close()
	add := func(role string, addr netip.Prefix) *netns.Node {
		if err != nil {
			return nil
		}
		var n *netns.Node
		n, err = s.lab.AddNode(role, addr)
		return n
	}
	na, nb, nc := add("a", addrA), add("b", addrB), add("c", addrC)
	nr1, nr2 := add("r1", addrR1), add("r2", addrR2)
	s.e = add("e", addrE)
	if err != nil {
		return nil, err
	}
	s.reals = []*realServer{{name: "r1", addr: addrR1.Addr(), node: nr1}, {name: "r2", addr: addrR2.Addr(), node: nr2}}
	for _, r := range s.reals {
		if err := r.start(); err != nil {
			return nil, err
		}
		defer r.stop()
	}
	s.a, s.b = newDirector(o.bin, dir, "a", na, 150), newDirector(o.bin, dir, "b", nb, 100)
	s.ds = []*director{s.a, s.b}
	for _, d := range s.ds {
		if err := d.start(); err != nil {
			return nil, err
		}
		defer d.kill()
	}
	if s.pr, err = probe.Start(nc.NS, vip.Addr(), probeEvery); err != nil {
		return nil, err
	}
	defer s.pr.Stop()
	return s.chaos(ctx)
}
