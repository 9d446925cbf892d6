package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"net/http"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/lvsha/lvsha/internal/director/control"
	"github.com/lvsha/lvsha/internal/testenv/netns"
	"github.com/lvsha/lvsha/lvs/atomicfile"
	"github.com/lvsha/lvsha/vrrp"
	"golang.org/x/net/ipv4"
)

// The lab: directors a (priority 150) and b (100), real servers r1 and r2
// (HTTP on :80), client c and a forger e, all on one bridge.
var (
	vip     = netip.MustParsePrefix("10.99.0.100/24")
	addrA   = netip.MustParsePrefix("10.99.0.2/24")
	addrB   = netip.MustParsePrefix("10.99.0.3/24")
	addrC   = netip.MustParsePrefix("10.99.0.10/24")
	addrR1  = netip.MustParsePrefix("10.99.0.21/24")
	addrR2  = netip.MustParsePrefix("10.99.0.22/24")
	addrE   = netip.MustParsePrefix("10.99.0.66/24")
	foreign = netip.MustParseAddr("10.99.0.200") // the colliding router's address
)

// Timers of the directors. The check timers make the health bound
// (fall x interval + timeout) 1.3 s.
const (
	advertInterval = 100 * time.Millisecond
	checkInterval  = 500 * time.Millisecond
	checkTimeout   = 300 * time.Millisecond
	checkFall      = 2
	vrid           = 51
)

// director is one lvsha daemon, restarted by the harness as systemd would.
type director struct {
	name string
	node *netns.Node
	prio int
	bin  string
	conf string
	sock string
	log  string

	mu    sync.Mutex
	cmd   *exec.Cmd
	done  chan struct{}
	alive bool
	inc   int       // incarnation, from 1
	ready time.Time // when this incarnation's control socket first answered
	// epoch changes whenever a fault touches this director (kill, link,
	// interface, reload): counters read across a change cannot be compared.
	epoch int
	// busy: a fault on this director is in progress or it has not
	// settled since.
	busy bool
	// garpRepeat is what the valid reload edits (applied in place).
	garpRepeat int
}

func (d *director) toml() string {
	return fmt.Sprintf(`[global]
router_id = %q
log_level = "info"
control_socket = %q
state_dir = %q

[[vrrp_instance]]
name = "VI_1"
interface = "eth0"
virtual_router_id = %d
priority = %d
advert_interval = %q
version = 3
virtual_ipaddress = [%q]
garp_master_repeat = %d

[[virtual_server]]
address = "%s:80"
protocol = "tcp"
scheduler = "rr"
forwarding = "dr"

[virtual_server.check]
type = "http"
path = "/"
interval = %q
timeout = %q
fall = %d
rise = 1

[[virtual_server.real_server]]
address = "%s:80"
weight = 1

[[virtual_server.real_server]]
address = "%s:80"
weight = 1
`, d.name, d.sock, filepath.Join(filepath.Dir(d.sock), d.name+"-state"), vrid, d.prio, advertInterval.String(), vip.String(), d.garpRepeat,
		vip.Addr(), checkInterval.String(), checkTimeout.String(), checkFall, addrR1.Addr(), addrR2.Addr())
}

func (d *director) writeConf(body string) error {
	if err := atomicfile.Write(d.conf, []byte(body), 0o600); err != nil {
		return fmt.Errorf("director %s: %w", d.name, err)
	}
	return nil
}

// start runs a new incarnation and waits until its control socket answers.
func (d *director) start() error {
	if err := d.writeConf(d.toml()); err != nil {
		return err
	}
	lf, err := os.OpenFile(d.log, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		return fmt.Errorf("director %s: log: %w", d.name, err)
	}
	defer lf.Close()
	cmd := exec.Command(d.bin, "-f", d.conf)
	cmd.Stdout, cmd.Stderr = lf, lf
	// Its own process group: a kill takes the checker child with it, as
	// systemd's KillMode=control-group does.
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	if err := d.node.Start(cmd); err != nil {
		return fmt.Errorf("director %s: start: %w", d.name, err)
	}
	done := make(chan struct{})
	go func() { _ = cmd.Wait(); close(done) }()
	d.mu.Lock()
	d.cmd, d.done, d.alive = cmd, done, true
	d.inc++
	d.epoch++
	d.ready = time.Time{}
	d.mu.Unlock()
	if !netns.WaitFor(10*time.Second, 10*time.Millisecond, func() bool {
		_, err := d.status(context.Background())
		return err == nil
	}) {
		return fmt.Errorf("director %s: control socket does not answer 10 s after start (log %s)", d.name, d.log)
	}
	d.mu.Lock()
	d.ready = time.Now()
	d.mu.Unlock()
	return nil
}

// kill sends SIGKILL to the daemon's process group and reaps it.
func (d *director) kill() {
	d.mu.Lock()
	cmd, done := d.cmd, d.done
	d.alive = false
	d.epoch++
	d.mu.Unlock()
	if cmd == nil {
		return
	}
	_ = syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL)
	<-done
}

func (d *director) signal(sig syscall.Signal) error {
	d.mu.Lock()
	cmd := d.cmd
	d.mu.Unlock()
	if err := cmd.Process.Signal(sig); err != nil {
		return fmt.Errorf("director %s: %v: %w", d.name, sig, err)
	}
	return nil
}

func (d *director) bump() {
	d.mu.Lock()
	d.epoch++
	d.mu.Unlock()
}

func (d *director) setBusy(b bool) {
	d.mu.Lock()
	d.busy = b
	d.epoch++
	d.mu.Unlock()
}

// snapshot is what the harness knows of the director at one moment.
type snapshot struct {
	alive bool
	pid   int
	inc   int
	ready time.Time
	epoch int
	// busy: a fault on this director is in progress or it has not
	// settled since.
	busy bool
}

func (d *director) snap() snapshot {
	d.mu.Lock()
	defer d.mu.Unlock()
	s := snapshot{alive: d.alive, inc: d.inc, ready: d.ready, epoch: d.epoch, busy: d.busy}
	if d.cmd != nil && d.alive {
		s.pid = d.cmd.Process.Pid
	}
	return s
}

// status is the part of `lvsha status --json` the soak reads.
type status struct {
	VRRP []struct {
		State       string            `json:"state"`
		Transitions uint64            `json:"transitions"`
		Dropped     map[string]uint64 `json:"dropped"`
		SendErrors  uint64            `json:"send_errors"`
	} `json:"vrrp"`
	Services []struct {
		Reals []struct {
			Address    string    `json:"address"`
			Health     string    `json:"health"`
			LastResult string    `json:"last_result"`
			LastCheck  time.Time `json:"last_check"`
			Checks     uint64    `json:"checks"`
		} `json:"reals"`
	} `json:"services"`
	Checker *struct {
		Pid      int    `json:"pid"`
		Restarts uint64 `json:"restarts"`
	} `json:"checker"`
}

func (s *status) state() string {
	if len(s.VRRP) == 0 {
		return ""
	}
	return s.VRRP[0].State
}

func (s *status) health(addr string) string {
	for _, sv := range s.Services {
		for _, r := range sv.Reals {
			if r.Address == addr {
				return r.Health
			}
		}
	}
	return ""
}

// checks describes what the checker did for a real server, for a violation.
func (s *status) checks(addr string, rel func(time.Time) string) string {
	pid, restarts := 0, uint64(0)
	if s.Checker != nil {
		pid, restarts = s.Checker.Pid, s.Checker.Restarts
	}
	for _, sv := range s.Services {
		for _, r := range sv.Reals {
			if r.Address == addr {
				return fmt.Sprintf("checker pid %d (%d restarts), %d checks, last at %s: %q", pid, restarts, r.Checks, rel(r.LastCheck), r.LastResult)
			}
		}
	}
	return "not in status"
}

func (d *director) client() *http.Client {
	c := control.Client(d.sock)
	c.Timeout = 2 * time.Second
	// A connection kept to a killed incarnation would fail the next ask.
	c.Transport.(*http.Transport).DisableKeepAlives = true
	return c
}

// status reads the daemon's status over its control socket (what `lvsha
// status --json` prints).
func (d *director) status(ctx context.Context) (*status, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, "http://lvsha/v1/status", nil)
	if err != nil {
		return nil, err
	}
	resp, err := d.client().Do(req)
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	var st status
	if err := json.NewDecoder(resp.Body).Decode(&st); err != nil {
		return nil, fmt.Errorf("director %s: status: %w", d.name, err)
	}
	return &st, nil
}

// resources are the process's file descriptors, goroutines and RSS.
type resources struct {
	at         time.Time
	fds, gs    int
	rssKiB     int
	inc        int
	faultsSeen int // faults injected so far in the run
}

func (d *director) resources() (resources, error) {
	s := d.snap()
	if !s.alive {
		return resources{}, errors.New("not running")
	}
	r := resources{at: time.Now(), inc: s.inc}
	fds, err := os.ReadDir(fmt.Sprintf("/proc/%d/fd", s.pid))
	if err != nil {
		return r, err
	}
	r.fds = len(fds)
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", s.pid))
	if err != nil {
		return r, err
	}
	for _, l := range strings.Split(string(b), "\n") {
		if f := strings.Fields(l); len(f) >= 2 && f[0] == "VmRSS:" {
			r.rssKiB, _ = strconv.Atoi(f[1])
		}
	}
	resp, err := d.client().Get("http://lvsha/debug/pprof/goroutine?debug=1")
	if err != nil {
		return r, err
	}
	defer resp.Body.Close()
	if _, err := fmt.Fscanf(resp.Body, "goroutine profile: total %d", &r.gs); err != nil {
		return r, fmt.Errorf("goroutine profile: %w", err)
	}
	// The incarnation may have changed while we read.
	if d.snap().inc != s.inc {
		return r, errors.New("restarted while sampling")
	}
	return r, nil
}

// realServer is an HTTP server on :80 in a namespace, stopped and started
// by closing and reopening its listener.
type realServer struct {
	name string
	addr netip.Addr
	node *netns.Node
	mu   sync.Mutex
	srv  *http.Server
	// stoppedAt is when it last stopped (zero while it runs).
	stoppedAt time.Time
}

func (r *realServer) start() error {
	var ln net.Listener
	if err := r.node.Do(func() (err error) {
		ln, err = net.Listen("tcp", net.JoinHostPort(r.addr.String(), "80"))
		return err
	}); err != nil {
		return fmt.Errorf("real server %s: listen: %w", r.name, err)
	}
	srv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
		fmt.Fprintln(w, r.name)
	}), ReadHeaderTimeout: 5 * time.Second}
	go func() { _ = srv.Serve(ln) }()
	r.mu.Lock()
	r.srv, r.stoppedAt = srv, time.Time{}
	r.mu.Unlock()
	return nil
}

func (r *realServer) stop() {
	r.mu.Lock()
	srv := r.srv
	r.srv = nil
	r.mu.Unlock()
	if srv != nil {
		_ = srv.Close()
	}
	r.mu.Lock()
	r.stoppedAt = time.Now()
	r.mu.Unlock()
}

func (r *realServer) stopped() time.Time {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.stoppedAt
}

// forge sends raw VRRP packets from node with full control of the IP
// header (TTL), as a third host on the link would.
func forge(node *netns.Node, ttl int, payloads [][]byte) error {
	return node.Do(func() error {
		c, err := net.ListenPacket("ip4:112", "0.0.0.0")
		if err != nil {
			return fmt.Errorf("forge: %w", err)
		}
		defer c.Close()
		rc, err := ipv4.NewRawConn(c)
		if err != nil {
			return fmt.Errorf("forge: %w", err)
		}
		ifi, err := net.InterfaceByName("eth0")
		if err != nil {
			return fmt.Errorf("forge: %w", err)
		}
		if err := rc.SetMulticastInterface(ifi); err != nil {
			return fmt.Errorf("forge: %w", err)
		}
		for _, p := range payloads {
			h := &ipv4.Header{Version: 4, Len: 20, TOS: 0xc0, TotalLen: 20 + len(p), TTL: ttl, Protocol: vrrp.Protocol,
				Src: addrE.Addr().AsSlice(), Dst: vrrp.Group.AsSlice()}
			if err := rc.WriteTo(h, p, nil); err != nil {
				return fmt.Errorf("forge: send: %w", err)
			}
		}
		return nil
	})
}

// forgedAdvert builds one bad advert of the given drop reason: what the
// directors must drop and count under that reason.
func forgedAdvert(reason string) (ttl int, b []byte, err error) {
	ad := &vrrp.Advert{Version: 3, Type: 1, VRID: vrid, Priority: 254, MaxAdvertInterval: 10,
		Addrs: []netip.Addr{vip.Addr()}}
	ttl = 255
	switch reason {
	case "vip_mismatch":
		// A neighbour cluster that reused our VRID, priority 200.
		ad.Priority, ad.Addrs = 200, []netip.Addr{foreign}
	case "version":
		ad.Version, ad.MaxAdvertInterval, ad.AdvertInterval = 2, 0, 1
	}
	b, err = ad.Marshal(vrrp.ChecksumPseudoHeader, addrE.Addr(), vrrp.Group)
	if err != nil {
		return 0, nil, err
	}
	switch reason {
	case "ttl":
		ttl = 64
	case "checksum":
		b[6] ^= 0x55
	case "length":
		b = b[:6]
	}
	return ttl, b, nil
}

func newDirector(bin, dir, name string, node *netns.Node, prio int) *director {
	return &director{name: name, node: node, prio: prio, bin: bin, garpRepeat: 5,
		conf: filepath.Join(dir, name+".toml"), sock: filepath.Join(dir, name+".sock"), log: filepath.Join(dir, name+".log")}
}
