package director

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/lvsha/lvsha/internal/director/control"

	"github.com/lvsha/lvsha/internal/testenv/netns"
	"github.com/lvsha/lvsha/internal/testenv/testutil"
	"golang.org/x/sys/unix"
)

// buildLvsha is the real lvsha binary (testutil.LvshaBinary).
func buildLvsha(t *testing.T) string { return testutil.LvshaBinary(t) }

// pairLab is a lab of two director hosts, d1 (10.98.0.2) and d2
// (10.98.0.3), removed when the test ends; tag names its namespaces.
func pairLab(t *testing.T, tag string) (*netns.Lab, *netns.Node, *netns.Node) {
	t.Helper()
	lab, err := netns.NewLab(netns.UniquePrefix(tag))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { lab.Close() })
	n1, err := lab.AddNode("d1", netip.MustParsePrefix("10.98.0.2/24"))
	if err != nil {
		t.Fatal(err)
	}
	n2, err := lab.AddNode("d2", netip.MustParsePrefix("10.98.0.3/24"))
	if err != nil {
		t.Fatal(err)
	}
	return lab, n1, n2
}

type director struct {
	node *netns.Node
	cmd  *exec.Cmd
	file string
	sock string
	log  *syncBuffer
	done chan error
}

const directorConfig = `
[global]
control_socket = %q
state_dir = %q
metrics_listen = "127.0.0.1:9610"

[[vrrp_instance]]
name = "VI_1"
interface = "eth0"
virtual_router_id = 42
priority = %d
advert_interval = "100ms"
virtual_ipaddress = ["10.98.0.100/24"]
%s`

func startDirector(t *testing.T, bin string, node *netns.Node, prio int) *director {
	t.Helper()
	return startDirectorWith(t, bin, node, prio, t.TempDir(), "")
}

// startDirectorWith starts a director whose files are in dir and whose
// config has extra after the instance's keys.
func startDirectorWith(t *testing.T, bin string, node *netns.Node, prio int, dir, extra string) *director {
	t.Helper()
	d := &director{node: node, file: filepath.Join(dir, "lvsha.toml"), sock: filepath.Join(dir, "lvsha.sock"), log: &syncBuffer{}, done: make(chan error, 1)}
	d.write(t, prio, extra)
	d.cmd = exec.Command(bin, "-f", d.file)
	d.cmd.Stdout, d.cmd.Stderr = d.log, d.log
	if err := node.Start(d.cmd); err != nil {
		t.Fatal(err)
	}
	go func() { d.done <- d.cmd.Wait() }()
	t.Cleanup(func() {
		if d.cmd.ProcessState == nil {
			_ = d.cmd.Process.Kill()
			<-d.done
		}
		if t.Failed() {
			t.Logf("%s log:\n%s", node.Role, d.log.String())
		}
	})
	return d
}

func (d *director) write(t *testing.T, prio int, extra string) {
	t.Helper()
	if err := os.WriteFile(d.file, fmt.Appendf(nil, directorConfig, d.sock, filepath.Join(filepath.Dir(d.file), "state"), prio, extra), 0o644); err != nil {
		t.Fatal(err)
	}
}

func (d *director) status(t *testing.T) *control.Status {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	st, err := control.QueryStatus(ctx, d.sock)
	if err != nil {
		return nil
	}
	return st
}

func (d *director) vrrp(t *testing.T) control.VRRPStatus {
	t.Helper()
	st := d.status(t)
	if st == nil || len(st.VRRP) != 1 {
		return control.VRRPStatus{}
	}
	return st.VRRP[0]
}

// scrapeIn fetches /metrics from inside the node's namespace: the socket is
// made on a thread in that namespace, the HTTP exchange is plain bytes.
func scrapeIn(t *testing.T, n *netns.Node, addr string) string {
	t.Helper()
	var conn net.Conn
	if err := n.Do(func() (err error) {
		conn, err = net.DialTimeout("tcp", addr, 2*time.Second)
		return err
	}); err != nil {
		t.Fatalf("dial metrics: %v", err)
	}
	defer conn.Close()
	_ = conn.SetDeadline(time.Now().Add(5 * time.Second))
	fmt.Fprintf(conn, "GET /metrics HTTP/1.1\r\nHost: lvsha\r\nConnection: close\r\n\r\n")
	resp, err := http.ReadResponse(bufio.NewReader(conn), nil)
	if err != nil {
		t.Fatalf("metrics response: %v", err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return string(b)
}

func waitCond(t *testing.T, what string, cond func() bool) {
	t.Helper()
	if !netns.WaitFor(10*time.Second, 20*time.Millisecond, cond) {
		t.Fatalf("timed out waiting for %s", what)
	}
}

// TestReloadKeepsMasterAndStatusAndMetrics runs two real lvsha directors in
// namespaces. A reload that only adds a real server leaves VRRP alone: the
// master stays master and keeps advertising, no transition anywhere; an
// invalid reload changes nothing; status and metrics tell the truth; a
// clean stop hands over at once.
func TestReloadKeepsMasterAndStatusAndMetrics(t *testing.T) {
	testutil.NeedRoot(t)
	bin := buildLvsha(t)
	_, n1, n2 := pairLab(t, "lvd")
	d1 := startDirector(t, bin, n1, 150)
	d2 := startDirector(t, bin, n2, 100)
	waitCond(t, "d1 MASTER, d2 BACKUP", func() bool {
		return d1.vrrp(t).State == "MASTER" && d2.vrrp(t).State == "BACKUP"
	})
	// The default realtime_priority puts every thread under SCHED_RR.
	attr, err := unix.SchedGetAttr(d1.cmd.Process.Pid, 0)
	if err != nil || attr.Policy != unix.SCHED_RR || attr.Priority != 10 {
		t.Errorf("director scheduling: %+v %v, want SCHED_RR priority 10", attr, err)
	}
	// Nothing to check yet, so no checker process.
	if kids := childrenOf(t, d1.cmd.Process.Pid); len(kids) != 0 {
		t.Errorf("a director without checks has children %v", kids)
	}
	if fi, err := os.Stat(d1.sock); err != nil || fi.Mode().Perm() != 0o600 {
		t.Errorf("control socket mode: %v %v", fi.Mode(), err)
	}
	vip := netip.MustParseAddr("10.98.0.100")
	if ok, _ := n1.HasAddr("eth0", vip); !ok {
		t.Fatal("master does not hold the VIP")
	}

	before1, before2 := d1.vrrp(t), d2.vrrp(t)
	d1.write(t, 150, `
[[virtual_server]]
address = "10.98.0.100:80"
[virtual_server.check]
type = "tcp"
[[virtual_server.real_server]]
address = "10.98.0.20:80"
`)
	if err := d1.cmd.Process.Signal(syscall.SIGHUP); err != nil {
		t.Fatal(err)
	}
	waitCond(t, "reload applied", func() bool { return strings.Contains(d1.log.String(), "reload applied") })
	waitCond(t, "the service in status", func() bool {
		st := d1.status(t)
		return st != nil && len(st.Services) == 1 && len(st.Services[0].Reals) == 1
	})
	// The first check started the health checker: a child process under
	// normal scheduling on every thread, while the daemon is real-time.
	var checker int
	waitCond(t, "a checker process", func() bool {
		kids := childrenOf(t, d1.cmd.Process.Pid)
		if len(kids) == 1 {
			checker = kids[0]
		}
		return len(kids) == 1
	})
	if cmd, _ := os.ReadFile(fmt.Sprintf("/proc/%d/cmdline", checker)); !strings.Contains(string(cmd), "\x00checker\x00") {
		t.Errorf("checker command line %q", cmd)
	}
	// The child inherits the thread it was forked from and switches
	// itself to normal scheduling as it starts: wait for that.
	var notNormal []string
	normal := func() bool {
		notNormal = nil
		tasks, _ := os.ReadDir(fmt.Sprintf("/proc/%d/task", checker))
		for _, task := range tasks {
			tid, _ := strconv.Atoi(task.Name())
			if attr, err := unix.SchedGetAttr(tid, 0); err != nil || attr.Policy != unix.SCHED_NORMAL {
				notNormal = append(notNormal, fmt.Sprintf("thread %d: %+v %v", tid, attr, err))
			}
		}
		return len(tasks) > 0 && len(notNormal) == 0
	}
	if !netns.WaitFor(5*time.Second, 10*time.Millisecond, normal) {
		t.Errorf("checker %d: threads not under SCHED_NORMAL (or none): %v", checker, notNormal)
	}
	// Adverts went on: the backup kept hearing the master.
	waitCond(t, "adverts after the reload", func() bool { return d2.vrrp(t).AdvertsIn > before2.AdvertsIn+5 })
	after1, after2 := d1.vrrp(t), d2.vrrp(t)
	if after1.State != "MASTER" || after1.Transitions != before1.Transitions || !after1.Since.Equal(before1.Since) {
		t.Errorf("reload disturbed the master: before %+v after %+v", before1, after1)
	}
	if after2.State != "BACKUP" || after2.Transitions != before2.Transitions {
		t.Errorf("reload disturbed the backup: before %+v after %+v", before2, after2)
	}

	// An invalid config is rejected and changes nothing.
	if err := os.WriteFile(d1.file, []byte("[[vrrp_instance]]\nname = 1\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	_ = d1.cmd.Process.Signal(syscall.SIGHUP)
	waitCond(t, "reload rejected", func() bool { return strings.Contains(d1.log.String(), "reload rejected") })
	if v := d1.vrrp(t); v.State != "MASTER" || v.Transitions != before1.Transitions {
		t.Errorf("invalid reload disturbed the master: %+v", v)
	}
	if st := d1.status(t); st == nil || len(st.Services) != 1 {
		t.Errorf("invalid reload changed the running config: %+v", st)
	}

	// The human status and the metrics.
	out, err := n1.Run(bin, "status", "-S", d1.sock)
	if err != nil || !strings.Contains(out, "VI_1") || !strings.Contains(out, "MASTER") || !strings.Contains(out, "TCP 10.98.0.100:80") {
		t.Errorf("lvsha status: %v\n%s", err, out)
	}
	m := scrapeIn(t, n1, "127.0.0.1:9610")
	for _, want := range []string{
		`lvsha_vrrp_state{state="MASTER",vrrp_instance="VI_1"} 1`,
		`lvsha_vrrp_state{state="BACKUP",vrrp_instance="VI_1"} 0`,
		`lvsha_vrrp_priority{vrrp_instance="VI_1"} 150`,
		`lvsha_vrrp_transitions_total{vrrp_instance="VI_1"}`,
		`lvsha_vrrp_adverts_sent_total{vrrp_instance="VI_1"}`,
	} {
		if !strings.Contains(m, want) {
			t.Errorf("metrics lack %s", want)
		}
	}

	// A clean stop: the backup takes over, the VIP leaves the old master.
	if err := d1.cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	if err := <-d1.done; err != nil {
		t.Errorf("lvsha exited with %v after SIGTERM", err)
	}
	// The daemon waited for its checker to exit.
	if b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", checker)); err == nil && !strings.Contains(string(b), ") Z ") {
		t.Errorf("checker %d outlived the daemon: %s", checker, b)
	}
	waitCond(t, "d2 MASTER", func() bool { return d2.vrrp(t).State == "MASTER" })
	if ok, _ := n1.HasAddr("eth0", vip); ok {
		t.Error("the stopped director still holds the VIP")
	}
	if ok, _ := n2.HasAddr("eth0", vip); !ok {
		t.Error("the new master does not hold the VIP")
	}
	if c := d2.vrrp(t).LastCause; !strings.Contains(c, "priority 0") {
		t.Errorf("takeover cause %q, want the priority-0 advert", c)
	}
}

// childrenOf returns the child processes of pid, whichever of its threads
// started them.
func childrenOf(t *testing.T, pid int) []int {
	t.Helper()
	var kids []int
	tasks, err := os.ReadDir(fmt.Sprintf("/proc/%d/task", pid))
	if err != nil {
		t.Fatal(err)
	}
	for _, task := range tasks {
		b, _ := os.ReadFile(fmt.Sprintf("/proc/%d/task/%s/children", pid, task.Name()))
		for _, f := range strings.Fields(string(b)) {
			if k, err := strconv.Atoi(f); err == nil {
				kids = append(kids, k)
			}
		}
	}
	return kids
}
