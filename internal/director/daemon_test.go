package director

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/lvsha/lvsha/internal/director/control"

	"github.com/lvsha/lvsha/conf"
	"github.com/lvsha/lvsha/internal/director/checker"
	"github.com/lvsha/lvsha/lvs"
	"github.com/lvsha/lvsha/lvs/lvstest"
)

// fakeIPVS is production's IPVS kernel over lvstest's in-memory table:
// the daemon's loop writes through the real encoder and batching while the
// test reads the table (which is safe for concurrent use).
type fakeIPVS struct {
	lvs.Kernel
	table *lvstest.Table
}

func newFakeIPVS(t *testing.T) *fakeIPVS {
	f, k := lvstest.New(t)
	return &fakeIPVS{Kernel: k, table: f}
}

// takeWrites returns the write requests the kernel received since the last
// call (reads, such as a periodic repair's, left out).
func (k *fakeIPVS) takeWrites() []string {
	var w []string
	for _, c := range k.table.Calls() {
		if !strings.HasPrefix(c, "Services") && !strings.HasPrefix(c, "Destinations") {
			w = append(w, c)
		}
	}
	k.table.Reset()
	return w
}

// weights returns the kernel weight of each destination of the one service.
func (k *fakeIPVS) weights() map[string]int {
	es := k.table.Entries()
	if len(es) != 1 {
		return nil
	}
	out := map[string]int{}
	for _, d := range es[0].Dests {
		out[d.Addr.String()] = d.Weight
	}
	return out
}

// web is an HTTP server on loopback that can be stopped and started again on
// the same port.
type web struct {
	addr string
	mu   sync.Mutex
	srv  *http.Server
}

func startWeb(t *testing.T, addr string) *web {
	t.Helper()
	w := &web{addr: addr}
	w.start(t)
	t.Cleanup(w.stop)
	return w
}

func (w *web) start(t *testing.T) {
	t.Helper()
	l, err := net.Listen("tcp", w.addr)
	if err != nil {
		t.Fatal(err)
	}
	w.addr = l.Addr().String()
	srv := &http.Server{Handler: http.HandlerFunc(func(rw http.ResponseWriter, _ *http.Request) { io.WriteString(rw, "ok") })}
	w.mu.Lock()
	w.srv = srv
	w.mu.Unlock()
	go srv.Serve(l)
}

func (w *web) stop() {
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.srv != nil {
		w.srv.Close()
		w.srv = nil
	}
}

func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

const daemonConfig = `
[global]
control_socket = "%s"
state_dir = "%s"
metrics_listen = "%s"
realtime_priority = 0 # in-process: leave the test binary's scheduling alone

[[virtual_server]]
address = "10.99.0.1:80"
scheduler = "rr"
forwarding = "nat"

[virtual_server.check]
type = "http"
interval = "100ms"
timeout = "80ms"
rise = 1
fall = 1

[[virtual_server.real_server]]
address = "%s"

[[virtual_server.real_server]]
address = "%s"
weight = 5
%s`

// TestDaemonHealthDrivesIPVSAndReloadIsADiff runs the daemon with real health
// checks against loopback servers and an in-memory IPVS: a failing server
// gets weight 0 and its weight back on recovery, a reload that adds one real
// server makes exactly one kernel call, an invalid reload changes nothing.
func TestDaemonHealthDrivesIPVSAndReloadIsADiff(t *testing.T) {
	dir := t.TempDir()
	sock := filepath.Join(dir, "lvsha.sock")
	a := startWeb(t, "127.0.0.1:0")
	b := startWeb(t, "127.0.0.1:0")
	file := filepath.Join(dir, "lvsha.toml")
	metricsAddr := freePort(t)
	write := func(extra string) {
		t.Helper()
		if err := os.WriteFile(file, fmt.Appendf(nil, daemonConfig, sock, filepath.Join(dir, "state"), metricsAddr, a.addr, b.addr, extra), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	write("")
	cfg, _, err := conf.Load(file)
	if err != nil {
		t.Fatal(err)
	}
	k := newFakeIPVS(t)
	reload := make(chan os.Signal, 1)
	var logs syncBuffer
	log := slog.New(slog.NewTextHandler(&logs, nil))
	d := New(cfg, log, Options{Version: "test", Reload: reload, OpenIPVS: func() (lvs.Kernel, func(), error) {
		return k, func() {}, nil
	}})
	ctx := runDaemon(t, d)

	waitFor(t, "both real servers in IPVS", func() bool {
		w := k.weights()
		return w[a.addr] == 1 && w[b.addr] == 5
	})

	b.stop()
	waitFor(t, "b inhibited (weight 0)", func() bool { return k.weights()[b.addr] == 0 })
	st, err := control.QueryStatus(ctx, sock)
	if err != nil {
		t.Fatal(err)
	}
	if len(st.Services) != 1 || len(st.Services[0].Reals) != 2 {
		t.Fatalf("status: %+v", st)
	}
	rb := st.Services[0].Reals[1]
	if rb.Health != "down" || rb.KernelWeight != 0 || rb.Weight != 5 || rb.LastError == "" || rb.LastResult == "ok" || rb.LastResult == "" {
		t.Errorf("status of the failed real server: %+v", rb)
	}
	if !st.Services[0].InKernel {
		t.Errorf("service not reported in kernel")
	}

	// Go's profiles are served on the control socket (and only there).
	resp, err := control.Client(sock).Get("http://lvsha/debug/pprof/heap?debug=1")
	if err != nil {
		t.Fatal(err)
	}
	prof, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK || !bytes.Contains(prof, []byte("heap profile:")) {
		t.Errorf("heap profile on the control socket: %s %.200q", resp.Status, prof)
	}

	if resp, err := http.Get("http://" + metricsAddr + "/debug/pprof/heap"); err != nil {
		t.Fatal(err)
	} else {
		resp.Body.Close()
		if resp.StatusCode != http.StatusNotFound {
			t.Errorf("metrics listener serves profiles: %s", resp.Status)
		}
	}

	body := scrape(t, metricsAddr)
	for _, want := range []string{
		fmt.Sprintf(`lvsha_realserver_up{real_server=%q,service="TCP 10.99.0.1:80"} 0`, b.addr),
		fmt.Sprintf(`lvsha_realserver_up{real_server=%q,service="TCP 10.99.0.1:80"} 1`, a.addr),
		fmt.Sprintf(`lvsha_ipvs_weight{real_server=%q,service="TCP 10.99.0.1:80"} 0`, b.addr),
		`lvsha_ipvs_operations_total{op="add-service"} 1`,
		`lvsha_ipvs_operations_total{op="add-dest"} 2`,
		`lvsha_ipvs_operations_total{op="update-dest"} 1`,
		`lvsha_healthcheck_checks_total{real_server="TCP 10.99.0.1:80 -> ` + b.addr + `"}`,
		`lvsha_ipvs_reconcile_runs_total`,
		`lvsha_healthcheck_failures_total{real_server="TCP 10.99.0.1:80 -> ` + b.addr + `",reason="refused"}`,
		`lvsha_healthcheck_duration_seconds_count{service="TCP 10.99.0.1:80"}`,
	} {
		if !strings.Contains(body, want) {
			t.Errorf("metrics lack %s\n%s", want, body)
		}
	}

	// The checks run in a process of their own. Kill it and let b recover
	// before its successor runs: the successor must start from b DOWN (the
	// verdict so far), not from b's initial UP, or it would never report
	// the recovery and b would stay out of IPVS.
	old := d.hc.Pid()
	if old == 0 || old == os.Getpid() {
		t.Fatalf("checker pid %d (daemon %d)", old, os.Getpid())
	}
	if err := syscall.Kill(old, syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	b.start(t)
	waitFor(t, "a new checker", func() bool { p := d.hc.Pid(); return p != 0 && p != old })
	waitFor(t, "b back at weight 5", func() bool { return k.weights()[b.addr] == 5 })
	body = scrape(t, metricsAddr)
	for _, want := range []string{"lvsha_healthcheck_process_restarts_total 1", "lvsha_healthcheck_process_up 1"} {
		if !strings.Contains(body, want) {
			t.Errorf("metrics lack %s", want)
		}
	}
	if st, err := control.QueryStatus(ctx, sock); err != nil || st.Checker == nil || st.Checker.Restarts != 1 || st.Checker.Pid != d.hc.Pid() {
		t.Errorf("checker in status: %+v %v (pid %d)", st.Checker, err, d.hc.Pid())
	}
	if st, err := control.QueryStatus(ctx, sock); err != nil || st.Services[0].Reals[1].LastResult != "ok" || st.Services[0].Reals[1].Health != "up" {
		t.Errorf("status after recovery: %+v %v", st.Services[0].Reals[1], err)
	}

	// Invalid config: nothing changes.
	k.takeWrites()
	if err := os.WriteFile(file, []byte("[global]\nlog_level = \"loud\"\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	reload <- syscall.SIGHUP
	waitFor(t, "the rejected reload logged", func() bool { return strings.Contains(logs.String(), "reload rejected") })
	if !strings.Contains(logs.String(), `global.log_level: \"loud\" is not one of`) {
		t.Errorf("the reload error does not name the key:\n%s", logs.String())
	}

	// One more real server: exactly one kernel call.
	c := startWeb(t, "127.0.0.1:0")
	write(fmt.Sprintf("\n[[virtual_server.real_server]]\naddress = %q\nweight = 2\n", c.addr))
	reload <- syscall.SIGHUP
	waitFor(t, "c added", func() bool { return k.weights()[c.addr] == 2 })
	waitFor(t, "reload applied", func() bool { return strings.Count(logs.String(), "reload applied") == 1 })
	if calls := k.takeWrites(); len(calls) != 1 || calls[0] != "NewDestination tcp/10.99.0.1:80 "+c.addr+" weight=2 nat" {
		t.Errorf("reload adding one real server made calls %q, want exactly one NewDestination", calls)
	}
	if w := k.weights(); w[a.addr] != 1 || w[b.addr] != 5 {
		t.Errorf("unchanged real servers changed: %v", w)
	}
	// The services it owns are remembered for the next run.
	if b, err := os.ReadFile(filepath.Join(dir, "state", ownedFile)); err != nil || strings.TrimSpace(string(b)) != "tcp/10.99.0.1:80" {
		t.Errorf("owned services state: %q %v", b, err)
	}
}

// runDaemon runs d until the test ends, then stops it and checks that Run
// returned no error.
func runDaemon(t *testing.T, d *Daemon) context.Context {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- d.Run(ctx) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("Run: %v", err)
		}
	})
	return ctx
}

func freePort(t *testing.T) string {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return l.Addr().String()
}

func scrape(t *testing.T, addr string) string {
	t.Helper()
	resp, err := http.Get("http://" + addr + "/metrics")
	if err != nil {
		t.Fatalf("scrape: %v", err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

func TestDesiredServices(t *testing.T) {
	src := `
[[virtual_server]]
address = "10.0.0.1:80"
on_failure = "remove"
[virtual_server.check]
type = "tcp"
[[virtual_server.real_server]]
address = "10.0.1.1:80"
weight = 3
[[virtual_server.real_server]]
address = "10.0.1.2:80"
[virtual_server.real_server.check]
initial_state = "down"

[[virtual_server]]
fwmark = 7
protocol = "udp"
[[virtual_server.real_server]]
address = "10.0.1.3:53"
`
	cfg, _, err := conf.Parse("t.toml", []byte(src))
	if err != nil {
		t.Fatal(err)
	}
	targets := healthTargets(cfg, nil)
	if len(targets) != 2 || targets[1].Spec.InitialUp || !targets[0].Spec.InitialUp {
		t.Fatalf("targets: %+v", targets)
	}
	hc := checker.NewClient(nil, nil) // never started: Update keeps the targets
	if err := hc.Update(targets); err != nil {
		t.Fatal(err)
	}
	health := hc.Verdicts()
	got := desiredServices(cfg, health, nil)
	if len(got) != 2 {
		t.Fatalf("services: %+v", got)
	}
	s0 := got[0]
	if s0.OnFailure != lvs.Remove || s0.Key.Proto != lvs.TCP || s0.Reals[0].Weight != 3 || !s0.Reals[0].Up || s0.Reals[1].Up {
		t.Errorf("service 0: %+v", s0)
	}
	s1 := got[1]
	if s1.Key.FWMark != 7 || s1.Key.Addr.IsValid() || !s1.Reals[0].Up {
		t.Errorf("fwmark service (unchecked real server is up): %+v", s1)
	}
	// A health transition flips exactly that real server.
	health[targets[1].ID] = true
	if got := desiredServices(cfg, health, nil); !got[0].Reals[1].Up {
		t.Errorf("health up not applied")
	}
}

type syncBuffer struct {
	mu sync.Mutex
	b  strings.Builder
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

// listenNotify plays systemd's side of the notify protocol.
func listenNotify(t *testing.T) *net.UnixConn {
	t.Helper()
	nsock := filepath.Join(t.TempDir(), "notify")
	conn, err := net.ListenUnixgram("unixgram", &net.UnixAddr{Name: nsock, Net: "unixgram"})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	t.Setenv("NOTIFY_SOCKET", nsock)
	return conn
}

// testConfig loads a config for an in-process daemon: its own control
// socket, and the test binary's scheduling left alone.
func testConfig(t *testing.T, body string) *conf.Config {
	t.Helper()
	dir := t.TempDir()
	file := filepath.Join(dir, "lvsha.toml")
	src := fmt.Sprintf("[global]\nrealtime_priority = 0\ncontrol_socket = %q\nstate_dir = %q\n%s", filepath.Join(dir, "c.sock"), dir, body)
	if err := os.WriteFile(file, []byte(src), 0o644); err != nil {
		t.Fatal(err)
	}
	cfg, _, err := conf.Load(file)
	if err != nil {
		t.Fatal(err)
	}
	return cfg
}

// TestSystemdNotify checks the Type=notify protocol: READY=1 once started,
// RELOADING=1 then READY=1 around a reload, STOPPING=1 on the way out.
func TestSystemdNotify(t *testing.T) {
	conn := listenNotify(t)
	cfg := testConfig(t, "")
	reload := make(chan os.Signal, 1)
	d := New(cfg, slog.New(slog.DiscardHandler), Options{Reload: reload})
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- d.Run(ctx) }()
	next := func() string {
		t.Helper()
		_ = conn.SetReadDeadline(time.Now().Add(10 * time.Second))
		buf := make([]byte, 256)
		n, err := conn.Read(buf)
		if err != nil {
			t.Fatalf("no notification: %v", err)
		}
		return string(buf[:n])
	}
	if got := next(); got != "READY=1" {
		t.Fatalf("first notification %q", got)
	}
	reload <- syscall.SIGHUP
	if a, b := next(), next(); a != "RELOADING=1" || b != "READY=1" {
		t.Errorf("reload notifications %q %q", a, b)
	}
	cancel()
	if got := next(); got != "STOPPING=1" {
		t.Errorf("stop notification %q", got)
	}
	if err := <-done; err != nil {
		t.Fatal(err)
	}
}

// blockingKernel holds the first write until released.
type blockingKernel struct {
	*fakeIPVS
	entered, release chan struct{}
	once             sync.Once
}

func (b *blockingKernel) Write(cs []lvs.Change) []error {
	b.once.Do(func() {
		close(b.entered)
		<-b.release
	})
	return b.fakeIPVS.Write(cs)
}

// TestReadyAfterFirstReconcile: systemd hears READY=1 only once the IPVS
// table has been programmed.
func TestReadyAfterFirstReconcile(t *testing.T) {
	conn := listenNotify(t)
	cfg := testConfig(t, "[[virtual_server]]\naddress = \"10.99.0.1:80\"\n[[virtual_server.real_server]]\naddress = \"10.99.1.1:80\"\n")
	k := &blockingKernel{fakeIPVS: newFakeIPVS(t), entered: make(chan struct{}), release: make(chan struct{})}
	d := New(cfg, slog.New(slog.DiscardHandler), Options{OpenIPVS: func() (lvs.Kernel, func(), error) { return k, func() {}, nil }})
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- d.Run(ctx) }()
	defer func() {
		cancel()
		<-done
	}()
	select {
	case <-k.entered:
	case <-time.After(10 * time.Second):
		t.Fatal("the daemon never programmed IPVS")
	}
	_ = conn.SetReadDeadline(time.Now())
	buf := make([]byte, 64)
	if n, err := conn.Read(buf); err == nil {
		t.Fatalf("notified %q while the first reconcile was still running", buf[:n])
	}
	close(k.release)
	_ = conn.SetReadDeadline(time.Now().Add(10 * time.Second))
	n, err := conn.Read(buf)
	if err != nil || string(buf[:n]) != "READY=1" {
		t.Fatalf("after the reconcile: %q %v", buf[:n], err)
	}
	if w := k.weights(); w["10.99.1.1:80"] != 1 {
		t.Errorf("table not programmed when READY was sent: %v", w)
	}
}

// TestNoCheckerProcess: a checker that cannot start leaves the daemon
// running on the verdicts it has (here the initial states: one real server
// up, one down), and status says why it has no details.
func TestNoCheckerProcess(t *testing.T) {
	cfg := testConfig(t, `
[[virtual_server]]
address = "10.99.0.1:80"
[virtual_server.check]
type = "tcp"
[[virtual_server.real_server]]
address = "10.99.1.1:80"
[[virtual_server.real_server]]
address = "10.99.1.2:80"
check = { initial_state = "down" }
`)
	k := newFakeIPVS(t)
	var logs syncBuffer
	d := New(cfg, slog.New(slog.NewTextHandler(&logs, nil)), Options{
		OpenIPVS:       func() (lvs.Kernel, func(), error) { return k, func() {}, nil },
		CheckerCommand: func() *exec.Cmd { return exec.Command("/nonexistent/lvsha", "checker") },
	})
	ctx := runDaemon(t, d)
	waitFor(t, "IPVS programmed", func() bool {
		w := k.weights()
		return w["10.99.1.1:80"] == 1 && w["10.99.1.2:80"] == 0
	})
	waitFor(t, "the failed start logged", func() bool {
		return strings.Contains(logs.String(), "cannot start the checker process")
	})
	st, err := control.QueryStatus(ctx, cfg.Global.ControlSocket)
	if err != nil {
		t.Fatal(err)
	}
	if st.HealthError == "" {
		t.Error("status gives no reason for the missing health details")
	}
	if r := st.Services[0].Reals; r[0].Health != "up" || r[1].Health != "down" || r[0].Checks != 0 {
		t.Errorf("real servers in status: %+v", r)
	}
}

// TestStatusWithWedgedChecker: a stopped checker does not hang status (the
// CLI gives up after 5 s and would call the daemon not running); status
// answers with the daemon's verdicts and says why details are missing.
func TestStatusWithWedgedChecker(t *testing.T) {
	cfg := testConfig(t, `
[[virtual_server]]
address = "10.99.0.1:80"
[virtual_server.check]
type = "tcp"
[[virtual_server.real_server]]
address = "10.99.1.1:80"
`)
	k := newFakeIPVS(t)
	d := New(cfg, slog.New(slog.DiscardHandler), Options{OpenIPVS: func() (lvs.Kernel, func(), error) { return k, func() {}, nil }})
	ctx := runDaemon(t, d)
	waitFor(t, "a checker", func() bool { return d.hc.Pid() != 0 })
	pid := d.hc.Pid()
	if err := syscall.Kill(pid, syscall.SIGSTOP); err != nil {
		t.Fatal(err)
	}
	defer syscall.Kill(pid, syscall.SIGCONT)
	// SIGSTOP takes effect once the child's threads have handled it;
	// until then the child may still answer.
	waitFor(t, "the checker stopped", func() bool { return stopped(pid) })
	qctx, qcancel := context.WithTimeout(ctx, 5*time.Second)
	defer qcancel()
	st, err := control.QueryStatus(qctx, cfg.Global.ControlSocket)
	if err != nil {
		t.Fatalf("status with a stopped checker: %v", err)
	}
	if !strings.Contains(st.HealthError, "deadline exceeded") || st.Services[0].Reals[0].Health != "up" {
		t.Errorf("status: health_error %q, real server %+v", st.HealthError, st.Services[0].Reals[0])
	}
}

// stopped reports whether every thread of process pid is stopped (state T
// in /proc/PID/task/TID/stat).
func stopped(pid int) bool {
	tasks, err := os.ReadDir(fmt.Sprintf("/proc/%d/task", pid))
	if err != nil || len(tasks) == 0 {
		return false
	}
	for _, task := range tasks {
		b, err := os.ReadFile(fmt.Sprintf("/proc/%d/task/%s/stat", pid, task.Name()))
		if err != nil {
			return false
		}
		// The command name in parentheses may contain spaces: the state
		// follows its closing parenthesis.
		i := bytes.LastIndexByte(b, ')')
		if i < 0 || i+2 >= len(b) || b[i+2] != 'T' {
			return false
		}
	}
	return true
}
