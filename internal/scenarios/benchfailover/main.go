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
	"math/rand/v2"
	"net/netip"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"time"

	"github.com/lvsha/lvsha/internal/testenv/netns"
	"github.com/lvsha/lvsha/internal/testenv/probe"
	"github.com/lvsha/lvsha/vrrp"
)

var (
	addrA = netip.MustParsePrefix("10.99.0.2/24")
	addrB = netip.MustParsePrefix("10.99.0.3/24")
	addrC = netip.MustParsePrefix("10.99.0.10/24")
	// The VIP of each family; for IPv6 the nodes get 2001:db8:99::N/64
	// beside 10.99.0.N/24.
	vips = map[string]netip.Prefix{
		"ipv4": netip.MustParsePrefix("10.99.0.100/24"),
		"ipv6": netip.MustParsePrefix("2001:db8:99::100/64"),
	}
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
	families   []string
	vip        netip.Prefix // of the family being measured
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
	var intervals, impls, events, families string
	flag.StringVar(&o.lvsha, "lvsha", "", "lvsha binary (default: go build ./cmd/lvsha)")
	flag.StringVar(&o.keepalived, "keepalived", "keepalived", "keepalived binary")
	flag.StringVar(&intervals, "intervals", "1s,100ms,10ms", "advert intervals")
	flag.StringVar(&impls, "impl", "lvsha,keepalived", "implementations to measure")
	flag.StringVar(&families, "families", "ipv4,ipv6", "address families of the VIP (VRRPv3 over IPv4, over IPv6)")
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
	o.families = strings.Split(families, ",")
	for _, f := range o.families {
		if _, ok := vips[f]; !ok {
			return fmt.Errorf("-families: %q is not ipv4 or ipv6", f)
		}
	}
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
	fmt.Printf("| family | advert interval | failure | protocol floor |")
	for _, im := range o.impls {
		fmt.Printf(" %s |", im)
	}
	fmt.Printf("\n|---|---|---|---|%s\n", strings.Repeat("---|", len(o.impls)))
	for _, fam := range o.families {
		o.vip = vips[fam]
		if err := o.table(ctx, fam); err != nil {
			return err
		}
	}
	if o.soak > 0 {
		fmt.Println()
		o.vip = vips["ipv4"]
		return soak(ctx, &o)
	}
	return nil
}

// table prints the rows of one address family.
func (o *options) table(ctx context.Context, fam string) error {
	for _, iv := range o.intervals {
		for _, ev := range o.events {
			floor := vrrp.SkewTime(3, prioB, iv)
			if ev == "linkdown" {
				floor += 3 * iv
			}
			fmt.Printf("| %s | %v | %s | %s |", map[string]string{"ipv4": "IPv4", "ipv6": "IPv6"}[fam], iv, eventName(ev), ms(floor))
			for _, im := range o.impls {
				var got []time.Duration
				for r := range o.runs {
					if ctx.Err() != nil {
						return ctx.Err()
					}
					d, err := measure(ctx, o, im, iv, ev, r)
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
	pg, err := probe.Start(p.c.NS, o.vip.Addr(), o.probe)
	if err != nil {
		return 0, err
	}
	defer pg.Stop()
	if !netns.WaitFor(3*time.Second, 5*time.Millisecond, func() bool { return pg.Answered() >= 20 }) {
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
		if hb, _ := p.b.HasAddr("eth0", o.vip.Addr()); hb && pg.AnsweredSince(at) >= 30 {
			break
		}
		time.Sleep(5 * time.Millisecond)
	}
	return pg.LongestReplyGap(at.Add(-time.Second)), nil
}

func measure(ctx context.Context, o *options, impl string, interval time.Duration, event string, run int) (time.Duration, error) {
	o.log.Info("measuring", "impl", impl, "interval", interval, "event", event, "run", run)
	d, err := o.measure1(ctx, impl, interval, event, run)
	o.log.Info("measured", "impl", impl, "interval", interval, "event", event, "outage", d, "err", err)
	return d, err
}
