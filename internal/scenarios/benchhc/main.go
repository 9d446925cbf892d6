// Command benchhc measures the healthcheck Manager at scale: N real servers
// (100 addresses, many ports), each HTTP-checked every interval. The HTTP
// servers run in a child process (this binary with -role=serve) so that the
// CPU and memory reported are those of the checker alone. By default both
// run on 127.0.1.x in the current namespace; with -net=netns they sit in two
// namespaces joined by a veth, each pinned to its own CPU (see netns.go).
// -vm compares the lvsha daemon with keepalived's checker (anchor.go). Midway some
// servers start failing (half answer 503, half accept and never answer) and
// the delay to their DOWN transitions is compared with the bound
// fall x interval + timeout. Run by `make bench-healthcheck`; prints a table.
package main

import (
	"bufio"
	"context"
	"flag"
	"fmt"
	"log/slog"
	"net/netip"
	"os"
	"os/exec"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"time"
	"unicode/utf8"

	"github.com/lvsha/lvsha/healthcheck"
)

type config struct {
	targets, addrs, basePort, failing, maxInFlight int
	interval, timeout, duration, warmup            time.Duration
	rise, fall                                     int
	checkType, net                                 string
	lvshaEnv                                       string // -vm: extra environment for lvsha
	logs                                           bool   // -vm: print each checker's log
}

func main() {
	var c config
	role := flag.String("role", "", "internal: serve (the HTTP servers), check (the checker) or anchor (the VM side of -vm)")
	inVM := flag.Bool("vm", false, "compare the lvsha daemon with keepalived's checker in the test VM instead")
	vrrpSoak := flag.Duration("vrrp-soak", 0, "instead: VRRP false failovers of a pair at -advert adverts whose master checks -targets servers, lvsha and keepalived (with fakeipvs.so)")
	advert := flag.Duration("advert", 10*time.Millisecond, "-vrrp-soak: advert interval")
	hostAnchor := flag.Bool("anchor", false, "compare the lvsha daemon with keepalived's checker here instead (keepalived with fakeipvs.so)")
	vmTargets := flag.Int("vm-targets", 300, "real servers for -vm (the VM's CPUs are emulated)")
	lvshaBin := flag.String("lvsha", "bin/lvsha", "lvsha binary for -vm and -anchor")
	flag.StringVar(&c.lvshaEnv, "lvsha-env", "", "-vm: extra environment for lvsha, e.g. GOMAXPROCS=1")
	flag.BoolVar(&c.logs, "logs", false, "-vm: print each checker's log")
	netHTTP := flag.Bool("nethttp", false, "serve with net/http instead of a minimal canned-response server")
	flag.IntVar(&c.targets, "targets", 10000, "number of real servers")
	flag.IntVar(&c.addrs, "addrs", 100, "loopback addresses 127.0.1.1..N the targets are spread over")
	flag.IntVar(&c.basePort, "port", 20000, "first port")
	flag.IntVar(&c.failing, "failing", 100, "servers that start failing midway (half 503, half hang)")
	flag.IntVar(&c.maxInFlight, "max-inflight", 0, "Manager in-flight bound (0 = the package default)")
	flag.DurationVar(&c.interval, "interval", time.Second, "check interval")
	flag.DurationVar(&c.timeout, "timeout", time.Second, "check timeout")
	flag.DurationVar(&c.duration, "duration", 60*time.Second, "total run time")
	flag.DurationVar(&c.warmup, "warmup", 10*time.Second, "time before measuring")
	flag.StringVar(&c.checkType, "type", "http", "check type: http or tcp")
	flag.StringVar(&c.net, "net", "loopback", "loopback: checker and servers on 127.0.1.x here; netns: in two namespaces on CPUs of their own")
	flag.IntVar(&c.rise, "rise", 2, "rise")
	flag.IntVar(&c.fall, "fall", 3, "fall")
	cpuprofile := flag.String("cpuprofile", "", "write a CPU profile of the measured window")
	flag.StringVar(&memprofile, "memprofile", "", "write a heap profile at the end")
	flag.Parse()
	if c.maxInFlight <= 0 {
		c.maxInFlight = healthcheck.DefaultMaxInFlight
	}
	raiseNoFile()
	var err error
	switch {
	case *inVM:
		c.targets = *vmTargets
		err = runVM(c, *lvshaBin)
	case *role == "anchor":
		err = runAnchor(c, tools{lvsha: "/bin/lvsha", keepalived: "/usr/sbin/keepalived", where: "in the VM, software-emulated CPUs"})
	case *vrrpSoak > 0:
		err = runVRRPSoak(c, *lvshaBin, *vrrpSoak, *advert)
	case *hostAnchor:
		err = runHostAnchor(c, *lvshaBin)
	case *role == "serve":
		err = runServers(c, *netHTTP)
	case *role == "check" || c.net == "loopback":
		err = runBench(c, *cpuprofile, *netHTTP)
	case c.net == "netns":
		err = runInNetns()
	default:
		err = fmt.Errorf("-net %q: want netns or loopback", c.net)
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, "benchhc:", err)
		os.Exit(1)
	}
}

func raiseNoFile() {
	var rl syscall.Rlimit
	if err := syscall.Getrlimit(syscall.RLIMIT_NOFILE, &rl); err == nil && rl.Cur < rl.Max {
		rl.Cur = rl.Max
		_ = syscall.Setrlimit(syscall.RLIMIT_NOFILE, &rl)
	}
}

// addr returns the address of target i.
func (c config) addr(i int) netip.AddrPort {
	a := i % c.addrs
	p := i / c.addrs
	ip := [4]byte{127, 0, 1, byte(a + 1)}
	if c.net == "netns" {
		ip = targetNet.Addr().As4()
		ip[3] = byte(a + 1)
	}
	return netip.AddrPortFrom(netip.AddrFrom4(ip), uint16(c.basePort+p))
}

// runInNetns builds the two namespaces and runs the checker (this binary
// with -role=check) in one of them; it starts the servers in the other.
func runInNetns() error {
	topo, err := newTopology()
	if err != nil {
		return fmt.Errorf("namespaces: %w", err)
	}
	defer topo.Close()
	exe, err := os.Executable()
	if err != nil {
		return err
	}
	cmd := inNS(checkerNS, checkerCPU, exe, append(os.Args[1:], "-role=check")...)
	cmd.Stdout = os.Stdout
	return cmd.Run()
}

type usage struct {
	wall      time.Time
	user, sys time.Duration
	checks    uint64
}

func sample(m *healthcheck.Manager) usage {
	var ru syscall.Rusage
	_ = syscall.Getrusage(syscall.RUSAGE_SELF, &ru)
	var checks uint64
	if m != nil {
		for _, s := range m.Snapshot() {
			checks += s.Checks
		}
	}
	return usage{
		wall:   time.Now(),
		user:   time.Duration(ru.Utime.Nano()),
		sys:    time.Duration(ru.Stime.Nano()),
		checks: checks,
	}
}

func runBench(c config, cpuprofile string, netHTTP bool) error {
	if c.addrs > 254 || c.targets/c.addrs+c.basePort > 65535 {
		return fmt.Errorf("too many targets for %d addresses from port %d", c.addrs, c.basePort)
	}
	exe, err := os.Executable()
	if err != nil {
		return err
	}
	args := []string{"-role=serve", "-net", c.net, "-targets", strconv.Itoa(c.targets), "-addrs", strconv.Itoa(c.addrs),
		"-port", strconv.Itoa(c.basePort), "-failing", strconv.Itoa(c.failing), "-nethttp=" + strconv.FormatBool(netHTTP)}
	child := exec.Command(exe, args...)
	if c.net == "netns" {
		child = inNS(serversNS, serversCPU, exe, args...)
	}
	child.Stderr = os.Stderr
	toChild, err := child.StdinPipe()
	if err != nil {
		return err
	}
	fromChild, err := child.StdoutPipe()
	if err != nil {
		return err
	}
	if err := child.Start(); err != nil {
		return fmt.Errorf("start servers: %w", err)
	}
	defer func() { toChild.Close(); _ = child.Process.Kill(); _ = child.Wait() }()
	lines := bufio.NewScanner(fromChild)
	if !lines.Scan() || lines.Text() != "ready" {
		return fmt.Errorf("servers did not start: %q", lines.Text())
	}

	floor, err := kernelFloor(c, 3000)
	if err != nil {
		return err
	}

	log := slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelWarn}))
	m := healthcheck.NewManager(log, healthcheck.WithMaxInFlight(c.maxInFlight))
	typ, err := healthcheck.ParseCheckType(c.checkType)
	if err != nil {
		return err
	}
	// lvsha's config defaults for an http check.
	spec := healthcheck.Spec{Type: typ, Path: "/", Method: "GET", Status: []healthcheck.StatusRange{{Lo: 200, Hi: 299}}, MaxBody: 64 << 10,
		Interval: c.interval, Timeout: c.timeout, Rise: c.rise, Fall: c.fall, InitialUp: true}
	targets := make([]healthcheck.Target, c.targets)
	for i := range targets {
		targets[i] = healthcheck.Target{ID: strconv.Itoa(i), Addr: c.addr(i), Spec: spec}
	}
	if err := m.Update(targets); err != nil {
		return err
	}
	targets = nil
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	runDone := make(chan error, 1)
	go func() { runDone <- m.Run(ctx) }()

	start := time.Now()
	type down struct {
		mode  int
		delay time.Duration
	}
	var (
		failAt     time.Time
		downs      []down
		unexpected []healthcheck.Transition
		peakRSS    int64
		rssSamples []int64
		t0, t1     usage
		measuring  bool
		peakHeap   uint64
		peakStack  uint64
		peakG      int
		serverCPU0 time.Duration
		cpuBusy0   []time.Duration
	)
	failTime := start.Add(c.warmup + (c.duration-c.warmup)/2)
	tick := time.NewTicker(time.Second)
	defer tick.Stop()
	stopProfile := func() {}
	for time.Since(start) < c.duration {
		select {
		case tr := <-m.Transitions():
			i, _ := strconv.Atoi(tr.ID)
			if mode := c.failMode(i); mode != 0 && !failAt.IsZero() && !tr.Up {
				downs = append(downs, down{mode, tr.At.Sub(failAt)})
			} else {
				unexpected = append(unexpected, tr)
			}
		case now := <-tick.C:
			if !measuring && now.Sub(start) >= c.warmup {
				measuring = true
				runtime.GC()
				t0 = sample(m)
				serverCPU0 = procCPU(child.Process.Pid)
				cpuBusy0 = cpuBusy()
				if cpuprofile != "" {
					stopProfile = startProfile(cpuprofile)
				}
			}
			if measuring {
				var ms runtime.MemStats
				runtime.ReadMemStats(&ms)
				peakHeap = max(peakHeap, ms.HeapInuse)
				peakStack = max(peakStack, ms.StackInuse)
				peakG = max(peakG, runtime.NumGoroutine())
				rss := vmRSS()
				rssSamples = append(rssSamples, rss)
				peakRSS = max(peakRSS, rss)
			}
			if failAt.IsZero() && now.After(failTime) && c.failing > 0 {
				failAt = time.Now()
				fmt.Fprintln(toChild, "fail")
				if !lines.Scan() || lines.Text() != "failing" {
					return fmt.Errorf("servers did not ack fail: %q", lines.Text())
				}
			}
		}
	}
	t1 = sample(m)
	stopProfile()
	writeHeapProfile(memprofile)
	serverCPU := procCPU(child.Process.Pid) - serverCPU0
	cpuBusy1 := cpuBusy()
	cancel()
	<-runDone

	window := t1.wall.Sub(t0.wall)
	cpu := float64(t1.user+t1.sys-t0.user-t0.sys) / float64(window) * 100
	userPct := float64(t1.user-t0.user) / float64(window) * 100
	rate := float64(t1.checks-t0.checks) / window.Seconds()
	bound := time.Duration(c.fall)*c.interval + c.timeout

	fmt.Printf("\nhealthcheck benchmark: %d %s targets on %d addresses (%s), interval %v, timeout %v, rise %d, fall %d, max in flight %d\n",
		c.targets, c.checkType, c.addrs, c.net, c.interval, c.timeout, c.rise, c.fall, c.maxInFlight)
	fmt.Printf("measured over %.1fs after %v warm-up; HTTP servers in a separate process (not counted); %s, GOMAXPROCS %d\n\n",
		window.Seconds(), c.warmup, runtime.Version(), runtime.GOMAXPROCS(0))
	var rows [][3]string
	row := func(name, value, goal string) { rows = append(rows, [3]string{name, value, goal}) }
	row("CPU, % of one core (user+sys, getrusage)", fmt.Sprintf("%.1f %% (user %.1f)", cpu, userPct), "< 25 %")
	row("CPU of the HTTP servers' process (not counted)", fmt.Sprintf("%.1f %%", float64(serverCPU)/float64(window)*100), "")
	if c.net == "netns" && len(cpuBusy0) > serversCPU && len(cpuBusy1) > serversCPU {
		for _, x := range []struct {
			cpu  int
			what string
		}{{checkerCPU, "checker's CPU: it and its packets' softirq"}, {serversCPU, "servers' CPU"}} {
			row(fmt.Sprintf("CPU %d busy (%s)", x.cpu, x.what),
				fmt.Sprintf("%.1f %%", float64(cpuBusy1[x.cpu]-cpuBusy0[x.cpu])/float64(window)*100), "")
		}
	}
	row("CPU per check", fmt.Sprintf("%.1f µs", float64(t1.user+t1.sys-t0.user-t0.sys)/float64(time.Microsecond)/float64(t1.checks-t0.checks)), "")
	row("one blocking probe at a time, raw syscalls (reference)", fmt.Sprintf("%.1f µs", float64(floor)/float64(time.Microsecond)), "")
	row("that at the target rate, % of one core", fmt.Sprintf("%.1f %%", float64(floor)*float64(c.targets)/float64(c.interval)*100), "")
	// Flat memory: the first and the last minute (or tenth) of the
	// window compared, each by its median.
	k := max(1, min(60, len(rssSamples)/10))
	if len(rssSamples) >= 2*k {
		first := slices.Sorted(slices.Values(rssSamples[:k]))
		last := slices.Sorted(slices.Values(rssSamples[len(rssSamples)-k:]))
		row(fmt.Sprintf("RSS, median of the first / last %d samples", k),
			fmt.Sprintf("%.1f / %.1f MB", mb(median(first)), mb(median(last))), "flat")
	}
	slices.Sort(rssSamples)
	row("RSS (VmRSS median / peak)", fmt.Sprintf("%.1f / %.1f MB", mb(median(rssSamples)), mb(peakRSS)), "< 30 MB")
	row("max RSS (getrusage, whole run)", fmt.Sprintf("%.1f MB", mb(maxRSS())), "< 30 MB")
	row("Go heap in use / stacks (peak)", fmt.Sprintf("%.1f / %.1f MB", mb(int64(peakHeap)), mb(int64(peakStack))), "")
	row("goroutines (peak of 1 s samples)", strconv.Itoa(peakG), "")
	row("checks/s achieved", fmt.Sprintf("%.0f", rate), fmt.Sprintf("%.0f", float64(c.targets)/c.interval.Seconds()))
	for mode, name := range []string{1: "503", 2: "hang (timeout)"} {
		if mode == 0 {
			continue
		}
		var ds []time.Duration
		for _, d := range downs {
			if d.mode == mode {
				ds = append(ds, d.delay)
			}
		}
		want := 0
		for i := range c.targets {
			if c.failMode(i) == mode {
				want++
			}
		}
		if want == 0 {
			continue
		}
		slices.Sort(ds)
		// A 503 is seen at once, a hung server only at the timeout.
		b := bound
		if mode == 1 {
			b = time.Duration(c.fall) * c.interval
		}
		if len(ds) == 0 {
			row("DOWN delay, "+name, fmt.Sprintf("0 of %d detected", want), "<= "+b.String())
			continue
		}
		row(fmt.Sprintf("DOWN delay min/median/max, %s (%d/%d detected)", name, len(ds), want),
			fmt.Sprintf("%.2f / %.2f / %.2f s", ds[0].Seconds(), ds[len(ds)/2].Seconds(), ds[len(ds)-1].Seconds()),
			"<= "+b.String())
	}
	row("unexpected transitions", strconv.Itoa(len(unexpected)), "0")
	printTable([3]string{"metric", "value", "goal"}, rows)
	for i, tr := range unexpected {
		if i == 10 {
			fmt.Printf("... %d more\n", len(unexpected)-10)
			break
		}
		fmt.Printf("unexpected: %s %s up=%v %s\n", tr.At.Format(time.TimeOnly), tr.ID, tr.Up, tr.Reason)
	}
	return nil
}

func mb(b int64) float64 { return float64(b) / (1 << 20) }

func median(s []int64) int64 {
	if len(s) == 0 {
		return 0
	}
	return s[len(s)/2]
}

func printTable(head [3]string, rows [][3]string) {
	var w [3]int
	for _, r := range append([][3]string{head}, rows...) {
		for i, f := range r {
			w[i] = max(w[i], utf8.RuneCountInString(f))
		}
	}
	line := func(r [3]string) {
		for i, f := range r {
			fmt.Printf("| %s%s ", f, strings.Repeat(" ", w[i]-utf8.RuneCountInString(f)))
		}
		fmt.Println("|")
	}
	line(head)
	fmt.Printf("|%s|%s|%s|\n", strings.Repeat("-", w[0]+2), strings.Repeat("-", w[1]+2), strings.Repeat("-", w[2]+2))
	for _, r := range rows {
		line(r)
	}
	fmt.Println()
}
