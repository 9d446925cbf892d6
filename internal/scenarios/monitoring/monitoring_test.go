// Package monitoring runs the packaged alert rules in a real Prometheus
// that scrapes two real lvsha directors in network namespaces, injects the
// faults the rules are for, and watches the alerts go pending, fire and
// clear through Prometheus' HTTP API.
package monitoring

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/netip"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"golang.org/x/net/ipv4"

	"github.com/lvsha/lvsha/internal/director/control"
	"github.com/lvsha/lvsha/internal/testenv/lab"
	"github.com/lvsha/lvsha/internal/testenv/netns"
	"github.com/lvsha/lvsha/internal/testenv/testutil"
	"github.com/lvsha/lvsha/vrrp"
)

// The lab: directors a (priority 150) and b (100), real servers r1 and r2
// (HTTP on :80) and a forger e on one bridge; Prometheus in a namespace
// of its own reaches each director's metrics on its loopback through a
// proxy, as over a management network that the faults leave alone.
var (
	vip     = netip.MustParsePrefix("10.97.0.100/24")
	addrA   = netip.MustParsePrefix("10.97.0.2/24")
	addrB   = netip.MustParsePrefix("10.97.0.3/24")
	addrR1  = netip.MustParsePrefix("10.97.0.21/24")
	addrR2  = netip.MustParsePrefix("10.97.0.22/24")
	addrE   = netip.MustParsePrefix("10.97.0.66/24")
	foreign = netip.MustParseAddr("10.97.0.200")
)

const (
	advertInterval = time.Second
	vrid           = 61
	metricsPort    = 9610
	promAddr       = "127.0.0.1:9090"
	// maxFor caps the rules' "for" durations: they are meant for scrape
	// intervals of up to 30 s, this Prometheus scrapes every second.
	maxFor = 2 * time.Second
)

func directorConf(name, sock, stateDir string, prio int) string {
	return fmt.Sprintf(`[global]
router_id = %q
control_socket = %q
state_dir = %q
metrics_listen = "127.0.0.1:%d"

[[vrrp_instance]]
name = "VI_1"
interface = "eth0"
virtual_router_id = %d
priority = %d
advert_interval = %q
version = 3
virtual_ipaddress = [%q]

[[virtual_server]]
address = "%s:80"
protocol = "tcp"
scheduler = "rr"
forwarding = "dr"
quorum = 2

[virtual_server.check]
type = "http"
path = "/"
interval = "500ms"
timeout = "300ms"
fall = 2
rise = 1

[[virtual_server.real_server]]
address = "%s:80"
weight = 1

[[virtual_server.real_server]]
address = "%s:80"
weight = 1
`, name, sock, stateDir, metricsPort, vrid, prio, advertInterval, vip, vip.Addr(), addrR1.Addr(), addrR2.Addr())
}

type director struct {
	name, conf, sock, valid string
	node                    *netns.Node
	cmd                     *exec.Cmd
	done                    chan struct{}
}

func (d *director) reload(t *testing.T, body string) {
	t.Helper()
	if err := os.WriteFile(d.conf, []byte(body), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := d.cmd.Process.Signal(syscall.SIGHUP); err != nil {
		t.Fatal(err)
	}
}

// proxy forwards connections accepted in one namespace to addr in another.
func proxy(t *testing.T, from *netns.NS, listen string, to *netns.NS, addr string) {
	t.Helper()
	var ln net.Listener
	if err := from.Do(func() (err error) {
		ln, err = net.Listen("tcp", listen)
		return err
	}); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	dial := lab.Dialer(to)
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go func() {
				defer c.Close()
				u, err := dial(context.Background(), "tcp", addr)
				if err != nil {
					return
				}
				defer u.Close()
				go func() { _, _ = io.Copy(u, c) }()
				_, _ = io.Copy(c, u)
			}()
		}
	}()
}

// rulesForTest is the packaged rule file with every "for" capped at
// maxFor, and which alerts keep a "for" (they go pending first).
func rulesForTest(t *testing.T) (string, map[string]bool) {
	t.Helper()
	b, err := os.ReadFile("../../../packaging/monitoring/lvsha-alerts.yml")
	if err != nil {
		t.Fatal(err)
	}
	pending := map[string]bool{}
	alert := regexp.MustCompile(`^\s*- alert: (\w+)`)
	forLine := regexp.MustCompile(`^(\s*)for: (\S+)$`)
	cur := ""
	lines := strings.Split(string(b), "\n")
	for i, l := range lines {
		if m := alert.FindStringSubmatch(l); m != nil {
			cur = m[1]
		}
		if m := forLine.FindStringSubmatch(l); m != nil {
			d, err := time.ParseDuration(m[2])
			if err != nil {
				t.Fatalf("rule %s: for %q: %v", cur, m[2], err)
			}
			pending[cur] = d > 0
			lines[i] = fmt.Sprintf("%sfor: %s", m[1], min(d, maxFor))
		}
	}
	return strings.Join(lines, "\n"), pending
}

// alert is one entry of Prometheus' /api/v1/alerts.
type alert struct {
	Labels map[string]string `json:"labels"`
	State  string            `json:"state"`
}

func (a alert) String() string {
	var ls []string
	for k, v := range a.Labels {
		if k != "alertname" && k != "severity" && k != "job" {
			ls = append(ls, k+"="+v)
		}
	}
	return fmt.Sprintf("%s{%s} %s", a.Labels["alertname"], strings.Join(ls, ","), a.State)
}

type prom struct {
	c *http.Client
}

func (p *prom) get(path string, v any) error {
	resp, err := p.c.Get("http://" + promAddr + path)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	var env struct {
		Status string          `json:"status"`
		Data   json.RawMessage `json:"data"`
		Error  string          `json:"error"`
	}
	if err := json.NewDecoder(resp.Body).Decode(&env); err != nil {
		return fmt.Errorf("%s: %w", path, err)
	}
	if env.Status != "success" {
		return fmt.Errorf("%s: %s", path, env.Error)
	}
	return json.Unmarshal(env.Data, v)
}

func (p *prom) alerts() ([]alert, error) {
	var d struct {
		Alerts []alert `json:"alerts"`
	}
	err := p.get("/api/v1/alerts", &d)
	return d.Alerts, err
}

// query returns the number of series an instant query gives.
func (p *prom) query(q string) (int, error) {
	var d struct {
		Result []json.RawMessage `json:"result"`
	}
	err := p.get("/api/v1/query?query="+url.QueryEscape(q), &d)
	return len(d.Result), err
}

// want is an alert the test waits for: its name and labels it must have.
type want struct {
	name   string
	labels map[string]string
}

func (w want) String() string { return fmt.Sprintf("%s%v", w.name, w.labels) }

func (w want) match(a alert) bool {
	if a.Labels["alertname"] != w.name {
		return false
	}
	for k, v := range w.labels {
		if a.Labels[k] != v {
			return false
		}
	}
	return true
}

// watcher polls the alerts and remembers the states each wanted alert
// went through.
type watcher struct {
	t       *testing.T
	p       *prom
	pending map[string]bool // alerts with a "for": pending before firing
	// never are alerts that must not fire while they are listed.
	never []want
	mu    sync.Mutex
	last  []alert
}

// poll reads the alerts once and fails the test if a never-alert fires.
func (w *watcher) poll() []alert {
	as, err := w.p.alerts()
	if err != nil {
		w.t.Logf("alerts: %v", err)
		return nil
	}
	for _, n := range w.never {
		for _, a := range as {
			if n.match(a) && a.State == "firing" {
				w.t.Errorf("negative control: %s fired: %v", n, a)
			}
		}
	}
	w.mu.Lock()
	w.last = as
	w.mu.Unlock()
	return as
}

// fire waits until every wanted alert fires, having been pending first if
// its rule has a "for".
func (w *watcher) fire(timeout time.Duration, ws ...want) {
	w.t.Helper()
	start := time.Now()
	seenPending := map[int]bool{}
	fired := map[int]time.Duration{}
	for time.Since(start) < timeout && len(fired) < len(ws) {
		as := w.poll()
		for i, x := range ws {
			for _, a := range as {
				if !x.match(a) {
					continue
				}
				switch a.State {
				case "pending":
					seenPending[i] = true
				case "firing":
					if _, ok := fired[i]; !ok {
						fired[i] = time.Since(start)
						if w.pending[x.name] && !seenPending[i] {
							w.t.Errorf("%s fired without being pending first", x)
						}
						w.t.Logf("%6.1fs firing  %s (pending seen: %v)", fired[i].Seconds(), x, seenPending[i])
					}
				}
			}
		}
		time.Sleep(200 * time.Millisecond)
	}
	for i, x := range ws {
		if _, ok := fired[i]; !ok {
			w.t.Errorf("%s did not fire within %s; alerts: %v", x, timeout, w.last)
		}
	}
}

// clear waits until none of the alerts is pending or firing.
func (w *watcher) clear(timeout time.Duration, ws ...want) {
	w.t.Helper()
	start := time.Now()
	for time.Since(start) < timeout {
		active := 0
		for _, a := range w.poll() {
			for _, x := range ws {
				if x.match(a) {
					active++
				}
			}
		}
		if active == 0 {
			w.t.Logf("%6.1fs cleared %v", time.Since(start).Seconds(), ws)
			return
		}
		time.Sleep(200 * time.Millisecond)
	}
	w.t.Errorf("still active after %s: %v (alerts: %v)", timeout, ws, w.last)
}

// forge sends VRRP packets from e as a third router on the link would.
func forge(t *testing.T, e *netns.Node, payloads [][]byte) {
	t.Helper()
	err := e.Do(func() error {
		c, err := net.ListenPacket("ip4:112", "0.0.0.0")
		if err != nil {
			return err
		}
		defer c.Close()
		rc, err := ipv4.NewRawConn(c)
		if err != nil {
			return err
		}
		ifi, err := net.InterfaceByName("eth0")
		if err != nil {
			return err
		}
		if err := rc.SetMulticastInterface(ifi); err != nil {
			return err
		}
		for _, p := range payloads {
			h := &ipv4.Header{Version: 4, Len: 20, TOS: 0xc0, TotalLen: 20 + len(p), TTL: 255, Protocol: vrrp.Protocol,
				Src: addrE.Addr().AsSlice(), Dst: vrrp.Group.AsSlice()}
			if err := rc.WriteTo(h, p, nil); err != nil {
				return err
			}
		}
		return nil
	})
	if err != nil {
		t.Fatalf("forge: %v", err)
	}
}

// forged returns n adverts for our VRID announcing another router's
// address (vip_mismatch) and n with a broken checksum.
func forged(t *testing.T, n int) [][]byte {
	t.Helper()
	var out [][]byte
	for _, bad := range []bool{false, true} {
		ad := &vrrp.Advert{Version: 3, Type: 1, VRID: vrid, Priority: 200, MaxAdvertInterval: 50, Addrs: []netip.Addr{foreign}}
		if bad {
			ad.Addrs = []netip.Addr{vip.Addr()}
		}
		b, err := ad.Marshal(vrrp.ChecksumPseudoHeader, addrE.Addr(), vrrp.Group)
		if err != nil {
			t.Fatal(err)
		}
		if bad {
			b[6] ^= 0x55
		}
		for range n {
			out = append(out, b)
		}
	}
	return out
}

func TestAlertsInRealPrometheus(t *testing.T) {
	if testing.Short() {
		testutil.Unavailable(t, "needs root, network namespaces and Prometheus (not with -short)")
	}
	testutil.NeedRoot(t)
	promBin, err := exec.LookPath("prometheus")
	if err != nil {
		testutil.Unavailable(t, "prometheus not found (Debian package prometheus)")
	}
	bin := testutil.LvshaBinary(t)
	dir := t.TempDir()
	l, err := netns.NewLab(netns.UniquePrefix("lvm"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { l.Close() })
	nodes := map[string]*netns.Node{}
	for _, n := range []struct {
		role string
		addr netip.Prefix
	}{{"a", addrA}, {"b", addrB}, {"r1", addrR1}, {"r2", addrR2}, {"e", addrE}} {
		if nodes[n.role], err = l.AddNode(n.role, n.addr); err != nil {
			t.Fatal(err)
		}
	}
	promNS, err := netns.New(l.Prefix + "prom")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { promNS.Close() })

	// Real servers.
	servers := map[string]*http.Server{}
	startServer := func(role string, addr netip.Prefix) {
		srv, err := lab.ServeText(nodes[role].NS, netip.AddrPortFrom(addr.Addr(), 80), role+"\n")
		if err != nil {
			t.Fatal(err)
		}
		servers[role] = srv
	}
	startServer("r1", addrR1)
	startServer("r2", addrR2)
	t.Cleanup(func() {
		for _, s := range servers {
			s.Close()
		}
	})

	// Prometheus first, so that it sees every transition of the directors.
	rules, pending := rulesForTest(t)
	if err := os.WriteFile(filepath.Join(dir, "rules.yml"), []byte(rules), 0o644); err != nil {
		t.Fatal(err)
	}
	promConf := fmt.Sprintf(`global:
  scrape_interval: 1s
  scrape_timeout: 900ms
  evaluation_interval: 1s
rule_files: [%q]
scrape_configs:
  - job_name: lvsha
    static_configs:
      - targets: ["127.0.0.1:19101"]
        labels: {instance: a}
      - targets: ["127.0.0.1:19102"]
        labels: {instance: b}
`, filepath.Join(dir, "rules.yml"))
	if err := os.WriteFile(filepath.Join(dir, "prometheus.yml"), []byte(promConf), 0o644); err != nil {
		t.Fatal(err)
	}
	promLog := filepath.Join(dir, "prometheus.log")
	lf, err := os.Create(promLog)
	if err != nil {
		t.Fatal(err)
	}
	defer lf.Close()
	pc := exec.Command(promBin, "--config.file="+filepath.Join(dir, "prometheus.yml"),
		"--storage.tsdb.path="+filepath.Join(dir, "tsdb"), "--web.listen-address="+promAddr)
	pc.Stdout, pc.Stderr = lf, lf
	if err := promNS.Start(pc); err != nil {
		t.Fatal(err)
	}
	pdone := make(chan struct{})
	go func() { _ = pc.Wait(); close(pdone) }()
	t.Cleanup(func() {
		_ = pc.Process.Signal(syscall.SIGTERM)
		<-pdone
		if t.Failed() {
			b, _ := os.ReadFile(promLog)
			t.Logf("prometheus log:\n%s", b)
		}
	})
	proxy(t, promNS, "127.0.0.1:19101", nodes["a"].NS, fmt.Sprintf("127.0.0.1:%d", metricsPort))
	proxy(t, promNS, "127.0.0.1:19102", nodes["b"].NS, fmt.Sprintf("127.0.0.1:%d", metricsPort))

	// Directors.
	ds := map[string]*director{}
	for _, x := range []struct {
		name string
		prio int
	}{{"a", 150}, {"b", 100}} {
		d := &director{name: x.name, node: nodes[x.name], conf: filepath.Join(dir, x.name+".toml"), sock: filepath.Join(dir, x.name+".sock")}
		d.valid = directorConf(x.name, d.sock, filepath.Join(dir, x.name+"-state"), x.prio)
		if err := os.WriteFile(d.conf, []byte(d.valid), 0o600); err != nil {
			t.Fatal(err)
		}
		logPath := filepath.Join(dir, x.name+".log")
		dl, err := os.Create(logPath)
		if err != nil {
			t.Fatal(err)
		}
		defer dl.Close()
		d.cmd = exec.Command(bin, "-f", d.conf)
		d.cmd.Stdout, d.cmd.Stderr = dl, dl
		d.cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
		if err := d.node.Start(d.cmd); err != nil {
			t.Fatal(err)
		}
		d.done = make(chan struct{})
		go func() { _ = d.cmd.Wait(); close(d.done) }()
		t.Cleanup(func() {
			_ = d.cmd.Process.Signal(syscall.SIGTERM)
			select {
			case <-d.done:
			case <-time.After(10 * time.Second):
				_ = syscall.Kill(-d.cmd.Process.Pid, syscall.SIGKILL)
				<-d.done
			}
			if t.Failed() {
				b, _ := os.ReadFile(logPath)
				t.Logf("director %s log:\n%s", d.name, b)
			}
		})
		ds[x.name] = d
	}

	p := &prom{c: lab.HTTPClient(promNS, false)}
	w := &watcher{t: t, p: p, pending: pending}
	// Both directors scraped, a MASTER, both real servers up.
	if !netns.WaitFor(30*time.Second, 250*time.Millisecond, func() bool {
		n1, err1 := p.query(`up{job="lvsha"} == 1`)
		n2, err2 := p.query(`lvsha_vrrp_state{instance="a",state="MASTER"} == 1`)
		n3, err3 := p.query(`lvsha_realserver_up == 1`)
		return err1 == nil && err2 == nil && err3 == nil && n1 == 2 && n2 == 1 && n3 == 4
	}) {
		t.Fatalf("directors not scraped, or a not MASTER, within 30 s; alerts %v", w.poll())
	}
	t.Logf("pair up: a MASTER, b BACKUP, scraped every second")
	// IPVS does not exist on this host's kernel (see DESIGN.md): the
	// daemons run VRRP and health checks and retry IPVS, which is what
	// LvshaIPVSFailing is for. It fires here for real.
	w.fire(20*time.Second, want{"LvshaIPVSFailing", map[string]string{"instance": "a"}})

	// 1. A split brain (b hears no adverts but keeps its link), a real
	// server down (and the service below its quorum of 2), a rejected
	// reload, a killed checker process, forged adverts. Meanwhile there is
	// always a master: LvshaVRRPNoMaster must not fire.
	w.never = []want{{"LvshaVRRPNoMaster", nil}}
	st, err := control.QueryStatus(context.Background(), ds["a"].sock)
	if err != nil || st.Checker == nil || st.Checker.Pid == 0 {
		t.Fatalf("status of a: %v %+v", err, st)
	}
	if err := l.Isolate("b", true); err != nil {
		t.Fatal(err)
	}
	servers["r1"].Close()
	ds["a"].reload(t, "[[vrrp_instance]]\nname = 1\n")
	if err := syscall.Kill(st.Checker.Pid, syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	forge(t, nodes["e"], forged(t, 10))
	r1 := addrR1.Addr().String() + ":80"
	phase1 := []want{
		{"LvshaVRRPSplitBrain", map[string]string{"vrrp_instance": "VI_1"}},
		{"LvshaRealServerDown", map[string]string{"instance": "a", "real_server": r1}},
		{"LvshaServiceBelowQuorum", map[string]string{"instance": "a"}},
		{"LvshaConfigReloadFailed", map[string]string{"instance": "a"}},
		{"LvshaCheckerRestarting", map[string]string{"instance": "a"}},
		{"LvshaVRRPForeignRouter", map[string]string{"instance": "a", "reason": "vip_mismatch"}},
		{"LvshaVRRPAdvertsDropped", map[string]string{"instance": "a", "reason": "checksum"}},
	}
	w.fire(30*time.Second, phase1...)

	// The faults clear; so do their alerts (the counters' alerts look back
	// 5 to 15 minutes and are left to their windows).
	if err := l.Isolate("b", false); err != nil {
		t.Fatal(err)
	}
	startServer("r1", addrR1)
	ds["a"].reload(t, ds["a"].valid)
	w.clear(30*time.Second, phase1[:4]...)

	// 2. The master's link goes down: b takes over within
	// Master_Down_Interval, a is FAULT. A failover is no "no master": the
	// negative control above still holds.
	if err := l.SetPort("a", false); err != nil {
		t.Fatal(err)
	}
	w.fire(30*time.Second, want{"LvshaVRRPFault", map[string]string{"instance": "a", "state": "FAULT"}})
	if !netns.WaitFor(10*time.Second, 200*time.Millisecond, func() bool {
		w.poll()
		n, err := p.query(`lvsha_vrrp_state{instance="b",state="MASTER"} == 1`)
		return err == nil && n == 1
	}) {
		t.Errorf("b is not MASTER 10 s after a's link went down")
	}
	// Long enough after the takeover for a wrong threshold to have fired.
	for range 15 {
		w.poll()
		time.Sleep(200 * time.Millisecond)
	}

	// 3. b's link goes down too: no master.
	w.never = nil
	if err := l.SetPort("b", false); err != nil {
		t.Fatal(err)
	}
	w.fire(30*time.Second, want{"LvshaVRRPNoMaster", map[string]string{"vrrp_instance": "VI_1"}})

	// Links back: a master again, the alerts clear.
	for _, r := range []string{"a", "b"} {
		if err := l.SetPort(r, true); err != nil {
			t.Fatal(err)
		}
	}
	w.clear(30*time.Second, want{"LvshaVRRPNoMaster", nil}, want{"LvshaVRRPFault", nil}, want{"LvshaVRRPSplitBrain", nil})
	// b went MASTER, BACKUP, MASTER, FAULT, BACKUP since Prometheus first
	// saw it: more than 4 transitions in an hour.
	w.fire(10*time.Second, want{"LvshaVRRPFlapping", map[string]string{"instance": "b"}})
}
