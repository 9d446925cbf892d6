package main

import (
	"bufio"
	"context"
	_ "embed"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/lvsha/lvsha/internal/testenv/netns"
	"github.com/lvsha/lvsha/internal/testenv/vm"
)

// The anchor runs compare the real lvsha daemon with keepalived's checker
// doing the same job: the same HTTP targets, checked every second, one
// after the other, each with its own servers in a fresh namespace. Checks
// are counted by the servers, the same way for both.
//
// keepalived's checker refuses to start without IPVS, which the build
// machines' kernel lacks. On the host (-anchor) it runs with fakeipvs.so
// preloaded, which answers its IPVS netlink requests (see
// fakeipvs/fakeipvs.c): its checks are real, its weight changes go
// nowhere, and lvsha, finding no IPVS, keeps retrying to open it while its
// checks run. In the VM (-vm) both program real IPVS, but the VM's CPUs
// are emulated, so compare its columns, not the VM with the host.

//go:embed fakeipvs/fakeipvs.c
var fakeIPVSSource []byte

// tools says where the two checkers are and what keepalived preloads.
type tools struct {
	lvsha, keepalived, preload string
	where                      string // for the table's title
}

// runHostAnchor builds fakeipvs.so and compares lvsha (lvshaBin) with
// keepalived here.
func runHostAnchor(c config, lvshaBin string) error {
	t, cleanup, err := hostTools(lvshaBin)
	if err != nil {
		return err
	}
	defer cleanup()
	t.where = "on this machine; keepalived's IPVS requests answered by fakeipvs.so"
	return runAnchor(c, t)
}

// hostTools returns lvsha (lvshaBin) and this machine's keepalived with
// fakeipvs.so built for it; cleanup removes the build.
func hostTools(lvshaBin string) (_ tools, cleanup func(), err error) {
	lvshaBin, err = lvshaPath(lvshaBin)
	if err != nil {
		return tools{}, nil, err
	}
	tmp, err := os.MkdirTemp("", "benchhc-")
	if err != nil {
		return tools{}, nil, err
	}
	so, err := buildFakeIPVS(tmp)
	if err != nil {
		os.RemoveAll(tmp)
		return tools{}, nil, err
	}
	return tools{lvsha: lvshaBin, keepalived: "/usr/sbin/keepalived", preload: so}, func() { os.RemoveAll(tmp) }, nil
}

// buildFakeIPVS compiles fakeipvs.so into dir.
func buildFakeIPVS(dir string) (string, error) {
	src := filepath.Join(dir, "fakeipvs.c")
	if err := os.WriteFile(src, fakeIPVSSource, 0o644); err != nil {
		return "", err
	}
	so := filepath.Join(dir, "fakeipvs.so")
	if out, err := exec.Command("gcc", "-O2", "-Wall", "-shared", "-fPIC", "-o", so, src, "-ldl").CombinedOutput(); err != nil {
		return "", fmt.Errorf("build fakeipvs.so (apt-get install gcc libc6-dev): %w\n%s", err, out)
	}
	return so, nil
}

// lvshaPath returns the absolute path of the lvsha binary p, which must
// exist (children run it from other directories).
func lvshaPath(p string) (string, error) {
	abs, err := filepath.Abs(p)
	if err != nil {
		return "", err
	}
	if _, err := os.Stat(abs); err != nil {
		return "", fmt.Errorf("lvsha binary (make build): %w", err)
	}
	return abs, nil
}

// runVM builds this benchmark statically and runs the comparison (-role
// anchor) in the test VM with keepalived and lvshaBin.
func runVM(c config, lvshaBin string) error {
	log := slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelWarn}))
	lvshaBin, err := lvshaPath(lvshaBin)
	if err != nil {
		return err
	}
	tmp, err := os.MkdirTemp("", "benchhc-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(tmp)
	bin := filepath.Join(tmp, "benchhc")
	if err := vm.BuildStatic(context.Background(), "github.com/lvsha/lvsha/internal/scenarios/benchhc", bin); err != nil {
		return err
	}
	files, err := vm.WithLibs("keepalived")
	if err != nil {
		return fmt.Errorf("keepalived (apt-get install keepalived): %w", err)
	}
	files["/bin/lvsha"] = lvshaBin
	res, err := vm.Run(context.Background(), vm.Options{
		Binary: bin, Files: files, Console: os.Stdout, Logger: log,
		CPUs: 2, MemoryMB: 1024, Timeout: 10 * time.Minute,
		Args: []string{"-role=anchor", "-net=loopback", "-targets", strconv.Itoa(c.targets),
			"-duration", c.duration.String(), "-warmup", c.warmup.String(),
			"-lvsha-env", c.lvshaEnv, "-logs=" + strconv.FormatBool(c.logs)},
	})
	if err != nil {
		return err
	}
	if res.ExitCode != 0 {
		return fmt.Errorf("anchor run failed in the VM (exit %d)", res.ExitCode)
	}
	return nil
}

type toolRun struct {
	cpu    time.Duration
	window time.Duration
	served uint64
	rss    int64           // peak of the process tree's VmRSS samples
	rssBy  []int64         // peak of each process's, the oldest first
	pss    int64           // peak of the tree's PSS
	cpuBy  []time.Duration // CPU of each process that ran the whole window
	procs  int
}

// runAnchor measures each checker in a fresh namespace with its own
// servers over the same window, and prints the table.
func runAnchor(c config, t tools) error {
	version := keepalivedVersion(t.keepalived)
	cs, _ := os.ReadFile("/sys/devices/system/clocksource/clocksource0/current_clocksource")
	fmt.Printf("clocksource: %s", cs)
	tools := []string{"lvsha", version}
	runs := make([]toolRun, len(tools))
	for i, tool := range tools {
		r, err := measureTool(c, t, i == 0)
		if err != nil {
			return fmt.Errorf("%s: %w", tool, err)
		}
		runs[i] = r
	}
	fmt.Printf("\nhealthcheck anchor (%s): %d http targets on loopback, interval 1s, each checker measured for %v after %v warm-up\n\n",
		t.where, c.targets, c.duration-c.warmup, c.warmup)
	var rows [][3]string
	row := func(name string, f func(toolRun) string) {
		rows = append(rows, [3]string{name, f(runs[0]), f(runs[1])})
	}
	row("checks/s (counted by the servers)", func(r toolRun) string {
		return fmt.Sprintf("%.0f", float64(r.served)/r.window.Seconds())
	})
	row("CPU, % of one core (user+sys, whole process tree)", func(r toolRun) string {
		return fmt.Sprintf("%.1f %%", float64(r.cpu)/float64(r.window)*100)
	})
	row("CPU by process (the main one first)", func(r toolRun) string {
		var parts []string
		for _, v := range r.cpuBy {
			parts = append(parts, fmt.Sprintf("%.1f", float64(v)/float64(r.window)*100))
		}
		return strings.Join(parts, " + ") + " %"
	})
	row("CPU per check", func(r toolRun) string {
		if r.served == 0 {
			return "-"
		}
		return fmt.Sprintf("%.0f µs", float64(r.cpu.Microseconds())/float64(r.served))
	})
	row("memory: PSS of the process tree, peak of 1 s samples", func(r toolRun) string { return fmt.Sprintf("%.1f MB", mb(r.pss)) })
	row("RSS of the process tree (shared pages counted in each)", func(r toolRun) string { return fmt.Sprintf("%.1f MB", mb(r.rss)) })
	row("RSS by process, peak of each (the main one first)", func(r toolRun) string {
		var parts []string
		for _, v := range r.rssBy {
			parts = append(parts, fmt.Sprintf("%.1f", mb(v)))
		}
		return strings.Join(parts, " + ") + " MB"
	})
	row("processes", func(r toolRun) string { return strconv.Itoa(r.procs) })
	printTable([3]string{"metric", "lvsha", version}, rows)
	return nil
}

// measureTool starts the servers and one checker (lvsha or keepalived) in
// a fresh namespace and measures the checker's process tree.
func measureTool(c config, t tools, lvsha bool) (_ toolRun, err error) {
	name := "keepalived"
	if lvsha {
		name = "lvsha"
	}
	ns, err := netns.New("bhc-" + name)
	if err != nil {
		return toolRun{}, err
	}
	defer ns.Close()
	srv, err := startServers(c, ns)
	if err != nil {
		return toolRun{}, err
	}
	defer srv.close()

	dir, err := os.MkdirTemp("", "bhc-"+name)
	if err != nil {
		return toolRun{}, err
	}
	defer os.RemoveAll(dir)
	conf := filepath.Join(dir, "conf")
	var cmd *exec.Cmd
	if lvsha {
		err = os.WriteFile(conf, []byte(lvshaConf(c, dir)), 0o644)
		cmd = exec.Command(t.lvsha, "-f", conf)
		if c.lvshaEnv != "" {
			cmd.Env = append(os.Environ(), strings.Fields(c.lvshaEnv)...)
		}
	} else {
		err = os.WriteFile(conf, []byte(keepalivedConf(c)), 0o644)
		// No -l: its log would go to the VM's console; without a syslog
		// daemon in the guest it goes nowhere.
		cmd = exec.Command(t.keepalived, "-n", "-C", "-f", conf,
			"-p", filepath.Join(dir, "k.pid"), "-c", filepath.Join(dir, "c.pid"))
		if t.preload != "" {
			cmd.Env = append(os.Environ(), "LD_PRELOAD="+t.preload)
		}
	}
	if err != nil {
		return toolRun{}, err
	}
	logf, err := os.Create(filepath.Join(dir, "log"))
	if err != nil {
		return toolRun{}, err
	}
	defer logf.Close()
	cmd.Stdout, cmd.Stderr = logf, logf
	if err := ns.Start(cmd); err != nil {
		return toolRun{}, err
	}
	exited := make(chan error, 1)
	go func() { exited <- cmd.Wait() }()
	defer func() {
		_ = cmd.Process.Signal(syscall.SIGTERM)
		select {
		case <-exited:
		case <-time.After(10 * time.Second):
			_ = cmd.Process.Kill()
			<-exited
		}
		if err != nil {
			_, _ = logf.Seek(0, io.SeekStart)
			b, _ := io.ReadAll(io.LimitReader(logf, 4096))
			err = fmt.Errorf("%w\n%s log:\n%s", err, name, b)
		}
	}()

	pid := cmd.Process.Pid
	wait := func(d time.Duration) error {
		select {
		case err := <-exited:
			return fmt.Errorf("exited early: %v", err)
		case <-time.After(d):
			return nil
		}
	}
	if err := wait(c.warmup); err != nil {
		return toolRun{}, err
	}
	var r toolRun
	t0, cpu0 := time.Now(), treeCPU(pid)
	pids0 := treePIDs(pid)
	slices.Sort(pids0[1:])
	for _, p := range pids0 {
		r.cpuBy = append(r.cpuBy, -procCPU(p))
	}
	n0, err := srv.count()
	if err != nil {
		return toolRun{}, err
	}
	for time.Since(t0) < c.duration-c.warmup {
		if err := wait(time.Second); err != nil {
			return toolRun{}, err
		}
		rss, by := treeRSS(pid)
		r.rss, r.procs = max(r.rss, rss), max(r.procs, len(by))
		r.pss = max(r.pss, treePSS(pid))
		for i, v := range by {
			if i == len(r.rssBy) {
				r.rssBy = append(r.rssBy, 0)
			}
			r.rssBy[i] = max(r.rssBy[i], v)
		}
	}
	n1, err := srv.count()
	if err != nil {
		return toolRun{}, err
	}
	r.cpu, r.window, r.served = treeCPU(pid)-cpu0, time.Since(t0), n1-n0
	for i, p := range pids0 {
		r.cpuBy[i] += procCPU(p)
	}
	if c.logs {
		_, _ = logf.Seek(0, io.SeekStart)
		b, _ := io.ReadAll(logf)
		fmt.Printf("%s log (%d bytes), tail:\n%s\n", name, len(b), b[max(0, len(b)-3000):])
	}
	if r.served == 0 {
		return r, fmt.Errorf("no checks reached the servers")
	}
	return r, nil
}

func lvshaConf(c config, dir string) string {
	var b strings.Builder
	fmt.Fprintf(&b, "[global]\ncontrol_socket = %q\nstate_dir = %q\nlog_level = \"warn\"\n\n", filepath.Join(dir, "lvsha.sock"), filepath.Join(dir, "state"))
	fmt.Fprintf(&b, "[[virtual_server]]\naddress = \"10.99.0.1:80\"\nforwarding = \"nat\"\nscheduler = \"rr\"\n\n")
	// keepalived's connect_timeout is whole seconds and lvsha wants the
	// timeout below the interval: neither matters while servers answer.
	fmt.Fprintf(&b, "[virtual_server.check]\ntype = \"http\"\npath = \"/\"\ninterval = \"1s\"\ntimeout = \"900ms\"\nrise = 2\nfall = 3\n\n")
	for i := range c.targets {
		fmt.Fprintf(&b, "[[virtual_server.real_server]]\naddress = %q\n", c.addr(i).String())
	}
	return b.String()
}

func keepalivedConf(c config) string {
	var b strings.Builder
	b.WriteString("global_defs {\n  router_id bench\n}\n")
	b.WriteString("virtual_server 10.99.0.1 80 {\n  delay_loop 1\n  lb_algo rr\n  lb_kind NAT\n  protocol TCP\n")
	for i := range c.targets {
		a := c.addr(i)
		fmt.Fprintf(&b, "  real_server %s %d {\n    weight 1\n    HTTP_GET {\n      url {\n        path /\n        status_code 200\n      }\n"+
			"      connect_timeout 1\n      retry 2\n      delay_before_retry 1\n    }\n  }\n", a.Addr(), a.Port())
	}
	b.WriteString("}\n")
	return b.String()
}

// servers is a -role=serve process: the HTTP servers of c.targets, which
// count the requests they answer.
type servers struct {
	cmd   *exec.Cmd
	in    io.WriteCloser
	lines *bufio.Scanner
}

// startServers starts the servers in ns and waits until they listen.
func startServers(c config, ns interface{ Start(*exec.Cmd) error }) (_ *servers, err error) {
	exe, err := os.Executable()
	if err != nil {
		return nil, err
	}
	cmd := exec.Command(exe, "-role=serve", "-net=loopback", "-failing=0", "-targets", strconv.Itoa(c.targets),
		"-addrs", strconv.Itoa(c.addrs), "-port", strconv.Itoa(c.basePort))
	cmd.Stderr = os.Stderr
	in, err := cmd.StdinPipe()
	if err != nil {
		return nil, err
	}
	out, err := cmd.StdoutPipe()
	if err != nil {
		return nil, err
	}
	if err := ns.Start(cmd); err != nil {
		return nil, fmt.Errorf("servers: %w", err)
	}
	s := &servers{cmd: cmd, in: in, lines: bufio.NewScanner(out)}
	if !s.lines.Scan() || s.lines.Text() != "ready" {
		s.close()
		return nil, fmt.Errorf("servers did not start: %q", s.lines.Text())
	}
	return s, nil
}

// count returns the number of requests answered so far.
func (s *servers) count() (uint64, error) {
	fmt.Fprintln(s.in, "count")
	if !s.lines.Scan() {
		return 0, fmt.Errorf("servers: no count: %v", s.lines.Err())
	}
	n, ok := strings.CutPrefix(s.lines.Text(), "served ")
	if !ok {
		return 0, fmt.Errorf("servers: %q", s.lines.Text())
	}
	return strconv.ParseUint(n, 10, 64)
}

func (s *servers) close() { s.in.Close(); _ = s.cmd.Process.Kill(); _ = s.cmd.Wait() }

// treePIDs returns pid and its descendants.
func treePIDs(pid int) []int {
	parent := map[int]int{}
	ents, _ := os.ReadDir("/proc")
	for _, e := range ents {
		p, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		b, err := os.ReadFile(filepath.Join("/proc", e.Name(), "stat"))
		if err != nil {
			continue
		}
		s := string(b)
		if i := strings.LastIndexByte(s, ')'); i >= 0 {
			if f := strings.Fields(s[i+1:]); len(f) > 1 {
				parent[p], _ = strconv.Atoi(f[1])
			}
		}
	}
	pids := []int{pid}
	for i := 0; i < len(pids); i++ {
		for p, pp := range parent {
			if pp == pids[i] {
				pids = append(pids, p)
			}
		}
	}
	return pids
}

func treeCPU(pid int) time.Duration {
	var t time.Duration
	for _, p := range treePIDs(pid) {
		t += procCPU(p)
	}
	return t
}

func treePSS(pid int) int64 {
	var pss int64
	for _, p := range treePIDs(pid) {
		pss += procPSS(p)
	}
	return pss
}

// treeRSS returns the RSS of pid's process tree and of each process in it,
// in pid order (a parent before the children it started since).
func treeRSS(pid int) (int64, []int64) {
	pids := treePIDs(pid)
	slices.Sort(pids[1:])
	var rss int64
	by := make([]int64, len(pids))
	for i, p := range pids {
		by[i] = procRSS(p)
		rss += by[i]
	}
	return rss, by
}
