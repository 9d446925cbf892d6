// Command benchfailover measures the outage a client sees when the VRRP
// master fails, for lvsha and for keepalived 2.2.7 in the same run: two
// directors and a client in network namespaces on a bridge, the client pings
// the VIP every 10 ms, and the outage is the longest gap between replies
// around the failure (the master's link going down, or a clean stop with
// SIGTERM). It prints one table beside the protocol's floor
// (Master_Down_Interval = 3 x interval + skew for a crash, Skew_Time for a
// clean stop). With -soak it then runs both pairs at 10 ms adverts with every
// CPU busy and counts false failovers. Needs root; `make bench-failover`.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"log/slog"
	"math"
	"math/rand/v2"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"runtime"
	"slices"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/lvsha/lvsha/internal/testenv/netns"
	"github.com/lvsha/lvsha/vrrp"
	"golang.org/x/net/icmp"
	"golang.org/x/net/ipv4"
)

var (
	vip   = netip.MustParsePrefix("10.99.0.100/24")
	addrA = netip.MustParsePrefix("10.99.0.2/24")
	addrB = netip.MustParsePrefix("10.99.0.3/24")
	addrC = netip.MustParsePrefix("10.99.0.10/24")
)

const (
	prioA = 150
	prioB = 100 // the backup that takes over: its skew sets the floor
)

type options struct {
	lvsha      string
	keepalived string
	intervals  []time.Duration
	impls      []string
	events     []string
	runs       int
	probe      time.Duration
	soak       time.Duration
	soakIntvl  time.Duration
	workDir    string
	rt         int
	log        *slog.Logger
}

func main() {
	if err := run(); err != nil {
		fmt.Fprintln(os.Stderr, "benchfailover:", err)
		os.Exit(1)
	}
}

func run() error {
	var o options
	var intervals, impls, events string
	flag.StringVar(&o.lvsha, "lvsha", "", "lvsha binary (default: go build ./cmd/lvsha)")
	flag.StringVar(&o.keepalived, "keepalived", "keepalived", "keepalived binary")
	flag.StringVar(&intervals, "intervals", "1s,100ms,10ms", "advert intervals")
	flag.StringVar(&impls, "impl", "lvsha,keepalived", "implementations to measure")
	flag.StringVar(&events, "events", "linkdown,stop", "failures: linkdown (master's port unplugged), stop (SIGTERM)")
	flag.IntVar(&o.runs, "runs", 5, "measurements per cell (the table shows the median and the worst)")
	flag.DurationVar(&o.probe, "probe", 10*time.Millisecond, "client probe interval")
	flag.DurationVar(&o.soak, "soak", 10*time.Minute, "busy-CPU soak duration at -soak-interval adverts (0 = skip)")
	flag.DurationVar(&o.soakIntvl, "soak-interval", 10*time.Millisecond, "advert interval of the soak")
	flag.IntVar(&o.rt, "rt", 0, "run every director under SCHED_RR at this priority (chrt -r; what process.SetRealtime does); 0 = normal scheduling")
	verbose := flag.Bool("v", false, "log progress")
	keep := flag.Bool("keep", false, "keep the work directory (configs and director logs)")
	flag.Parse()
	lvl := slog.LevelWarn
	if *verbose {
		lvl = slog.LevelInfo
	}
	o.log = slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: lvl}))
	if os.Geteuid() != 0 {
		return errors.New("needs root (network namespaces)")
	}
	for _, s := range strings.Split(intervals, ",") {
		d, err := time.ParseDuration(strings.TrimSpace(s))
		if err != nil {
			return fmt.Errorf("-intervals: %w", err)
		}
		o.intervals = append(o.intervals, d)
	}
	o.impls = strings.Split(impls, ",")
	o.events = strings.Split(events, ",")
	var err error
	if o.workDir, err = os.MkdirTemp("", "benchfailover"); err != nil {
		return err
	}
	if *keep {
		fmt.Fprintln(os.Stderr, "work directory:", o.workDir)
	} else {
		defer os.RemoveAll(o.workDir)
	}
	if o.lvsha == "" {
		o.lvsha = filepath.Join(o.workDir, "lvsha")
		if out, err := exec.Command("go", "build", "-o", o.lvsha, "./cmd/lvsha").CombinedOutput(); err != nil {
			return fmt.Errorf("go build ./cmd/lvsha (run from the repository root or pass -lvsha): %w\n%s", err, out)
		}
	}
	if slices.Contains(o.impls, "keepalived") {
		if _, err := exec.LookPath(o.keepalived); err != nil {
			return fmt.Errorf("keepalived: %w (apt-get install keepalived)", err)
		}
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()

	fmt.Printf("client probe every %v; outage = longest gap between replies; %d run(s) per cell, median (worst)\n\n", o.probe, o.runs)
	fmt.Printf("| advert interval | failure | protocol floor |")
	for _, im := range o.impls {
		fmt.Printf(" %s |", im)
	}
	fmt.Printf("\n|---|---|---|%s\n", strings.Repeat("---|", len(o.impls)))
	for _, iv := range o.intervals {
		for _, ev := range o.events {
			floor := vrrp.SkewTime(3, prioB, iv)
			if ev == "linkdown" {
				floor += 3 * iv
			}
			fmt.Printf("| %v | %s | %s |", iv, eventName(ev), ms(floor))
			for _, im := range o.impls {
				var got []time.Duration
				for r := range o.runs {
					if ctx.Err() != nil {
						return ctx.Err()
					}
					d, err := measure(ctx, &o, im, iv, ev, r)
					if err != nil {
						fmt.Printf(" error: %v |", err)
						got = nil
						break
					}
					got = append(got, d)
				}
				if len(got) > 0 {
					slices.Sort(got)
					fmt.Printf(" %s (%s) |", ms(got[len(got)/2]), ms(got[len(got)-1]))
				}
			}
			fmt.Println()
		}
	}
	if o.soak > 0 {
		fmt.Println()
		return soak(ctx, &o)
	}
	return nil
}

func eventName(ev string) string {
	switch ev {
	case "linkdown":
		return "master's link goes down"
	case "stop":
		return "master stops cleanly (SIGTERM)"
	}
	return ev
}

func ms(d time.Duration) string {
	if d >= time.Second {
		return fmt.Sprintf("%.2f s", d.Seconds())
	}
	return fmt.Sprintf("%.0f ms", float64(d)/float64(time.Millisecond))
}

// speaker is one director process.
type speaker struct {
	node *netns.Node
	cmd  *exec.Cmd
	log  string
	done chan struct{}
}

func (s *speaker) kill() {
	_ = syscall.Kill(-s.cmd.Process.Pid, syscall.SIGKILL)
	<-s.done
}

func (s *speaker) term(timeout time.Duration) {
	_ = s.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-s.done:
	case <-time.After(timeout):
		s.kill()
	}
}

func (o *options) start(impl string, node *netns.Node, name string, prio int, interval time.Duration, dir string) (*speaker, error) {
	var cmd *exec.Cmd
	switch impl {
	case "lvsha":
		conf := filepath.Join(dir, name+".toml")
		// garp_master_delay as keepalived's default below would matter
		// only after the measured window.
		body := fmt.Sprintf(`[global]
router_id = %q
log_level = "info"
control_socket = %q

[[vrrp_instance]]
name = "VI_1"
interface = "eth0"
virtual_router_id = 51
priority = %d
advert_interval = %q
version = 3
virtual_ipaddress = [%q]
`, name, filepath.Join(dir, name+".sock"), prio, interval.String(), vip.String())
		if o.rt > 0 {
			// -rt: the same priority as keepalived's directors get.
			body = strings.Replace(body, "[global]\n", fmt.Sprintf("[global]\nrealtime_priority = %d\n", o.rt), 1)
		}
		if err := os.WriteFile(conf, []byte(body), 0o644); err != nil {
			return nil, err
		}
		cmd = exec.Command(o.lvsha, "-f", conf)
	case "keepalived":
		conf := filepath.Join(dir, name+".conf")
		body := fmt.Sprintf(`global_defs {
  router_id %s
}
vrrp_instance VI_1 {
  state BACKUP
  interface eth0
  virtual_router_id 51
  priority %d
  advert_int %g
  version 3
  virtual_ipaddress {
    %s
  }
}
`, name, prio, interval.Seconds(), vip)
		if err := os.WriteFile(conf, []byte(body), 0o644); err != nil {
			return nil, err
		}
		cmd = exec.Command(o.keepalived, "-n", "-l", "-D", "-P", "-f", conf,
			"-p", filepath.Join(dir, name+".pid"), "-r", filepath.Join(dir, name+".vrrp.pid"))
	default:
		return nil, fmt.Errorf("unknown implementation %q", impl)
	}
	if o.rt > 0 {
		cmd = exec.Command("chrt", append([]string{"-r", fmt.Sprint(o.rt), cmd.Path}, cmd.Args[1:]...)...)
	}
	s := &speaker{node: node, cmd: cmd, log: filepath.Join(dir, name+".log"), done: make(chan struct{})}
	lf, err := os.Create(s.log)
	if err != nil {
		return nil, err
	}
	defer lf.Close()
	cmd.Stdout, cmd.Stderr = lf, lf
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	if err := node.Start(cmd); err != nil {
		return nil, err
	}
	go func() { _ = cmd.Wait(); close(s.done) }()
	return s, nil
}

type pair struct {
	lab     *netns.Lab
	a, b, c *netns.Node
	sa, sb  *speaker
}

func (p *pair) close() {
	for _, s := range []*speaker{p.sa, p.sb} {
		if s != nil {
			s.kill()
		}
	}
	p.lab.Close()
}

func (o *options) newPair(ctx context.Context, prefix, impl string, interval time.Duration, dir string) (_ *pair, err error) {
	lab, err := netns.NewLab(prefix)
	if err != nil {
		return nil, err
	}
	p := &pair{lab: lab}
	defer func() {
		if err != nil {
			p.close()
		}
	}()
	if p.a, err = lab.AddNode("a", addrA); err != nil {
		return nil, err
	}
	if p.b, err = lab.AddNode("b", addrB); err != nil {
		return nil, err
	}
	if p.c, err = lab.AddNode("c", addrC); err != nil {
		return nil, err
	}
	if p.sa, err = o.start(impl, p.a, "a", prioA, interval, dir); err != nil {
		return nil, err
	}
	if p.sb, err = o.start(impl, p.b, "b", prioB, interval, dir); err != nil {
		return nil, err
	}
	// Settled: a holds the VIP, b does not, for a few master-down
	// intervals.
	settle := max(3*vrrp.MasterDownInterval(3, prioB, interval), 300*time.Millisecond)
	var stableSince time.Time
	ok := netns.WaitFor(15*time.Second+4*vrrp.MasterDownInterval(3, prioB, interval), 5*time.Millisecond, func() bool {
		if ctx.Err() != nil {
			return true
		}
		ha, _ := p.a.HasAddr("eth0", vip.Addr())
		hb, _ := p.b.HasAddr("eth0", vip.Addr())
		if !ha || hb {
			stableSince = time.Time{}
			return false
		}
		if stableSince.IsZero() {
			stableSince = time.Now()
		}
		return time.Since(stableSince) >= settle
	})
	if ctx.Err() != nil {
		return nil, ctx.Err()
	}
	if !ok {
		return nil, fmt.Errorf("%s: no stable master (logs in %s)", impl, dir)
	}
	return p, nil
}

func (o *options) measure1(ctx context.Context, impl string, interval time.Duration, event string, run int) (time.Duration, error) {
	dir := filepath.Join(o.workDir, fmt.Sprintf("%s-%v-%s-%d", impl, interval, event, run))
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return 0, err
	}
	p, err := o.newPair(ctx, netns.UniquePrefix("lvb"), impl, interval, dir)
	if err != nil {
		return 0, err
	}
	defer p.close()
	pg, err := startPinger(p.c, vip.Addr(), o.probe)
	if err != nil {
		return 0, err
	}
	defer pg.stop()
	if !netns.WaitFor(3*time.Second, 5*time.Millisecond, func() bool { return pg.count() >= 20 }) {
		return 0, fmt.Errorf("%s: client gets no replies before the failure", impl)
	}
	// Fail at a random point of the advert cycle: the time since the
	// master's last advert decides how much of Master_Down_Interval is left,
	// and the settling above would otherwise fix that phase.
	time.Sleep(rand.N(interval))
	at := time.Now()
	o.log.Info("failure", "impl", impl, "event", event, "at", at)
	switch event {
	case "linkdown":
		err = p.lab.SetPort("a", false)
	case "stop":
		go p.sa.term(10 * time.Second)
	default:
		err = fmt.Errorf("unknown event %q", event)
	}
	if err != nil {
		return 0, err
	}
	// Until b holds the VIP and the client has had 30 replies since.
	limit := at.Add(4*vrrp.MasterDownInterval(3, prioB, interval) + 5*time.Second)
	for {
		if time.Now().After(limit) {
			return 0, fmt.Errorf("%s: no takeover seen (logs in %s)", impl, dir)
		}
		if ctx.Err() != nil {
			return 0, ctx.Err()
		}
		if hb, _ := p.b.HasAddr("eth0", vip.Addr()); hb && pg.countSince(at) >= 30 {
			break
		}
		time.Sleep(5 * time.Millisecond)
	}
	return pg.longestGapAround(at), nil
}

func measure(ctx context.Context, o *options, impl string, interval time.Duration, event string, run int) (time.Duration, error) {
	o.log.Info("measuring", "impl", impl, "interval", interval, "event", event, "run", run)
	d, err := o.measure1(ctx, impl, interval, event, run)
	o.log.Info("measured", "impl", impl, "interval", interval, "event", event, "outage", d, "err", err)
	return d, err
}

// pinger sends ICMP echo requests from a namespace and records when replies
// arrive.
type pinger struct {
	c     *icmp.PacketConn
	stopc chan struct{}
	wg    sync.WaitGroup
	mu    sync.Mutex
	rx    []time.Time
}

func startPinger(node *netns.Node, dst netip.Addr, every time.Duration) (*pinger, error) {
	p := &pinger{stopc: make(chan struct{})}
	if err := node.Do(func() (err error) {
		p.c, err = icmp.ListenPacket("ip4:icmp", "0.0.0.0")
		return err
	}); err != nil {
		return nil, fmt.Errorf("icmp socket: %w", err)
	}
	id := os.Getpid() & 0xffff
	p.wg.Add(2)
	go func() {
		defer p.wg.Done()
		t := time.NewTicker(every)
		defer t.Stop()
		for seq := 0; ; seq++ {
			msg := icmp.Message{Type: ipv4.ICMPTypeEcho, Body: &icmp.Echo{ID: id, Seq: seq & 0xffff, Data: []byte("lvsha")}}
			b, _ := msg.Marshal(nil)
			_, _ = p.c.WriteTo(b, &net.IPAddr{IP: dst.AsSlice()})
			select {
			case <-p.stopc:
				return
			case <-t.C:
			}
		}
	}()
	go func() {
		defer p.wg.Done()
		buf := make([]byte, 1500)
		for {
			n, _, err := p.c.ReadFrom(buf)
			if err != nil {
				return
			}
			now := time.Now()
			m, err := icmp.ParseMessage(1, buf[:n])
			if err != nil || m.Type != ipv4.ICMPTypeEchoReply {
				continue
			}
			if e, ok := m.Body.(*icmp.Echo); !ok || e.ID != id {
				continue
			}
			p.mu.Lock()
			p.rx = append(p.rx, now)
			p.mu.Unlock()
		}
	}()
	return p, nil
}

func (p *pinger) stop() {
	close(p.stopc)
	p.c.Close()
	p.wg.Wait()
}

func (p *pinger) count() int {
	p.mu.Lock()
	defer p.mu.Unlock()
	return len(p.rx)
}

func (p *pinger) countSince(t time.Time) int {
	p.mu.Lock()
	defer p.mu.Unlock()
	n := 0
	for _, r := range p.rx {
		if r.After(t) {
			n++
		}
	}
	return n
}

// longestGapAround is the longest time between two consecutive replies from
// one second before the failure on.
func (p *pinger) longestGapAround(at time.Time) time.Duration {
	p.mu.Lock()
	defer p.mu.Unlock()
	var longest time.Duration
	var prev time.Time
	for _, r := range p.rx {
		if r.Before(at.Add(-time.Second)) {
			prev = r
			continue
		}
		if !prev.IsZero() {
			longest = max(longest, r.Sub(prev))
		}
		prev = r
	}
	return longest
}

// soak runs an lvsha pair and a keepalived pair at short adverts while
// every CPU spins, and counts false failovers: the backup becoming MASTER
// while the master is healthy.
func soak(ctx context.Context, o *options) error {
	// Each program at its default unless -rt: keepalived under normal
	// scheduling, lvsha under SCHED_RR at its default realtime_priority.
	sched := "each at its default: keepalived normal scheduling, lvsha realtime_priority 10 (SCHED_RR)"
	if o.rt > 0 {
		sched = fmt.Sprintf("directors under SCHED_RR %d", o.rt)
	}
	fmt.Printf("busy-CPU soak: %v at %v adverts, %d spinning goroutines on %d CPUs, %s\n\n", o.soak, o.soakIntvl, 2*runtime.NumCPU(), runtime.NumCPU(), sched)
	type result struct {
		impl  string
		pair  *pair
		dir   string
		start int
	}
	var res []*result
	defer func() {
		for _, r := range res {
			r.pair.close()
		}
	}()
	for i, impl := range o.impls {
		dir := filepath.Join(o.workDir, "soak-"+impl)
		if err := os.MkdirAll(dir, 0o755); err != nil {
			return err
		}
		p, err := o.newPair(ctx, netns.UniquePrefix(fmt.Sprintf("lvs%d", i)), impl, o.soakIntvl, dir)
		if err != nil {
			return err
		}
		res = append(res, &result{impl: impl, pair: p, dir: dir})
	}
	for _, r := range res {
		r.start = masterEntries(r.impl, r.pair.sb.log)
	}
	spin, stopSpin := context.WithCancel(ctx)
	var wg sync.WaitGroup
	for range 2 * runtime.NumCPU() {
		wg.Go(func() {
			x := 1.0
			for spin.Err() == nil {
				for range 100000 {
					x = math.Sqrt(x + 1)
				}
			}
			_ = x
		})
	}
	select {
	case <-time.After(o.soak):
	case <-ctx.Done():
	}
	stopSpin()
	wg.Wait()
	fmt.Printf("| implementation | advert interval | duration | false failovers (backup became MASTER) |\n|---|---|---|---|\n")
	for _, r := range res {
		n := masterEntries(r.impl, r.pair.sb.log) - r.start
		fmt.Printf("| %s | %v | %v | %d |\n", r.impl, o.soakIntvl, o.soak, n)
	}
	return ctx.Err()
}

// masterEntries counts the times a director's log says it became MASTER.
func masterEntries(impl, logFile string) int {
	b, err := os.ReadFile(logFile)
	if err != nil {
		return 0
	}
	marker := "to=MASTER"
	if impl == "keepalived" {
		marker = "Entering MASTER STATE"
	}
	return strings.Count(string(b), marker)
}
