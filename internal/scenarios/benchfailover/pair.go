package main

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	"github.com/lvsha/lvsha/internal/testenv/netns"
	"github.com/lvsha/lvsha/vrrp"
)

// A pair of directors, lvsha or keepalived, in namespaces of one lab.

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
state_dir = %q

[[vrrp_instance]]
name = "VI_1"
interface = "eth0"
virtual_router_id = 51
priority = %d
advert_interval = %q
version = 3
virtual_ipaddress = [%q]
`, name, filepath.Join(dir, name+".sock"), filepath.Join(dir, name+"-state"), prio, interval.String(), o.vip.String())
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
`, name, prio, interval.Seconds(), o.vip)
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
	if o.vip.Addr().Is6() {
		for _, n := range []*netns.Node{p.a, p.b, p.c} {
			a := fmt.Sprintf("2001:db8:99::%d/64", n.Addr.Addr().As4()[3])
			if out, err := n.Run("ip", "-6", "addr", "add", a, "dev", "eth0", "nodad"); err != nil {
				return nil, fmt.Errorf("%s: %w: %s", a, err, out)
			}
		}
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
		ha, _ := p.a.HasAddr("eth0", o.vip.Addr())
		hb, _ := p.b.HasAddr("eth0", o.vip.Addr())
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
