// Command benchscaleout is `make bench-scaleout`: active-active directors
// over BGP in the VM (the scaleout lab: FRR's bgpd and zebra as the ECMP
// router, lvsha directors with real IPVS, mh over three echo servers).
// It measures, in one VM run:
//
//   - new connections per second through one director (the router's
//     route pinned to it) and through three, in alternate rounds (the
//     ratio to the one-director run, its anchor; all of it
//     shares the VM's two emulated CPUs, so the ratio shows what ECMP
//     over three directors costs or gains there, not a real machine's
//     scale-out);
//   - with N long-lived connections, the share reset when one director
//     of three leaves: a clean stop (SIGTERM), a crash (SIGKILL) and a
//     dead host (cable pulled and process killed), and how long the
//     router took to drop its route (BGP's detection time); with
//     sloppy_tcp on (lvsha's default) and off.
//
// Not a test: it prints numbers.
//
//	go run ./internal/scenarios/benchscaleout [-lvsha PATH] [-n 300] [-d 5s]
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"text/tabwriter"
	"time"

	"github.com/lvsha/lvsha/internal/scenarios/connsync"
	"github.com/lvsha/lvsha/internal/scenarios/e2e"
	"github.com/lvsha/lvsha/internal/scenarios/scaleout"
	"github.com/lvsha/lvsha/internal/testenv/vm"
)

// holdTime is the directors' proposed BGP hold time, the smallest BGP
// allows (the router proposes 9 s; the session takes the smaller).
const holdTime = 3 * time.Second

// checkInterval paces the directors' exec checks: each is a fork and exec
// of sh, which under the VM's emulation costs the client and the servers
// (three directors check three times as much) more than IPVS does.
const checkInterval = 10 * time.Second

func main() {
	n := flag.Int("n", 300, "long-lived connections")
	d := flag.Duration("d", 5*time.Second, "duration of each connections-per-second run")
	workers := flag.Int("c", 16, "concurrent clients of the connections-per-second runs")
	lvsha := flag.String("lvsha", "", "static lvsha binary (default: build one from this checkout)")
	flag.Parse()
	var err error
	if vm.InGuest() {
		err = guest(*n, *d, *workers)
	} else {
		err = host(*n, *d, *workers, *lvsha)
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, "benchscaleout:", err)
		os.Exit(1)
	}
}

func host(n int, d time.Duration, workers int, lvsha string) error {
	ctx := context.Background()
	tmp, err := os.MkdirTemp("", "benchscaleout-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(tmp)
	lvsha, bin, err := e2e.HostBinaries(ctx, tmp, lvsha, "github.com/lvsha/lvsha/internal/scenarios/benchscaleout")
	if err != nil {
		return err
	}
	files, err := scaleout.GuestFiles(lvsha)
	if err != nil {
		return err
	}
	res, err := vm.Run(ctx, vm.Options{
		Binary: bin, Files: files, Console: vm.GuestOutput(os.Stdout),
		Logger: slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelWarn})),
		CPUs:   2, MemoryMB: 1024, Timeout: 30 * time.Minute,
		Args: []string{"-n", strconv.Itoa(n), "-d", d.String(), "-c", strconv.Itoa(workers)},
	})
	if err != nil {
		return err
	}
	if res.ExitCode != 0 {
		return fmt.Errorf("the run in the VM failed (exit %d)", res.ExitCode)
	}
	return nil
}

func say(format string, args ...any) {
	fmt.Printf("%s "+format+"\n", append([]any{time.Now().Format("15:04:05.000")}, args...)...)
}

// leave is one director leaving with N connections open.
type leave struct {
	what   string
	reset  int           // connections reset (or closed by the peer)
	other  int           // other failures (an echo not back within 5 s)
	n      int           // connections open when it left
	detect time.Duration // from the event to the route gone on the router
	pause  time.Duration // longest pause between two echoes of any connection
}

type results struct {
	rateResult
	sloppy, strict []leave
}

func guest(n int, d time.Duration, workers int) error {
	var r results
	if err := withLab("s", scaleout.Options{HoldTime: holdTime, CheckInterval: checkInterval}, func(l *scaleout.Lab) error {
		var err error
		if r.rateResult, err = rates(l, d, workers); err != nil {
			return err
		}
		r.sloppy, err = leaves(l, n, true)
		return err
	}); err != nil {
		return err
	}
	if err := withLab("n", scaleout.Options{HoldTime: holdTime, CheckInterval: checkInterval, NoSloppy: true}, func(l *scaleout.Lab) error {
		if err := startAll(l); err != nil {
			return err
		}
		var err error
		r.strict, err = leaves(l, n, false)
		return err
	}); err != nil {
		return err
	}
	printTable(os.Stdout, n, d, workers, r)
	return nil
}

func withLab(tag string, o scaleout.Options, f func(*scaleout.Lab) error) error {
	l, err := scaleout.New(tag, o)
	if err != nil {
		return err
	}
	defer l.Close()
	if err := f(l); err != nil {
		for _, d := range l.Directors {
			fmt.Printf("%s log:\n%s\n", d.Name, d.LogTail(20))
		}
		return err
	}
	return nil
}

func startAll(l *scaleout.Lab) error {
	for i := 1; i <= 3; i++ {
		if err := l.Start(i); err != nil {
			return err
		}
	}
	_, err := l.WaitHops(context.Background(), scaleout.Hops(1, 2, 3), 90*time.Second)
	return err
}

// rounds is how many times the one-director and three-director runs
// alternate: the emulated CPUs' speed follows the host's load, so the
// two are measured turn about and compared round by round.
const rounds = 3

// estimator is a little more than the period of the IPVS estimator that
// refreshes the counters of /proc/net/ip_vs_stats on this kernel.
const estimator = 2500 * time.Millisecond

// rates: connections per second through d1 alone (the router's route
// for the client pinned to it: the same lab, the other two directors
// still running) and through all three (ECMP), alternately.
func rates(l *scaleout.Lab, d time.Duration, workers int) (rt rateResult, err error) {
	if err = startAll(l); err != nil {
		return
	}
	// The directors' checks and sessions settle before the runs.
	time.Sleep(3 * time.Second)
	var n1, n3 float64
	for r := range rounds {
		if err = l.PinVia(1); err != nil {
			return
		}
		// ip_vs_stats is refreshed by the kernel's estimator every 2 s.
		time.Sleep(estimator)
		before, cerr := totals(l)
		if cerr != nil {
			return rt, cerr
		}
		c1, e1, rerr := rate(l, d, workers)
		if rerr != nil {
			return rt, rerr
		}
		time.Sleep(estimator)
		after, cerr := totals(l)
		if cerr != nil {
			return rt, cerr
		}
		if after[1] != before[1] || after[2] != before[2] {
			rules, _ := l.Router.Run(scaleout.GuestIP, "rule")
			routes, _ := l.Router.Run(scaleout.GuestIP, "route", "show", "table", "100")
			return rt, fmt.Errorf("pinned to d1, yet d2 and d3 scheduled %d and %d connections (d1 %d); rules:\n%s\ntable 100:\n%s",
				after[1]-before[1], after[2]-before[2], after[0]-before[0], rules, routes)
		}
		if err = l.PinVia(0); err != nil {
			return
		}
		c3, e3, rerr := rate(l, d, workers)
		if rerr != nil {
			return rt, rerr
		}
		say("round %d: one director %.0f connections/s (%d failed), three %.0f (%d failed)", r+1, c1, e1, c3, e3)
		n1, n3 = n1+c1, n3+c3
		rt.err1, rt.err3 = rt.err1+e1, rt.err3+e3
		ratio := c3 / c1
		if r == 0 || ratio < rt.minRatio {
			rt.minRatio = ratio
		}
		rt.maxRatio = max(rt.maxRatio, ratio)
	}
	rt.cps1, rt.cps3 = n1/rounds, n3/rounds
	per, err := totals(l)
	say("connections scheduled per director since start: %v", per)
	return rt, err
}

type rateResult struct {
	cps1, cps3         float64
	err1, err3         int
	minRatio, maxRatio float64
}

// totals are the directors' IPVS connection counters.
func totals(l *scaleout.Lab) ([]uint64, error) {
	var per []uint64
	for i := 1; i <= 3; i++ {
		c, err := l.TotalConns(i)
		if err != nil {
			return nil, err
		}
		per = append(per, c)
	}
	return per, nil
}

// rate runs workers clients for d, each opening a connection, sending a
// line, reading its echo and closing with a reset (no TIME_WAIT to run
// out of ports), and returns the completed connections per second.
func rate(l *scaleout.Lab, d time.Duration, workers int) (float64, int, error) {
	var done, failed atomic.Int64
	var wg sync.WaitGroup
	stop := time.Now().Add(d)
	errc := make(chan error, workers)
	for range workers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			// One thread in the client's namespace per worker.
			errc <- l.Client.Do(func() error {
				buf := make([]byte, 64)
				for time.Now().Before(stop) {
					if err := once(buf); err != nil {
						failed.Add(1)
						continue
					}
					done.Add(1)
				}
				return nil
			})
		}()
	}
	start := time.Now()
	cpu0 := cpuByName()
	wg.Wait()
	took := time.Since(start)
	say("  CPU seconds by process during the run: %s", cpuDelta(cpu0, cpuByName()))
	close(errc)
	for err := range errc {
		if err != nil {
			return 0, 0, err
		}
	}
	return float64(done.Load()) / took.Seconds(), int(failed.Load()), nil
}

func once(buf []byte) error {
	c, err := net.DialTimeout("tcp", scaleout.Target.String(), 5*time.Second)
	if err != nil {
		return err
	}
	defer func() {
		_ = c.(*net.TCPConn).SetLinger(0)
		_ = c.Close()
	}()
	_ = c.SetDeadline(time.Now().Add(5 * time.Second))
	if _, err := io.WriteString(c, "0\n"); err != nil {
		return err
	}
	if _, err := c.Read(buf); err != nil {
		return err
	}
	return nil
}

// leaves makes one director of three leave in three ways, each with n
// fresh long-lived connections open:
// d1 stops cleanly, d2 is SIGKILLed, d3's cable is pulled and its
// process killed (a dead host). The one that left is started again (and
// plugged in) before the next event.
func leaves(l *scaleout.Lab, n int, sloppy bool) ([]leave, error) {
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	var out []leave
	stopped := make(chan struct{})
	events := []struct {
		what string
		i    int
		do   func() error
	}{
		{"clean stop (SIGTERM)", 1, func() error {
			go func() {
				l.Directors[0].Stop()
				close(stopped)
			}()
			return nil
		}},
		{"crash (SIGKILL)", 2, func() error {
			l.Directors[1].Kill()
			return nil
		}},
		{"dead host (cable pulled)", 3, func() error {
			if err := l.Plug(3, false); err != nil {
				return err
			}
			l.Directors[2].Kill()
			return nil
		}},
	}
	for _, ev := range events {
		lv, err := leaveOnce(ctx, l, n, sloppy, ev.what, ev.i, ev.do)
		if err != nil {
			return nil, err
		}
		out = append(out, lv)
		if ev.i == 3 {
			if err := l.Plug(3, true); err != nil {
				return nil, err
			}
		}
		if ev.i == 1 {
			<-stopped // the clean stop drains, then exits
		}
		if err := l.Start(ev.i); err != nil {
			return nil, err
		}
		if _, err := l.WaitHops(ctx, scaleout.Hops(1, 2, 3), 90*time.Second); err != nil {
			return nil, err
		}
		time.Sleep(2 * time.Second)
	}
	return out, nil
}

// leaveOnce opens n fresh connections (survivors of the previous event
// would be a biased sample: those ECMP did not move), makes director i
// leave with do, and measures.
func leaveOnce(ctx context.Context, l *scaleout.Lab, n int, sloppy bool, what string, i int, do func() error) (leave, error) {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	alive, err := open(ctx, l, n)
	if err != nil {
		return leave{}, err
	}
	connsync.Gaps(alive, true)
	say("sloppy_tcp=%v: %s of d%d with %d connections", sloppy, what, i, len(alive))
	t0 := time.Now()
	if err := do(); err != nil {
		return leave{}, err
	}
	if _, err := l.WaitHops(ctx, scaleout.Hops(others(i)...), 30*time.Second); err != nil {
		return leave{}, err
	}
	lv := leave{what: what, n: len(alive), detect: time.Since(t0)}
	// Long enough for a connection whose packets went to the dead host to
	// retransmit after the route is gone, and for the 5 s echo deadline to
	// run out on one that cannot.
	time.Sleep(lv.detect + 7*time.Second)
	tl, _ := connsync.Count(alive)
	lv.reset, lv.other, lv.pause = tl.Reset, tl.Other, connsync.Gaps(alive, false)
	say("  route gone after %v; %v", lv.detect.Round(time.Millisecond), tl)
	return lv, nil
}

// open opens n long-lived connections (a line every 500 ms) and waits
// until each has had 3 echoes.
func open(ctx context.Context, l *scaleout.Lab, n int) ([]*connsync.Flow, error) {
	flows, err := connsync.Open(ctx, l.Client, scaleout.Target, n, 500*time.Millisecond)
	if err != nil {
		return nil, err
	}
	_, err = connsync.WaitFor(ctx, "every connection talking", 60*time.Second, func() error {
		if tl, _ := connsync.Count(flows); tl.Alive != len(flows) {
			return fmt.Errorf("%v", tl)
		}
		if connsync.Progress(flows) < 3 {
			return errors.New("not yet 3 echoes each")
		}
		return nil
	})
	return flows, err
}

func others(i int) []int {
	var o []int
	for j := 1; j <= 3; j++ {
		if j != i {
			o = append(o, j)
		}
	}
	return o
}

func printTable(w io.Writer, n int, d time.Duration, workers int, r results) {
	fmt.Fprintf(w, "\nRESULTS scale-out over BGP/ECMP in the VM (2 emulated CPUs shared by the router, the directors, the servers and the client)\n\n")
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	fmt.Fprintf(tw, "new connections per second (%d clients, %d rounds of %v each)\tconn/s\tfailed\tratio (rounds' range)\n", workers, rounds, d)
	fmt.Fprintf(tw, "one director (the anchor, same run: the route pinned to d1)\t%.0f\t%d\t1.00\n", r.cps1, r.err1)
	fmt.Fprintf(tw, "three directors, router ECMP\t%.0f\t%d\t%.2f (%.2f-%.2f)\n", r.cps3, r.err3, r.cps3/r.cps1, r.minRatio, r.maxRatio)
	_ = tw.Flush()
	fmt.Fprintln(w)
	tw = tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	fmt.Fprintf(tw, "one of three leaves (%d long-lived connections)\troute gone after\treset, sloppy_tcp=1\tstalled >5s\tlongest pause\treset, sloppy_tcp=0\n", n)
	for i, s := range r.sloppy {
		var x leave
		if i < len(r.strict) {
			x = r.strict[i]
		}
		fmt.Fprintf(tw, "%s\t%v\t%s\t%d\t%v\t%s\n", s.what, s.detect.Round(10*time.Millisecond), share(s.reset, s.n), s.other,
			s.pause.Round(10*time.Millisecond), share(x.reset, x.n))
	}
	_ = tw.Flush()
	fmt.Fprintf(w, "\nhold time %v (the directors propose it; the router's 9 s is the larger). Route gone after: from the signal (or the pulled\n"+
		"cable) to the router's kernel route without that director.\n", holdTime)
}

func share(k, n int) string {
	if n == 0 {
		return "-"
	}
	return fmt.Sprintf("%d/%d (%.1f%%)", k, n, 100*float64(k)/float64(n))
}

// cpuByName sums the CPU time (user+system, in clock ticks) of the guest's
// processes by command name, to say where a run's CPU went.
func cpuByName() map[string]uint64 {
	out := map[string]uint64{}
	ents, _ := os.ReadDir("/proc")
	for _, e := range ents {
		if _, err := strconv.Atoi(e.Name()); err != nil {
			continue
		}
		b, err := os.ReadFile("/proc/" + e.Name() + "/stat")
		if err != nil {
			continue
		}
		s := string(b)
		i, j := strings.IndexByte(s, '('), strings.LastIndexByte(s, ')')
		if i < 0 || j < i {
			continue
		}
		f := strings.Fields(s[j+1:])
		if len(f) < 13 {
			continue
		}
		u, _ := strconv.ParseUint(f[11], 10, 64)
		k, _ := strconv.ParseUint(f[12], 10, 64)
		out[s[i+1:j]] += u + k
	}
	return out
}

func cpuDelta(a, b map[string]uint64) string {
	var parts []string
	for name, v := range b {
		if d := v - a[name]; v >= a[name] && d >= 10 {
			parts = append(parts, fmt.Sprintf("%s %.1f", name, float64(d)/100))
		}
	}
	slices.Sort(parts)
	return strings.Join(parts, ", ")
}
