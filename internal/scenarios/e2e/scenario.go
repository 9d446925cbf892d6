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
//	   keep-alive connection to the VIP keeps working and web3 is in the table;
//	e. director1 comes back and preempts. A keep-alive connection opened
//	   before b's SIGKILL talks to the same web after b and after e
//	   (connection sync, [sync] in the examples);
//	f. web1 loses the VIP from lo: its via_vip check fails, director1 takes
//	   it out and every request goes to web2; with the VIP back it returns.
//
// The same code is the test (TestSeedScenarioVM) and the narrated show of
// `make demo` (internal/scenarios/demo), which sets Config.Show.
package e2e

import (
	"context"
	"fmt"
	"io"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
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

const steps = 8

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
	synced                                *keepAlive            // opened before the SIGKILL (connection sync)
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
	s.printf("\nPASS: round robin, direct routing, failover, health checks, reload and connection sync all work (%v)\n", s.rep.Total.Round(time.Millisecond))
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
		{"e. Failback: director1 comes back and preempts; the connection opened before the SIGKILL goes on", s.failbackStep},
		{"f. Misconfigured real server: web1 loses the VIP from lo, is caught by its via_vip check, then fixed", s.misconfStep},
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
		t.StateDir = filepath.Join(filepath.Dir(d.socket), name+"-state")
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
