package main

import (
	"fmt"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/lvsha/lvsha/internal/testenv/netns"
)

// The VRRP soak under check load (-vrrp-soak): does a director that runs
// thousands of health checks a second still send its adverts on time? Two
// directors on a bridge; the master (a, priority 150) checks c.targets
// servers that run in its namespace, the backup (b, 100) checks nothing.
// Every time b becomes MASTER while a runs is a false failover. lvsha and
// keepalived (with fakeipvs.so, as in -anchor) each get their own pair.

var (
	soakVIP = netip.MustParsePrefix("10.97.0.100/24")
	soakA   = netip.MustParsePrefix("10.97.0.2/24")
	soakB   = netip.MustParsePrefix("10.97.0.3/24")
)

type soakRun struct {
	falseFailovers int
	aCPU           time.Duration
	window         time.Duration
	served         uint64
}

func runVRRPSoak(c config, lvshaBin string, dur, advert time.Duration) error {
	t, cleanup, err := hostTools(lvshaBin)
	if err != nil {
		return err
	}
	defer cleanup()
	version := keepalivedVersion(t.keepalived)
	var runs []soakRun
	for _, lvsha := range []bool{true, false} {
		r, err := soakPair(c, t, lvsha, dur, advert)
		if err != nil {
			return err
		}
		runs = append(runs, r)
	}
	fmt.Printf("\nVRRP under check load: %v adverts, the master checking %d http servers every 1s, the backup none; %v each\n\n",
		advert, c.targets, dur)
	var rows [][3]string
	row := func(name string, f func(soakRun) string) {
		rows = append(rows, [3]string{name, f(runs[0]), f(runs[1])})
	}
	row("false failovers (backup became MASTER)", func(r soakRun) string { return strconv.Itoa(r.falseFailovers) })
	row("checks/s on the master (counted by the servers)", func(r soakRun) string {
		return fmt.Sprintf("%.0f", float64(r.served)/r.window.Seconds())
	})
	row("master's CPU, % of one core (whole process tree)", func(r soakRun) string {
		return fmt.Sprintf("%.1f %%", float64(r.aCPU)/float64(r.window)*100)
	})
	printTable([3]string{"metric", "lvsha", version}, rows)
	return nil
}

func keepalivedVersion(bin string) string {
	if out, err := exec.Command(bin, "-v").CombinedOutput(); err == nil {
		if f := strings.Fields(string(out)); len(f) >= 2 {
			return f[0] + " " + f[1]
		}
	}
	return "keepalived"
}

func soakPair(c config, t tools, lvsha bool, dur, advert time.Duration) (_ soakRun, err error) {
	name := "keepalived"
	if lvsha {
		name = "lvsha"
	}
	lab, err := netns.NewLab(netns.UniquePrefix("bsk"))
	if err != nil {
		return soakRun{}, err
	}
	defer lab.Close()
	a, err := lab.AddNode("a", soakA)
	if err != nil {
		return soakRun{}, err
	}
	b, err := lab.AddNode("b", soakB)
	if err != nil {
		return soakRun{}, err
	}
	if _, err := a.Run("ip", "link", "set", "lo", "up"); err != nil {
		return soakRun{}, err
	}
	srv, err := startServers(c, a)
	if err != nil {
		return soakRun{}, err
	}
	defer srv.close()

	dir, err := os.MkdirTemp("", "bsk-"+name)
	if err != nil {
		return soakRun{}, err
	}
	defer os.RemoveAll(dir)
	start := func(node *netns.Node, role string, prio int, checks bool) (*exec.Cmd, string, error) {
		var cmd *exec.Cmd
		conf := filepath.Join(dir, role+".conf")
		var body string
		if lvsha {
			body = fmt.Sprintf("[global]\nrouter_id = %q\ncontrol_socket = %q\nstate_dir = %q\nlog_level = \"info\"\n\n", role, filepath.Join(dir, role+".sock"), filepath.Join(dir, role+"-state"))
			if checks {
				body = lvshaConf(c, dir)
				body = strings.Replace(body, "[global]\n", fmt.Sprintf("[global]\nrouter_id = %q\n", role), 1)
				body = strings.Replace(body, "lvsha.sock", role+".sock", 1)
			}
			body += fmt.Sprintf("\n[[vrrp_instance]]\nname = \"VI_1\"\ninterface = \"eth0\"\nvirtual_router_id = 51\npriority = %d\nadvert_interval = %q\nversion = 3\nvirtual_ipaddress = [%q]\n",
				prio, advert.String(), soakVIP.String())
			cmd = exec.Command(t.lvsha, "-f", conf)
		} else {
			body = fmt.Sprintf("global_defs {\n  router_id %s\n}\n", role)
			if checks {
				body = strings.Replace(keepalivedConf(c), "router_id bench", "router_id "+role, 1)
			}
			body += fmt.Sprintf("vrrp_instance VI_1 {\n  state BACKUP\n  interface eth0\n  virtual_router_id 51\n  priority %d\n  advert_int %g\n  version 3\n  virtual_ipaddress {\n    %s\n  }\n}\n",
				prio, advert.Seconds(), soakVIP)
			cmd = exec.Command(t.keepalived, "-n", "-l", "-D", "-f", conf,
				"-p", filepath.Join(dir, role+".pid"), "-r", filepath.Join(dir, role+".vrrp.pid"), "-c", filepath.Join(dir, role+".check.pid"))
			cmd.Env = append(os.Environ(), "LD_PRELOAD="+t.preload)
		}
		if err := os.WriteFile(conf, []byte(body), 0o644); err != nil {
			return nil, "", err
		}
		log := filepath.Join(dir, role+".log")
		lf, err := os.Create(log)
		if err != nil {
			return nil, "", err
		}
		defer lf.Close()
		cmd.Stdout, cmd.Stderr = lf, lf
		cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
		if err := node.Start(cmd); err != nil {
			return nil, "", err
		}
		return cmd, log, nil
	}
	stop := func(cmd *exec.Cmd) {
		_ = syscall.Kill(-cmd.Process.Pid, syscall.SIGTERM)
		done := make(chan struct{})
		go func() { _ = cmd.Wait(); close(done) }()
		select {
		case <-done:
		case <-time.After(10 * time.Second):
			_ = syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL)
			<-done
		}
	}
	ca, _, err := start(a, "a", 150, true)
	if err != nil {
		return soakRun{}, err
	}
	defer stop(ca)
	cb, blog, err := start(b, "b", 100, false)
	if err != nil {
		return soakRun{}, err
	}
	defer stop(cb)

	// Settled: a holds the VIP and b does not, for a second, and the
	// checks are running.
	var since time.Time
	if !netns.WaitFor(60*time.Second, 10*time.Millisecond, func() bool {
		ha, _ := a.HasAddr("eth0", soakVIP.Addr())
		hb, _ := b.HasAddr("eth0", soakVIP.Addr())
		if !ha || hb {
			since = time.Time{}
			return false
		}
		if since.IsZero() {
			since = time.Now()
		}
		return time.Since(since) > time.Second
	}) {
		return soakRun{}, fmt.Errorf("%s: no stable master (logs in %s)", name, dir)
	}
	time.Sleep(c.warmup) // the master's checks reach their steady rate
	marker := "to=MASTER"
	if !lvsha {
		marker = "Entering MASTER STATE"
	}
	masters := func() int {
		bs, _ := os.ReadFile(blog)
		return strings.Count(string(bs), marker)
	}
	var r soakRun
	n0, err := srv.count()
	if err != nil {
		return r, err
	}
	m0, cpu0, t0 := masters(), treeCPU(ca.Process.Pid), time.Now()
	time.Sleep(dur)
	n1, err := srv.count()
	if err != nil {
		return r, err
	}
	r.falseFailovers, r.served, r.aCPU, r.window = masters()-m0, n1-n0, treeCPU(ca.Process.Pid)-cpu0, time.Since(t0)
	if r.served == 0 {
		return r, fmt.Errorf("%s: no checks reached the servers (logs in %s)", name, dir)
	}
	return r, nil
}
