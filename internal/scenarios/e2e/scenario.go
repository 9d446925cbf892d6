// Package e2e is lvsha's end-to-end scenario: the seed topology of the LVS
// direct-routing blog post, with a second director, run for real inside the
// QEMU VM (internal/testenv/vm), whose Debian kernel has IPVS.
//
// Six network namespaces share one bridge: client (.10), director1 (.132),
// director2 (.133), web1 (.134), web2 (.135) and web3 (.136, which joins
// by a reload). The directors run the real lvsha binary with configs
// derived from packaging/examples; the webs run `lvsha realserver up` and an
// HTTP server answering "this is webN". Run checks, in order:
//
//	a. the client's requests to http://192.168.94.200/ alternate web1/web2
//	   and the replies bypass the director (its IPVS outgoing counters stay 0);
//	b. director1 is MASTER, director2 BACKUP; director1 is SIGKILLed while
//	   the client sends a request every 10 ms: director2 becomes MASTER and
//	   the requests succeed again; the outage is measured;
//	c. web1's HTTP server stops: within fall x interval + timeout every
//	   request goes to web2; it starts again: round robin resumes;
//	d. director2's config gains web3 and gets SIGHUP: an established
//	   keep-alive connection to the VIP keeps working and web3 is in the table.
//
// The same code is the test (TestSeedScenarioVM) and the narrated show of
// `make demo` (internal/scenarios/demo), which sets Config.Show.
package e2e

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	"github.com/lvsha/lvsha/internal/director/control"
	"github.com/lvsha/lvsha/internal/testenv/netns"
)

// Guest paths of what the scenario needs inside the VM (see GuestFiles).
const (
	GuestLvsha    = "/usr/sbin/lvsha"
	GuestExamples = "/etc/lvsha/examples"
)

// Config is one run of the scenario.
type Config struct {
	// Lvsha is the lvsha binary; default GuestLvsha.
	Lvsha string
	// Examples is the directory with director1.toml and director2.toml;
	// default GuestExamples.
	Examples string
	// WorkDir receives the derived configs and the daemons' logs; default
	// /tmp/lvsha-e2e.
	WorkDir string
	// Out receives the narration; nil means io.Discard.
	Out io.Writer
	// Show narrates for a person: every reply, the request streams and
	// `lvsha status` tables. Without it only steps and results are printed.
	Show bool
	// Tuning adapts the example configs; zero means DefaultTuning().
	Tuning Tuning
}

// Report holds what the scenario measured.
type Report struct {
	// Outage is the longest time without a successful reply around the
	// crash of director1 (requests every 10 ms, new connection each).
	Outage time.Duration
	// FailedRequests is how many requests failed in that window.
	FailedRequests int
	// Takeover is from SIGKILL to director2's MASTER transition (its status).
	Takeover time.Duration
	// HealthDown is from stopping web1's server to its IPVS weight 0.
	HealthDown time.Duration
	// HealthUp is from starting it again to its weight being restored.
	HealthUp time.Duration
	// Reload is from SIGHUP to web3 being in director2's IPVS table.
	Reload time.Duration
	// Total is the whole scenario, setup included.
	Total time.Duration
}

const steps = 6

type scenario struct {
	cfg Config
	t   Tuning
	out io.Writer
	rep Report

	lab                                   *netns.Lab
	cli, d1Node, d2Node, web1, web2, web3 *netns.Node
	client                                *client
	d1, d2                                *director
	d2Config                              string                // director2's running config text
	webs                                  map[string]*webServer // by role
	failover, health                      *requestLoop          // running request loops, for cleanup
	cleanups                              []func()
}

// Run runs the scenario and returns what it measured. It must run as root
// in a kernel with IPVS (inside the VM); everything it creates is removed
// before it returns.
func Run(ctx context.Context, cfg Config) (*Report, error) {
	start := time.Now()
	if cfg.Lvsha == "" {
		cfg.Lvsha = GuestLvsha
	}
	if cfg.Examples == "" {
		cfg.Examples = GuestExamples
	}
	if cfg.WorkDir == "" {
		cfg.WorkDir = "/tmp/lvsha-e2e"
	}
	if cfg.Out == nil {
		cfg.Out = io.Discard
	}
	if cfg.Tuning == (Tuning{}) {
		cfg.Tuning = DefaultTuning()
	}
	s := &scenario{cfg: cfg, t: cfg.Tuning, out: cfg.Out, webs: map[string]*webServer{}}
	err := s.run(ctx)
	s.cleanup()
	s.rep.Total = time.Since(start)
	if err != nil {
		s.printf("\nFAIL: %v\n", err)
		for _, d := range []*director{s.d1, s.d2} {
			if d != nil {
				s.printf("\n%s's log (last lines, %s):\n%s\n", d.name, d.logf, d.logTail(30))
			}
		}
		return &s.rep, err
	}
	s.printf("\nPASS: round robin, direct routing, failover, health checks and reload all work (%v)\n", s.rep.Total.Round(time.Millisecond))
	s.printf("  failover outage %v (%d failed requests), takeover %v, web1 out %v / back %v, reload %v\n",
		s.rep.Outage.Round(time.Millisecond), s.rep.FailedRequests, s.rep.Takeover.Round(time.Millisecond),
		s.rep.HealthDown.Round(time.Millisecond), s.rep.HealthUp.Round(time.Millisecond), s.rep.Reload.Round(time.Millisecond))
	return &s.rep, nil
}

func (s *scenario) run(ctx context.Context) error {
	for i, st := range []struct {
		title string
		f     func(context.Context) error
	}{
		{"Building the seed topology in network namespaces (real IPVS, VM kernel)", s.setup},
		{"Starting lvsha on director1 (priority 150) and director2 (priority 100)", s.startDirectors},
		{"a. Round robin with direct routing: requests to http://192.168.94.200/", s.roundRobin},
		{"b. Failover: SIGKILL director1 while the client sends a request every 10 ms", s.failoverStep},
		{"c. Health check: stop web1's HTTP server, then start it again", s.healthStep},
		{"d. Reload: add web3 to director2's config and send SIGHUP, keep-alive connection open", s.reloadStep},
	} {
		s.printf("\n==> [%d/%d] %s\n", i+1, steps, st.title)
		if err := st.f(ctx); err != nil {
			return fmt.Errorf("step %d/%d (%s): %w", i+1, steps, st.title, err)
		}
	}
	return nil
}

func (s *scenario) printf(format string, args ...any) { fmt.Fprintf(s.out, format, args...) }

// say prints an indented line of narration; show only in Show mode.
func (s *scenario) say(format string, args ...any) {
	s.printf("    "+format+"\n", args...)
}

func (s *scenario) show(format string, args ...any) {
	if s.cfg.Show {
		s.say(format, args...)
	}
}

func (s *scenario) ok(format string, args ...any) {
	s.printf("    ok: "+format+"\n", args...)
}

// showBlock prints a multi-line text indented (Show mode only).
func (s *scenario) showBlock(text string) {
	if !s.cfg.Show {
		return
	}
	for _, l := range strings.Split(strings.TrimRight(text, "\n"), "\n") {
		s.printf("      %s\n", l)
	}
}

func (s *scenario) onCleanup(f func()) { s.cleanups = append(s.cleanups, f) }

func (s *scenario) cleanup() {
	for _, l := range []*requestLoop{s.failover, s.health} {
		if l != nil {
			l.stop()
		}
	}
	for i := len(s.cleanups) - 1; i >= 0; i-- {
		s.cleanups[i]()
	}
}

func (s *scenario) setup(ctx context.Context) error {
	if _, err := os.Stat("/proc/net/ip_vs"); err != nil {
		return fmt.Errorf("this kernel has no IPVS (the scenario runs inside the VM, see internal/testenv/vm): %w", err)
	}
	if _, err := os.Stat(s.cfg.Lvsha); err != nil {
		return fmt.Errorf("lvsha binary: %w", err)
	}
	if err := os.MkdirAll(s.cfg.WorkDir, 0o755); err != nil {
		return fmt.Errorf("work dir: %w", err)
	}
	lab, err := netns.NewLab(netns.UniquePrefix("e2e"))
	if err != nil {
		return err
	}
	s.lab = lab
	s.onCleanup(func() { _ = lab.Close() })
	for _, n := range []struct {
		role string
		addr netip.Prefix
		dst  **netns.Node
	}{
		{"client", ClientAddr, &s.cli},
		{"director1", Dir1Addr, &s.d1Node},
		{"director2", Dir2Addr, &s.d2Node},
		{"web1", Web1Addr, &s.web1},
		{"web2", Web2Addr, &s.web2},
		{"web3", Web3Addr, &s.web3},
	} {
		node, err := lab.AddNode(n.role, n.addr)
		if err != nil {
			return err
		}
		*n.dst = node
		s.show("%-9s %-18v eth0 %v", n.role, n.addr, node.MAC)
	}
	s.client = newClient(s.cli)
	s.ok("6 namespaces on one bridge; VIP %v, service port %d", VIP, ServicePort)

	for _, w := range []*netns.Node{s.web1, s.web2, s.web3} {
		stateDir := "/run/lvsha-" + w.Role
		out, err := w.Run(s.cfg.Lvsha, "realserver", "up", "--vip", VIP.String(), "--interface", "eth0", "--state-dir", stateDir)
		if err != nil {
			return fmt.Errorf("%s: lvsha realserver up: %w", w.Role, err)
		}
		// Own state dirs: the namespaces share one filesystem.
		s.show("%s$ lvsha realserver up --vip %v --interface eth0 --state-dir %s", w.Role, VIP, stateDir)
		s.showBlock(lastLine(out))
		s.onCleanup(func() {
			_, _ = w.Run(s.cfg.Lvsha, "realserver", "down", "--vip", VIP.String(), "--interface", "eth0", "--state-dir", stateDir)
		})
		has, err := w.HasAddr("lo", VIP)
		if err != nil {
			return err
		}
		if !has {
			return fmt.Errorf("%s: lvsha realserver up left no %v on lo", w.Role, VIP)
		}
		ws := newWebServer(w)
		if err := ws.start(); err != nil {
			return err
		}
		s.webs[w.Role] = ws
		s.onCleanup(func() { _ = ws.stop() })
	}
	s.ok("web1, web2, web3: `lvsha realserver up` (VIP on lo, ARP suppressed) and HTTP servers on :%d", ServicePort)

	for i, node := range []*netns.Node{s.d1Node, s.d2Node} {
		name := node.Role
		example, err := os.ReadFile(filepath.Join(s.cfg.Examples, name+".toml"))
		if err != nil {
			return fmt.Errorf("example config: %w", err)
		}
		d := newDirector(name, node, s.cfg.Lvsha, s.cfg.WorkDir)
		t := s.t
		t.ControlSocket = d.socket
		text, err := DeriveConfig(string(example), t)
		if err != nil {
			return fmt.Errorf("%s: %w", name, err)
		}
		if err := d.writeConfig(text); err != nil {
			return err
		}
		out, err := d.checkConfig()
		if err != nil {
			return err
		}
		s.show("%s$ lvsha -t -f %s", name, d.config)
		s.showBlock(out)
		if i == 0 {
			s.d1 = d
		} else {
			s.d2, s.d2Config = d, text
		}
		s.onCleanup(func() { d.stop(5 * time.Second) })
	}
	s.ok("director configs derived from packaging/examples: interface %s, advert_interval %v, check every %v (timeout %v, fall %d, rise %d)",
		s.t.Interface, s.t.AdvertInterval, s.t.CheckInterval, s.t.CheckTimeout, s.t.Fall, s.t.Rise)
	return nil
}

func lastLine(s string) string {
	lines := strings.Split(strings.TrimSpace(s), "\n")
	return lines[len(lines)-1]
}

// serviceReady checks that a director's status has the service in the
// kernel with the given real servers up at their configured weight.
func serviceReady(st *control.Status, reals ...netip.Prefix) error {
	if st.IPVSError != "" {
		return fmt.Errorf("IPVS error: %s", st.IPVSError)
	}
	if len(st.Services) != 1 || !st.Services[0].InKernel {
		return fmt.Errorf("service not in the kernel yet: %s", describeReals(st))
	}
	for _, p := range reals {
		addr := fmt.Sprintf("%v:%d", p.Addr(), ServicePort)
		r, ok := findReal(st, addr)
		if !ok || r.Health != "up" || r.KernelWeight != r.Weight || r.Weight == 0 {
			return fmt.Errorf("%s not up at full weight: %s", addr, describeReals(st))
		}
	}
	return nil
}

func (s *scenario) startDirectors(ctx context.Context) error {
	for _, d := range []*director{s.d1, s.d2} {
		if err := d.start(); err != nil {
			return err
		}
		s.show("%s$ lvsha -f %s  (log: %s)", d.name, d.config, d.logf)
	}
	took, err := waitFor(ctx, "director1 MASTER, director2 BACKUP, IPVS programmed on both", 30*time.Second, 50*time.Millisecond, func() error {
		st1, err := s.d1.status(ctx)
		if err != nil {
			return err
		}
		st2, err := s.d2.status(ctx)
		if err != nil {
			return err
		}
		s1, _, err := vrrpState(st1)
		if err != nil {
			return err
		}
		s2, m2, err := vrrpState(st2)
		if err != nil {
			return err
		}
		if s1 != "MASTER" || s2 != "BACKUP" || m2 != Dir1Addr.Addr().String() {
			return fmt.Errorf("director1 %s, director2 %s (master %q)", s1, s2, m2)
		}
		for _, st := range []*control.Status{st1, st2} {
			if err := serviceReady(st, Web1Addr, Web2Addr); err != nil {
				return err
			}
		}
		return nil
	})
	if err != nil {
		return err
	}
	// The assertion proper goes through the real CLI.
	for _, c := range []struct {
		d     *director
		state string
	}{{s.d1, "MASTER"}, {s.d2, "BACKUP"}} {
		st, err := c.d.statusJSON()
		if err != nil {
			return err
		}
		state, _, err := vrrpState(st)
		if err != nil {
			return err
		}
		if state != c.state {
			return fmt.Errorf("`lvsha status --json` of %s says %s, want %s", c.d.name, state, c.state)
		}
	}
	if err := s.vipOn(s.d1Node, true); err != nil {
		return err
	}
	if err := s.vipOn(s.d2Node, false); err != nil {
		return err
	}
	s.ok("director1 MASTER (holds %v), director2 BACKUP; both programmed IPVS; %v after start", VIP, took.Round(time.Millisecond))
	return s.showStatus(s.d1, s.d2)
}

// vipOn checks whether a director holds the VIP on its interface.
func (s *scenario) vipOn(n *netns.Node, want bool) error {
	has, err := n.HasAddr(s.t.Interface, VIP)
	if err != nil {
		return err
	}
	if has != want {
		return fmt.Errorf("%s holds %v on %s: %v, want %v", n.Role, VIP, s.t.Interface, has, want)
	}
	return nil
}

// showStatus prints `lvsha status` of the directors (Show mode).
func (s *scenario) showStatus(ds ...*director) error {
	if !s.cfg.Show {
		return nil
	}
	for _, d := range ds {
		out, err := d.statusCLI(false)
		if err != nil {
			return err
		}
		s.say("%s$ lvsha status", d.name)
		s.showBlock(out)
	}
	return nil
}

func (s *scenario) roundRobin(ctx context.Context) error {
	const n = 10
	var got []string
	var recs []request
	for i := range n {
		start := time.Now()
		body, err := s.client.get(ctx, 5*time.Second)
		if err != nil {
			return fmt.Errorf("request %d: %w", i+1, err)
		}
		got = append(got, body)
		recs = append(recs, request{start: start, end: time.Now(), body: body})
		s.show("client$ curl http://%v/  ->  %s", VIP, body)
	}
	if err := alternates(got, "this is web1", "this is web2"); err != nil {
		return err
	}
	s.ok("%d requests, each on a new connection, alternate web1/web2 (a reply takes %v, median)", n, medianLatency(recs).Round(time.Millisecond))

	// The kernel folds its per-CPU counters into ip_vs_stats every 2 s.
	var st ipvsStats
	took, err := waitFor(ctx, "director1's IPVS counters to count the connections", 10*time.Second, 100*time.Millisecond, func() error {
		var err error
		if st, err = readIPVSStats(s.d1Node.NS); err != nil {
			return fatalError{err}
		}
		if st.Conns < n {
			return fmt.Errorf("%+v", st)
		}
		return nil
	})
	if err != nil {
		return err
	}
	s.show("director1$ cat /proc/net/ip_vs_stats  (after %v)", took.Round(time.Millisecond))
	s.show("  %d connections, %d packets / %d bytes in, %d packets / %d bytes out", st.Conns, st.InPkts, st.InBytes, st.OutPkts, st.OutBytes)
	if st.InPkts == 0 || st.OutPkts != 0 || st.OutBytes != 0 {
		return fmt.Errorf("director1's IPVS counters %+v: want incoming packets and 0 outgoing (direct routing: replies go from the webs straight to the client)", st)
	}
	s.ok("replies bypass the director: director1 forwarded %d packets in, 0 packets out", st.InPkts)
	return nil
}

func (s *scenario) failoverStep(ctx context.Context) error {
	const (
		period   = 10 * time.Millisecond
		timeout  = 300 * time.Millisecond // a lost SYN is retried after 1s: such a request fails
		inFlight = 4
		warmup   = 20
		after    = 30
	)
	loop := startLoop(ctx, s.client, period, timeout, inFlight)
	s.failover = loop
	t0 := time.Now()
	if _, err := loop.waitRequests(ctx, "the client's first replies", t0, warmup, 20*time.Second, true); err != nil {
		return err
	}
	// SIGKILL: director1 can send nothing more, no priority-0 advert;
	// director2 must notice the missing adverts (Master_Down_Interval).
	// A killed process cannot remove its VIP, and its IPVS table stays in
	// the kernel, so to model the dead host its cable is pulled right after
	// the kill (its veth's bridge port goes down). The client's neighbour
	// cache still maps the VIP to director1's MAC: it is director2's
	// gratuitous ARPs that move the traffic, as on a real LAN.
	if mac, err := s.cli.NeighbourMAC(VIP); err == nil {
		s.show("client's ARP entry for %v: %v (director1 is %v)", VIP, mac, s.d1Node.MAC)
	}
	killAt := time.Now()
	if err := s.d1.signal(syscall.SIGKILL); err != nil {
		return err
	}
	if err := s.lab.SetPort("director1", false); err != nil {
		return fmt.Errorf("unplug director1: %w", err)
	}
	unplugged := time.Since(killAt)
	if err := s.d1.waitExit(ctx, 10*time.Second); err != nil {
		return err
	}
	if has, err := s.d1Node.HasAddr(s.t.Interface, VIP); err == nil && has {
		s.show("director1: lvsha killed; %v is still on its %s (a killed process cannot clean up), so its cable is pulled", VIP, s.t.Interface)
	}
	var st2 *control.Status
	took, err := waitFor(ctx, "director2 to become MASTER", 10*time.Second, 5*time.Millisecond, func() error {
		var err error
		if st2, err = s.d2.status(ctx); err != nil {
			return err
		}
		state, _, err := vrrpState(st2)
		if err != nil {
			return err
		}
		if state != "MASTER" {
			return fmt.Errorf("director2 %s", state)
		}
		return nil
	})
	if err != nil {
		return err
	}
	s.rep.Takeover = took
	if since := st2.VRRP[0].Since; since.After(killAt) {
		s.rep.Takeover = since.Sub(killAt)
	}
	if _, err := loop.waitRequests(ctx, "the client's requests to succeed again through director2", killAt, after, 20*time.Second, true); err != nil {
		return err
	}
	recs := loop.stop()
	s.failover = nil

	// The outage is the longest gap from the last reply before the kill on.
	from := 0
	for i, r := range recs {
		if r.ok() && r.end.Before(killAt) {
			from = i
		}
	}
	g, ok := longestGap(recs[from:])
	if !ok {
		return errors.New("fewer than two successful replies around the kill")
	}
	s.rep.Outage, s.rep.FailedRequests = g.Length, g.Failed
	if s.cfg.Show {
		s.say("client requests, one every %v, one character each (1/2 = web1/web2, . = no reply within %v; [K] = SIGKILL):", period, timeout)
		s.showBlock(renderStream(recs, 90, streamMark{At: killAt, Label: "K"}))
	}
	st, err := s.d2.statusJSON()
	if err != nil {
		return err
	}
	if state, _, _ := vrrpState(st); state != "MASTER" {
		return fmt.Errorf("`lvsha status --json` of director2 says %s after the failover, want MASTER", state)
	}
	if err := s.vipOn(s.d2Node, true); err != nil {
		return err
	}
	mac, err := s.cli.NeighbourMAC(VIP)
	if err != nil {
		return err
	}
	if mac.String() != s.d2Node.MAC.String() {
		return fmt.Errorf("the client's ARP entry for %v is %v after the failover, want director2's %v", VIP, mac, s.d2Node.MAC)
	}
	s.ok("director2 MASTER %v after SIGKILL (director1 unplugged %v after the kill); client's ARP entry for %v: %v (director2 is %v)",
		s.rep.Takeover.Round(time.Millisecond), unplugged.Round(time.Millisecond), VIP, mac, s.d2Node.MAC)
	s.ok("requests succeed again: %s after the kill", summarize(loop.since(killAt)))
	s.printf("    OUTAGE: %v without a successful reply (%d requests failed); advert_interval %v, Master_Down_Interval %v; a reply takes %v (median)\n",
		g.Length.Round(time.Millisecond), g.Failed, s.t.AdvertInterval,
		MasterDownInterval(s.t.AdvertInterval, st2.VRRP[0].Priority).Round(time.Millisecond), medianLatency(recs).Round(time.Millisecond))
	return s.showStatus(s.d2)
}

func (s *scenario) healthStep(ctx context.Context) error {
	const (
		period   = 20 * time.Millisecond
		timeout  = time.Second
		inFlight = 2
		check    = 10 // requests checked after each transition
	)
	web1 := fmt.Sprintf("%v:%d", Web1Addr.Addr(), ServicePort)
	slack := 3 * time.Second // TCG is slow; the measured time is printed
	loop := startLoop(ctx, s.client, period, timeout, inFlight)
	s.health = loop
	if _, err := loop.waitRequests(ctx, "replies before stopping web1", time.Now(), 4, 10*time.Second, true); err != nil {
		return err
	}

	stopAt := time.Now()
	if err := s.webs["web1"].stop(); err != nil {
		return err
	}
	s.show("web1: HTTP server stopped")
	took, err := waitFor(ctx, fmt.Sprintf("director2 to take web1 out (weight 0) within fall x interval + timeout = %v (+ %v slack)", s.t.FailBound(), slack),
		s.t.FailBound()+slack, 10*time.Millisecond, func() error {
			st, err := s.d2.status(ctx)
			if err != nil {
				return err
			}
			r, ok := findReal(st, web1)
			if !ok || r.Health != "down" || r.KernelWeight != 0 {
				return fmt.Errorf("%s", describeReals(st))
			}
			return nil
		})
	if err != nil {
		return err
	}
	s.rep.HealthDown = took
	outAt := time.Now()
	rs, err := loop.waitRequests(ctx, "requests after web1 left the rotation", outAt, check, 20*time.Second, false)
	if err != nil {
		return err
	}
	for _, r := range rs {
		if r.body != "this is web2" {
			return fmt.Errorf("after web1 was taken out, a request got %q, want every one on web2: %s", bodies(rs), summarize(rs))
		}
	}
	s.ok("web1 down and weight 0 on director2 %v after its server stopped (bound fall x interval + timeout = %v); then %s",
		took.Round(time.Millisecond), s.t.FailBound(), summarize(rs))

	startAt := time.Now()
	if err := s.webs["web1"].start(); err != nil {
		return err
	}
	s.show("web1: HTTP server started")
	took, err = waitFor(ctx, fmt.Sprintf("director2 to put web1 back within rise x interval + timeout = %v (+ %v slack)", s.t.RiseBound(), slack),
		s.t.RiseBound()+slack, 10*time.Millisecond, func() error {
			st, err := s.d2.status(ctx)
			if err != nil {
				return err
			}
			return serviceReady(st, Web1Addr, Web2Addr)
		})
	if err != nil {
		return err
	}
	s.rep.HealthUp = took
	backAt := time.Now()
	rs, err = loop.waitRequests(ctx, "requests after web1 came back", backAt, check, 20*time.Second, false)
	if err != nil {
		return err
	}
	// These requests overlap (the loop keeps several in flight), so their
	// SYNs may reach IPVS in another order than they started: round robin
	// shows as an even split, not as strict alternation.
	if err := balanced(bodies(rs), 2, "this is web1", "this is web2"); err != nil {
		return fmt.Errorf("after web1 came back: %w", err)
	}
	recs := loop.stop()
	s.health = nil
	s.ok("web1 up and back at full weight %v after its server started; round robin again: %s", took.Round(time.Millisecond), summarize(rs))
	if s.cfg.Show {
		s.say("client requests (1/2 = web1/web2, . = failed: refused by the stopped server before the check noticed):")
		s.showBlock(renderStream(recs, 90,
			streamMark{At: stopAt, Label: "web1 stopped"}, streamMark{At: outAt, Label: "weight 0"},
			streamMark{At: startAt, Label: "web1 started"}, streamMark{At: backAt, Label: "weight 1"}))
	}
	return nil
}

func (s *scenario) reloadStep(ctx context.Context) error {
	web3 := fmt.Sprintf("%v:%d", Web3Addr.Addr(), ServicePort)
	ka, err := s.client.keepAlive(ctx, 5*time.Second)
	if err != nil {
		return err
	}
	defer ka.close()
	first, err := ka.get(5 * time.Second)
	if err != nil {
		return err
	}
	s.show("client: keep-alive connection %s -> %v:%d, request 1: %s", ka.local, VIP, ServicePort, first)
	before, err := s.d2.status(ctx)
	if err != nil {
		return err
	}

	if err := s.d2.writeConfig(WithRealServer(s.d2Config, web3)); err != nil {
		return err
	}
	if _, err := s.d2.checkConfig(); err != nil {
		return err
	}
	s.show("director2: %s now lists %s; kill -HUP lvsha", s.d2.config, web3)
	if err := s.d2.signal(syscall.SIGHUP); err != nil {
		return err
	}
	took, err := waitFor(ctx, "web3 in director2's IPVS table after SIGHUP", 15*time.Second, 10*time.Millisecond, func() error {
		st, err := s.d2.status(ctx)
		if err != nil {
			return err
		}
		return serviceReady(st, Web1Addr, Web2Addr, Web3Addr)
	})
	if err != nil {
		return err
	}
	s.rep.Reload = took

	for i := 2; i <= 3; i++ {
		body, err := ka.get(5 * time.Second)
		if err != nil {
			return fmt.Errorf("request %d on the connection opened before the reload: %w", i, err)
		}
		if body != first {
			return fmt.Errorf("request %d on the same connection answered by %q, request 1 by %q: the connection was re-scheduled", i, body, first)
		}
		s.show("client: same connection %s, request %d: %s", ka.local, i, body)
	}
	s.ok("the keep-alive connection opened before the reload still works (same connection, same server: %s)", strings.TrimPrefix(first, "this is "))

	st, err := s.d2.statusJSON()
	if err != nil {
		return err
	}
	if err := serviceReady(st, Web1Addr, Web2Addr, Web3Addr); err != nil {
		return fmt.Errorf("`lvsha status --json` of director2: %w", err)
	}
	if len(st.Services[0].Reals) != 3 {
		return fmt.Errorf("`lvsha status --json` of director2 lists %d real servers, want 3: %s", len(st.Services[0].Reals), describeReals(st))
	}
	if state, _, _ := vrrpState(st); state != "MASTER" || st.VRRP[0].Transitions != before.VRRP[0].Transitions {
		return fmt.Errorf("director2 after the reload: %s with %d transitions (before: %d): a reload must not touch an unchanged VRRP instance",
			state, st.VRRP[0].Transitions, before.VRRP[0].Transitions)
	}
	s.ok("director2 lists web3 (up, weight 1) %v after SIGHUP, still MASTER with no VRRP transition", took.Round(time.Millisecond))

	var got []string
	for i := range 6 {
		body, err := s.client.get(ctx, 5*time.Second)
		if err != nil {
			return fmt.Errorf("new connection %d after the reload: %w", i+1, err)
		}
		got = append(got, body)
		s.show("client$ curl http://%v/  ->  %s", VIP, body)
	}
	if err := alternates(got, "this is web1", "this is web2", "this is web3"); err != nil {
		return fmt.Errorf("new connections after the reload: %w", err)
	}
	s.ok("new connections go round robin over web1, web2 and web3")
	return s.showStatus(s.d2)
}
