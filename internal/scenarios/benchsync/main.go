// Command benchsync is `make bench-sync`: IPVS connection sync under load,
// lvsha beside keepalived 2.2.7 (lvs_sync_daemon) in the same VM run. Each
// gets a fresh copy of the connsync topology (two directors, DR round robin
// over two webs, a client), N established connections through the VIP,
// each sending one line (the packet that makes the kernel sync it) and then
// idle; then the master is SIGKILLed and unplugged, and later started and
// plugged in again, and it preempts. It prints, for each: the time from a
// connection being established to its entry being on the backup, and the
// share of connections that answer with the same real server after the
// failover and after the failback. Not a test: it prints numbers.
//
//	go run ./internal/scenarios/benchsync [-lvsha PATH] [-n 10000]
package main

import (
	"bufio"
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/lvsha/lvsha/internal/scenarios/connsync"
	"github.com/lvsha/lvsha/internal/scenarios/e2e"
	"github.com/lvsha/lvsha/internal/testenv/lab"
	"github.com/lvsha/lvsha/internal/testenv/vm"
)

const guestKeepalived = "/usr/sbin/keepalived"

// pollEvery is how often the backup's connection table is read: the
// resolution of the time-to-entry column.
const pollEvery = 200 * time.Millisecond

func main() {
	n := flag.Int("n", 10000, "established connections")
	lvsha := flag.String("lvsha", "", "static lvsha binary (default: build one from this checkout)")
	keepalivedFirst := flag.Bool("keepalived-first", false, "measure keepalived first (the machine's load drifts over a run)")
	flag.Parse()
	var err error
	if vm.InGuest() {
		err = guest(*n, *keepalivedFirst)
	} else {
		err = host(*n, *lvsha, *keepalivedFirst)
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, "benchsync:", err)
		os.Exit(1)
	}
}

func host(n int, lvsha string, keepalivedFirst bool) error {
	ctx := context.Background()
	tmp, err := os.MkdirTemp("", "benchsync-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(tmp)
	lvsha, bin, err := e2e.HostBinaries(ctx, tmp, lvsha, "github.com/lvsha/lvsha/internal/scenarios/benchsync")
	if err != nil {
		return err
	}
	files, err := vm.WithLibs("keepalived")
	if err != nil {
		return fmt.Errorf("keepalived (apt-get install keepalived): %w", err)
	}
	files[connsync.GuestLvsha] = lvsha
	res, err := vm.Run(ctx, vm.Options{
		Binary: bin, Files: files, Console: vm.GuestOutput(os.Stdout, "Keepalived"),
		Logger: slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelWarn})),
		CPUs:   2, MemoryMB: 2048, Timeout: 45 * time.Minute, Args: []string{"-n", strconv.Itoa(n), "-keepalived-first=" + strconv.FormatBool(keepalivedFirst)},
	})
	if err != nil {
		return err
	}
	if res.ExitCode != 0 {
		return fmt.Errorf("the run in the VM failed (exit %d)", res.ExitCode)
	}
	return nil
}

// result is one tool's row.
type result struct {
	name              string
	n                 int
	entry             []time.Duration // per connection seen on the backup
	missing           int             // never seen on the backup
	failover, failbck int             // connections answering after each
	redials           int             // dials that timed out and were retried
	failoverWhy       map[string]int  // failures by kind
	failbckWhy        map[string]int
}

// pingTimeout bounds one echo after a failover: long, since 500 at a time
// through an emulated CPU shared with other work can take seconds, and a
// slow echo is not a lost connection (a reset comes at once).
const pingTimeout = 20 * time.Second

func guest(n int, keepalivedFirst bool) error {
	// A client and two web servers of n connections each in this process.
	lim := uint64(4*n + 1024)
	_ = syscall.Setrlimit(syscall.RLIMIT_NOFILE, &syscall.Rlimit{Cur: lim, Max: lim})
	tools := []string{"lvsha", "keepalived"}
	if keepalivedFirst {
		tools = []string{"keepalived", "lvsha"}
	}
	rows := make([]result, 2)
	for _, tool := range tools {
		r, err := run(tool, n)
		if err != nil {
			return fmt.Errorf("%s: %w", tool, err)
		}
		rows[slices.Index([]string{"lvsha", "keepalived"}, tool)] = r // lvsha's column first
	}
	printTable(os.Stdout, rows)
	return nil
}

func say(format string, args ...any) {
	fmt.Printf("%s "+format+"\n", append([]any{time.Now().Format("15:04:05.000")}, args...)...)
}

type conn struct {
	c      net.Conn
	r      *bufio.Reader
	local  netip.AddrPort
	est    time.Time // connect returned
	server string
}

func run(tool string, n int) (result, error) {
	ctx := context.Background()
	r := result{name: tool, n: n}
	o := connsync.Options{Sync: true, WorkDir: "/tmp/benchsync-" + tool}
	if tool == "keepalived" {
		o.Keepalived = guestKeepalived
		r.name = keepalivedVersion()
	}
	topo, err := connsync.New(tool[:1], o)
	if err != nil {
		return r, err
	}
	defer topo.Close()
	say("%s: starting director1 and director2", r.name)
	if err := topo.D1.Start(); err != nil {
		return r, err
	}
	if err := topo.D2.Start(); err != nil {
		return r, err
	}
	if err := roles(ctx, topo, topo.D1, topo.D2); err != nil {
		return r, err
	}
	// keepalived starts its master daemon at the MASTER transition, lvsha
	// too; give both a moment beyond it.
	time.Sleep(2 * time.Second)

	// Poll the backup's table while the connections open.
	seen := map[uint16]time.Time{}
	var seenMu sync.Mutex
	stopPoll := make(chan struct{})
	pollDone := make(chan struct{})
	go func() {
		defer close(pollDone)
		for {
			es, err := lab.IPVSConns(topo.D2.Node.NS)
			now := time.Now()
			if err == nil {
				seenMu.Lock()
				for _, e := range es {
					if e.Client.Addr() == lab.Client.Addr() && !e.Template {
						if _, ok := seen[e.Client.Port()]; !ok {
							seen[e.Client.Port()] = now
						}
					}
				}
				seenMu.Unlock()
			}
			select {
			case <-stopPoll:
				return
			case <-time.After(pollEvery):
			}
		}
	}()

	say("%s: opening %d connections through the VIP", r.name, n)
	conns := make([]*conn, 0, n)
	err = topo.Client.Do(func() error {
		for i := range n {
			// A busy emulated CPU sometimes loses a SYN for longer than
			// its retries: dial again (this measures sync, not dialling).
			var c net.Conn
			var err error
			for try := 0; try < 3; try++ {
				d := net.Dialer{Timeout: 10 * time.Second}
				if c, err = d.DialContext(ctx, "tcp", netip.AddrPortFrom(lab.VIP, connsync.Port).String()); err == nil {
					break
				}
				r.redials++
			}
			if err != nil {
				return fmt.Errorf("connection %d: %w", i, err)
			}
			if i > 0 && i%1000 == 0 {
				say("%s: %d connections", r.name, i)
			}
			k := &conn{c: c, r: bufio.NewReaderSize(c, 64), local: c.LocalAddr().(*net.TCPAddr).AddrPort(), est: time.Now()}
			if _, err := io.WriteString(c, "0\n"); err != nil {
				return fmt.Errorf("connection %d: %w", i, err)
			}
			conns = append(conns, k)
		}
		return nil
	})
	defer func() {
		for _, k := range conns {
			_ = k.c.Close()
		}
	}()
	if err != nil {
		return r, err
	}
	// The first echo names each connection's real server.
	// One that does not answer (the busy VM) is left out of every count.
	r.n = pingAll(conns, "0", true, 30*time.Second)
	conns = slices.DeleteFunc(conns, func(k *conn) bool {
		if k.server == "" {
			_ = k.c.Close()
			return true
		}
		return false
	})
	if r.n < n*99/100 {
		return r, fmt.Errorf("only %d of %d connections answered", r.n, n)
	}
	say("%s: %d connections established and answering; waiting for their entries on director2", r.name, r.n)
	deadline := time.Now().Add(30 * time.Second)
	for time.Now().Before(deadline) {
		seenMu.Lock()
		got := len(seen)
		seenMu.Unlock()
		if got >= r.n {
			break
		}
		time.Sleep(pollEvery)
	}
	close(stopPoll)
	<-pollDone
	for _, k := range conns {
		if t, ok := seen[k.local.Port()]; ok {
			r.entry = append(r.entry, max(t.Sub(k.est), 0))
		} else {
			r.missing++
		}
	}
	say("%s: %d of %d entries on director2", r.name, r.n-r.missing, r.n)

	say("%s: SIGKILL director1 and pull its cable", r.name)
	topo.D1.Kill()
	if err := topo.Plug("director1", false); err != nil {
		return r, err
	}
	if err := waitVIP(topo.D2, true); err != nil {
		return r, err
	}
	time.Sleep(time.Second) // director2's gratuitous ARPs reach the client
	r.failover, r.failoverWhy = pingAllWhy(conns, "1", false, pingTimeout)
	say("%s: %d of %d connections answer through director2 (failed: %v)", r.name, r.failover, r.n, r.failoverWhy)

	say("%s: director1 back (cable, start); it preempts", r.name)
	if err := topo.Plug("director1", true); err != nil {
		return r, err
	}
	if err := topo.D1.Start(); err != nil {
		return r, err
	}
	if err := roles(ctx, topo, topo.D1, topo.D2); err != nil {
		return r, err
	}
	time.Sleep(time.Second)
	r.failbck, r.failbckWhy = pingAllWhy(conns, "2", false, pingTimeout)
	say("%s: %d of %d connections answer after the failback (failed: %v)", r.name, r.failbck, r.n, r.failbckWhy)
	return r, nil
}

// roles waits until master holds the VIP and backup does not.
func roles(ctx context.Context, topo *connsync.Topology, master, backup *connsync.Director) error {
	_, err := connsync.WaitFor(ctx, master.Name+" holding the VIP", 60*time.Second, func() error {
		m, err := master.HoldsVIP()
		if err != nil {
			return err
		}
		b, err := backup.HoldsVIP()
		if err != nil {
			return err
		}
		if !m || b {
			return fmt.Errorf("%s holds it: %v, %s: %v", master.Name, m, backup.Name, b)
		}
		return nil
	})
	return err
}

func waitVIP(d *connsync.Director, want bool) error {
	_, err := connsync.WaitFor(context.Background(), d.Name+" holding the VIP", 60*time.Second, func() error {
		h, err := d.HoldsVIP()
		if err == nil && h != want {
			err = fmt.Errorf("holds it: %v", h)
		}
		return err
	})
	return err
}

// pingAll sends line on every connection and reads the echo, at most 500
// at a time; a connection counts if its echo comes from the real server
// that answered first (first: record it). A failed connection is closed.
func pingAll(conns []*conn, line string, first bool, timeout time.Duration) int {
	ok, _ := pingAllWhy(conns, line, first, timeout)
	return ok
}

// pingAllWhy is pingAll that also counts the failures by kind: reset (or
// closed), timeout, other server.
func pingAllWhy(conns []*conn, line string, first bool, timeout time.Duration) (int, map[string]int) {
	var ok atomic.Int32
	var whyMu sync.Mutex
	why := map[string]int{}
	fail := func(err error) {
		kind := "other"
		switch {
		case err == nil:
			kind = "other server"
		case connsync.Reset(err):
			kind = "reset"
		case errors.Is(err, os.ErrDeadlineExceeded):
			kind = "timeout"
		}
		whyMu.Lock()
		why[kind]++
		whyMu.Unlock()
	}
	sem := make(chan struct{}, 500)
	var wg sync.WaitGroup
	for _, k := range conns {
		if k.c == nil {
			continue
		}
		wg.Add(1)
		sem <- struct{}{}
		go func() {
			defer func() { <-sem; wg.Done() }()
			_ = k.c.SetDeadline(time.Now().Add(timeout))
			if !first {
				if _, err := io.WriteString(k.c, line+"\n"); err != nil {
					fail(err)
					return
				}
			}
			l, err := k.r.ReadString('\n')
			if err != nil {
				fail(err)
				return
			}
			name, num, _ := strings.Cut(strings.TrimSpace(l), " ")
			if num != line {
				fail(fmt.Errorf("echo %q", l))
				return
			}
			if first {
				k.server = name
			}
			if name != k.server {
				fail(nil)
				return
			}
			ok.Add(1)
		}()
	}
	wg.Wait()
	return int(ok.Load()), why
}

func keepalivedVersion() string {
	out, _ := execOutput(guestKeepalived, "--version")
	if f := strings.Fields(out); len(f) >= 2 {
		return "keepalived " + strings.TrimPrefix(f[1], "v")
	}
	return "keepalived"
}

func pct(d []time.Duration, p float64) string {
	if len(d) == 0 {
		return "-"
	}
	s := slices.Clone(d)
	slices.Sort(s)
	return s[min(len(s)-1, int(float64(len(s))*p))].Round(10 * time.Millisecond).String()
}

func share(k, n int) string { return fmt.Sprintf("%.1f %% (%d)", 100*float64(k)/float64(n), k) }

func printTable(w io.Writer, rows []result) {
	fmt.Fprintf(w, "\nIPVS connection sync, VM (TCG, 2 CPUs); the backup's table read every %v\n\n", pollEvery)
	line := func(name string, f func(result) string) {
		fmt.Fprintf(w, "%-48s", name)
		for _, r := range rows {
			fmt.Fprintf(w, "%22s", f(r))
		}
		fmt.Fprintln(w)
	}
	line("", func(r result) string { return r.name })
	line("connections established and answering", func(r result) string { return strconv.Itoa(r.n) })
	line("entry on the backup after establishment, median", func(r result) string { return pct(r.entry, 0.5) })
	line("  p99", func(r result) string { return pct(r.entry, 0.99) })
	line("  max", func(r result) string { return pct(r.entry, 1) })
	line("never on the backup (within 30 s)", func(r result) string { return strconv.Itoa(r.missing) })
	line("survive the failover (SIGKILL, cable pulled)", func(r result) string { return share(r.failover, r.n) })
	line("survive the failback (restart, preemption)", func(r result) string { return share(r.failbck, r.n) })
	line("  failed after the failover: reset / timeout", func(r result) string {
		return fmt.Sprintf("%d / %d", r.failoverWhy["reset"], r.failoverWhy["timeout"])
	})
	line("  failed after the failback: reset / timeout", func(r result) string {
		return fmt.Sprintf("%d / %d", r.failbckWhy["reset"], r.failbckWhy["timeout"])
	})
	line("dials retried (a SYN lost by the busy VM)", func(r result) string { return strconv.Itoa(r.redials) })
}

func execOutput(name string, args ...string) (string, error) {
	out, err := exec.Command(name, args...).CombinedOutput()
	return string(out), err
}
