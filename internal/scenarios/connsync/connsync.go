// Package connsync proves IPVS connection synchronisation end to end: two
// real lvsha directors (VRRP, DR round robin over web1 and web2), a client
// with many long-lived TCP connections through the VIP, each sending a line
// every 100 ms and reading an echo that names the real server. SIGKILL the
// master: with [sync] every connection goes on with the same real server
// and no reset; without it the same failover resets them. It runs inside
// the QEMU VM (internal/testenv/vm), whose kernel has IPVS.
package connsync

import (
	"context"
	"fmt"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	"github.com/lvsha/lvsha/internal/director/control"
	"github.com/lvsha/lvsha/internal/testenv/lab"
	"github.com/lvsha/lvsha/internal/testenv/netns"
)

// GuestLvsha is where the lvsha binary is inside the VM.
const GuestLvsha = "/usr/sbin/lvsha"

// Port is the service port of the VIP.
const Port = 80

// Options are one run's settings.
type Options struct {
	Lvsha string // the binary; default GuestLvsha
	// Keepalived, if set, is a keepalived binary the directors run instead
	// of lvsha (with lvs_sync_daemon when Sync), for the benchmark.
	Keepalived  string
	WorkDir     string        // configs and logs; default /tmp/lvsha-connsync-<tag>
	Sync        bool          // [sync] in both configs
	Persistence time.Duration // persistence_timeout of the service; 0 = none
	// AdvertInterval is the VRRP advert interval; default 1s, long enough
	// that a VM busy with thousands of connections fails over falsely
	// neither with lvsha nor keepalived.
	AdvertInterval time.Duration
	Log            func(format string, args ...any)
}

// Topology is one lab: client, two directors running lvsha, two webs.
type Topology struct {
	o       Options
	lab     *netns.Lab
	Client  *netns.Node
	D1, D2  *Director
	webs    []*netns.Node
	servers []net.Listener
}

// Director is one lvsha daemon in its namespace.
type Director struct {
	tool   string // "lvsha" or "keepalived"
	Name   string
	Node   *netns.Node
	lvsha  string
	Config string
	Socket string
	Logf   string
	cmd    *exec.Cmd
	done   chan struct{}
}

// New builds the lab and writes both directors' configs; Start runs them.
func New(tag string, o Options) (_ *Topology, err error) {
	if o.Lvsha == "" {
		o.Lvsha = GuestLvsha
	}
	if o.WorkDir == "" {
		o.WorkDir = "/tmp/lvsha-connsync-" + tag
	}
	if o.AdvertInterval == 0 {
		o.AdvertInterval = time.Second
	}
	if o.Log == nil {
		o.Log = func(string, ...any) {}
	}
	if err := os.MkdirAll(o.WorkDir, 0o755); err != nil {
		return nil, err
	}
	l, err := netns.NewLab(netns.UniquePrefix("cs" + tag))
	if err != nil {
		return nil, err
	}
	t := &Topology{o: o, lab: l}
	defer func() {
		if err != nil {
			t.Close()
		}
	}()
	if t.Client, err = l.AddNode("client", lab.Client); err != nil {
		return nil, err
	}
	for i, a := range []netip.Prefix{lab.Director1, lab.Director2} {
		name := fmt.Sprintf("director%d", i+1)
		n, err := l.AddNode(name, a)
		if err != nil {
			return nil, err
		}
		d := &Director{tool: "lvsha", Name: name, Node: n, lvsha: o.Lvsha,
			Config: filepath.Join(o.WorkDir, name+".toml"),
			Socket: filepath.Join("/run/lvsha", "cs"+tag+"-"+name+".sock"),
			Logf:   filepath.Join(o.WorkDir, name+".log")}
		prio := 150 - 50*i
		text := t.config(d, prio)
		if o.Keepalived != "" {
			d.tool, d.lvsha, d.Config = "keepalived", o.Keepalived, filepath.Join(o.WorkDir, name+".conf")
			text = t.keepalivedConfig(d, prio)
		}
		if err := os.WriteFile(d.Config, []byte(text), 0o644); err != nil {
			return nil, err
		}
		if o.Keepalived == "" {
			if out, err := n.Run(o.Lvsha, "-t", "-f", d.Config); err != nil {
				return nil, fmt.Errorf("%s: lvsha -t: %w\n%s", name, err, out)
			}
		}
		if i == 0 {
			t.D1 = d
		} else {
			t.D2 = d
		}
	}
	for _, a := range []netip.Prefix{lab.Web1, lab.Web2} {
		name := "web1"
		if a == lab.Web2 {
			name = "web2"
		}
		n, err := l.AddNode(name, a)
		if err != nil {
			return nil, err
		}
		t.webs = append(t.webs, n)
		if err := lab.RealServer(n.NS, lab.VIP); err != nil {
			return nil, err
		}
		ln, err := EchoServer(n.NS, name)
		if err != nil {
			return nil, err
		}
		t.servers = append(t.servers, ln)
	}
	return t, nil
}

func (t *Topology) config(d *Director, prio int) string {
	var b strings.Builder
	fmt.Fprintf(&b, "[global]\nrouter_id = %q\ncontrol_socket = %q\nstate_dir = %q\n\n", d.Name, d.Socket,
		filepath.Join(t.o.WorkDir, d.Name+"-state"))
	fmt.Fprintf(&b, "[[vrrp_instance]]\nname = \"VI_1\"\ninterface = \"eth0\"\nvirtual_router_id = 51\npriority = %d\n"+
		"advert_interval = %q\nvirtual_ipaddress = [\"%v/24\"]\n\n", prio, t.o.AdvertInterval.String(), lab.VIP)
	if t.o.Sync {
		b.WriteString("[sync]\ninstance = \"VI_1\"\n\n")
	}
	fmt.Fprintf(&b, "[[virtual_server]]\naddress = \"%v:%d\"\nscheduler = \"rr\"\nforwarding = \"dr\"\n", lab.VIP, Port)
	if t.o.Persistence > 0 {
		fmt.Fprintf(&b, "persistence_timeout = %q\n", t.o.Persistence.String())
	}
	for _, w := range []netip.Prefix{lab.Web1, lab.Web2} {
		fmt.Fprintf(&b, "\n[[virtual_server.real_server]]\naddress = \"%v:%d\"\n", w.Addr(), Port)
	}
	return b.String()
}

// keepalivedConfig is the same director for keepalived 2.2.7: VRRPv3, the
// service DR round robin without checks (real servers always up), and
// lvs_sync_daemon following VI_1 when Sync.
func (t *Topology) keepalivedConfig(d *Director, prio int) string {
	var b strings.Builder
	fmt.Fprintf(&b, "global_defs {\n  router_id %s\n", d.Name)
	if t.o.Sync {
		b.WriteString("  lvs_sync_daemon eth0 inst VI_1 id 51\n")
	}
	b.WriteString("}\n")
	fmt.Fprintf(&b, "vrrp_instance VI_1 {\n  version 3\n  state BACKUP\n  interface eth0\n  virtual_router_id 51\n  priority %d\n"+
		"  advert_int %g\n  virtual_ipaddress {\n    %v/24\n  }\n}\n", prio, t.o.AdvertInterval.Seconds(), lab.VIP)
	fmt.Fprintf(&b, "virtual_server %v %d {\n  lb_algo rr\n  lb_kind DR\n  protocol TCP\n", lab.VIP, Port)
	if t.o.Persistence > 0 {
		fmt.Fprintf(&b, "  persistence_timeout %d\n", int(t.o.Persistence.Seconds()))
	}
	for _, w := range []netip.Prefix{lab.Web1, lab.Web2} {
		fmt.Fprintf(&b, "  real_server %v %d {\n    weight 1\n  }\n", w.Addr(), Port)
	}
	b.WriteString("}\n")
	return b.String()
}

// Plug puts a node's cable in or pulls it (its bridge port up or down): a
// killed director whose kernel still holds the VIP and its IPVS table is
// a dead host only once unplugged.
func (t *Topology) Plug(role string, in bool) error { return t.lab.SetPort(role, in) }

// Close stops everything and removes the namespaces.
func (t *Topology) Close() {
	for _, d := range []*Director{t.D1, t.D2} {
		if d != nil {
			d.Stop()
		}
	}
	for _, ln := range t.servers {
		_ = ln.Close()
	}
	_ = t.lab.Close()
}

// NewDirector is an lvsha daemon to run in node's namespace with the
// config file config (already written), its control socket and log file.
func NewDirector(name string, node *netns.Node, lvsha, config, socket, logf string) *Director {
	return &Director{tool: "lvsha", Name: name, Node: node, lvsha: lvsha, Config: config, Socket: socket, Logf: logf}
}

// Start runs `lvsha -f CONFIG` in the director's namespace.
func (d *Director) Start() error {
	logf, err := os.OpenFile(d.Logf, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		return err
	}
	cmd := exec.Command(d.lvsha, "-f", d.Config)
	if d.tool == "keepalived" {
		dir := filepath.Dir(d.Config)
		cmd = exec.Command(d.lvsha, "-n", "-l", "-D", "-f", d.Config,
			"-p", filepath.Join(dir, d.Name+".pid"), "-r", filepath.Join(dir, d.Name+"-vrrp.pid"),
			"-c", filepath.Join(dir, d.Name+"-check.pid"))
	}
	cmd.Stdout, cmd.Stderr = logf, logf
	// Its own process group: a kill takes keepalived's children too.
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	if err := d.Node.Start(cmd); err != nil {
		logf.Close()
		return fmt.Errorf("%s: start lvsha: %w", d.Name, err)
	}
	d.cmd, d.done = cmd, make(chan struct{})
	go func() {
		_ = cmd.Wait()
		logf.Close()
		close(d.done)
	}()
	return nil
}

// Kill is a crash: SIGKILL to the process group, nothing cleaned up.
func (d *Director) Kill() {
	if d.cmd == nil {
		return
	}
	_ = syscall.Kill(-d.cmd.Process.Pid, syscall.SIGKILL)
	<-d.done
	d.cmd = nil
}

// HoldsVIP says whether the director has the VIP on eth0 (how keepalived,
// which has no status to ask, shows it is master).
func (d *Director) HoldsVIP() (bool, error) {
	return d.Node.HasAddr("eth0", lab.VIP)
}

// Stop is a clean stop (SIGTERM), a kill after 10 s.
func (d *Director) Stop() {
	if d.cmd == nil {
		return
	}
	if d.tool == "keepalived" {
		_ = syscall.Kill(-d.cmd.Process.Pid, syscall.SIGTERM)
	} else {
		_ = d.cmd.Process.Signal(syscall.SIGTERM)
	}
	select {
	case <-d.done:
	case <-time.After(10 * time.Second):
		d.Kill()
	}
	d.cmd = nil
}

// Status asks the daemon over its control socket.
func (d *Director) Status(ctx context.Context) (*control.Status, error) {
	ctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	return control.QueryStatus(ctx, d.Socket)
}

// LogTail is the end of the daemon's log, for failures.
func (d *Director) LogTail(n int) string {
	b, _ := os.ReadFile(d.Logf)
	lines := strings.Split(strings.TrimRight(string(b), "\n"), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return "    " + strings.Join(lines, "\n    ")
}

// State is the director's VRRP state and its sync daemons ("master",
// "backup") as its status says.
func (d *Director) State(ctx context.Context) (string, []string, error) {
	st, err := d.Status(ctx)
	if err != nil {
		return "", nil, err
	}
	if len(st.VRRP) != 1 {
		return "", nil, fmt.Errorf("%s: %d vrrp instances", d.Name, len(st.VRRP))
	}
	var ds []string
	if st.Sync != nil {
		for _, x := range st.Sync.Daemons {
			ds = append(ds, x.State)
		}
	}
	return st.VRRP[0].State, ds, nil
}

// WaitFor polls cond until it returns nil, at most timeout.
func WaitFor(ctx context.Context, what string, timeout time.Duration, cond func() error) (time.Duration, error) {
	start := time.Now()
	for {
		err := cond()
		if err == nil {
			return time.Since(start), nil
		}
		if time.Since(start) > timeout {
			return time.Since(start), fmt.Errorf("timed out after %v waiting for %s: %w", timeout, what, err)
		}
		select {
		case <-ctx.Done():
			return time.Since(start), ctx.Err()
		case <-time.After(50 * time.Millisecond):
		}
	}
}

// WaitRoles waits until master is MASTER and backup BACKUP, with the sync
// daemons the config calls for (master+backup on the master, backup on the
// backup) when sync is on.
func (t *Topology) WaitRoles(ctx context.Context, master, backup *Director) (time.Duration, error) {
	return WaitFor(ctx, master.Name+" MASTER, "+backup.Name+" BACKUP", 30*time.Second, func() error {
		ms, md, err := master.State(ctx)
		if err != nil {
			return err
		}
		bs, bd, err := backup.State(ctx)
		if err != nil {
			return err
		}
		if ms != "MASTER" || bs != "BACKUP" {
			return fmt.Errorf("%s %s, %s %s", master.Name, ms, backup.Name, bs)
		}
		if t.o.Sync && (strings.Join(md, ",") != "master,backup" || strings.Join(bd, ",") != "backup") {
			return fmt.Errorf("sync daemons: %s %v, %s %v", master.Name, md, backup.Name, bd)
		}
		return nil
	})
}
