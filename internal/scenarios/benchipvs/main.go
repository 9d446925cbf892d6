// Command benchipvs compares lvsha's IPVS reconciler with `ipvsadm -R` on
// real IPVS (`make bench-ipvs`): 1,000 virtual services x 10 real servers
// programmed from empty, then a reload that changes one weight, printing
// time and netlink operation counts side by side.
//
// On the host it builds itself statically and boots itself in the test VM
// (internal/testenv/vm) together with the host's ipvsadm and its libraries; in the
// guest it runs the benchmark, each tool in a fresh network namespace.
package main

import (
	"cmp"
	"context"
	"flag"
	"fmt"
	"log/slog"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"time"

	"github.com/lvsha/lvsha/internal/testenv/netns"
	"github.com/lvsha/lvsha/internal/testenv/vm"
	"github.com/lvsha/lvsha/lvs"
)

func main() { os.Exit(run()) }

var (
	nSvc   = flag.Int("services", 1000, "virtual services")
	nReal  = flag.Int("reals", 10, "real servers per service")
	rounds = flag.Int("rounds", 3, "repetitions (the median is reported)")
)

func run() int {
	flag.Parse()
	log := slog.New(slog.NewTextHandler(os.Stderr, nil))
	if vm.InGuest() {
		if err := guest(); err != nil {
			fmt.Fprintln(os.Stderr, "benchipvs:", err)
			return 1
		}
		return 0
	}
	if err := host(log); err != nil {
		log.Error("benchipvs", "err", err)
		return 1
	}
	return 0
}

func host(log *slog.Logger) error {
	tmp, err := os.MkdirTemp("", "benchipvs-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(tmp)
	bin := filepath.Join(tmp, "benchipvs")
	if err := vm.BuildStatic(context.Background(), "github.com/lvsha/lvsha/internal/scenarios/benchipvs", bin); err != nil {
		return err
	}
	files, err := vm.WithLibs("ipvsadm")
	if err != nil {
		return fmt.Errorf("ipvsadm (apt-get install ipvsadm): %w", err)
	}
	res, err := vm.Run(context.Background(), vm.Options{
		Binary: bin, Files: files, Console: os.Stdout, Logger: log, Timeout: 15 * time.Minute,
		Args: []string{fmt.Sprintf("-services=%d", *nSvc), fmt.Sprintf("-reals=%d", *nReal), fmt.Sprintf("-rounds=%d", *rounds)},
	})
	if err != nil {
		return err
	}
	if res.ExitCode != 0 {
		return fmt.Errorf("benchmark failed in the VM (exit %d)", res.ExitCode)
	}
	return nil
}

// desired builds the benchmark's table: services 10.1.x.y:80 (rr, DR),
// real servers 10.2.x.y:80, weight 1.
func desired() []lvs.Service {
	svcs := make([]lvs.Service, *nSvc)
	r := 0
	for i := range svcs {
		s := lvs.Service{Key: lvs.Key{Proto: lvs.TCP, Addr: netip.AddrPortFrom(netip.AddrFrom4([4]byte{10, 1, byte(i >> 8), byte(i)}), 80)},
			Scheduler: "wlc", Forwarding: lvs.DR, Quorum: 1}
		for range *nReal {
			s.Reals = append(s.Reals, lvs.Real{Addr: netip.AddrPortFrom(netip.AddrFrom4([4]byte{10, 2, byte(r >> 8), byte(r)}), 80), Weight: 1, Up: true})
			r++
		}
		svcs[i] = s
	}
	return svcs
}

// restoreFile is the same table in `ipvsadm -S` format.
func restoreFile(svcs []lvs.Service) string {
	var b strings.Builder
	for _, s := range svcs {
		fmt.Fprintf(&b, "-A -t %s -s %s\n", s.Key.Addr, s.Scheduler)
		for _, r := range s.Reals {
			fmt.Fprintf(&b, "-a -t %s -r %s -g -w %d\n", s.Key.Addr, r.Addr, r.Weight)
		}
	}
	return b.String()
}

type sample struct {
	d            time.Duration
	reads, write int
}

func median(s []sample) sample {
	slices.SortFunc(s, func(a, b sample) int { return cmp.Compare(a.d, b.d) })
	return s[len(s)/2]
}

func newNS(tag string) (*netns.NS, error) {
	return netns.New(netns.UniquePrefix("bench") + tag)
}

// lvshaCold programs the table from empty in a fresh namespace; it leaves
// the namespace and reconciler open for the reload case.
func lvshaCold(svcs []lvs.Service) (sample, *lvs.Reconciler, *lvs.Counting, func(), error) {
	ns, err := newNS(fmt.Sprint("l", time.Now().UnixNano()%1e6))
	if err != nil {
		return sample{}, nil, nil, nil, err
	}
	k, err := lvs.OpenIPVS(ns.Path())
	if err != nil {
		ns.Close()
		return sample{}, nil, nil, nil, err
	}
	closer := func() { k.Close(); ns.Close() }
	c := &lvs.Counting{Kernel: k}
	r := lvs.NewReconciler(c, nil)
	t0 := time.Now()
	_, err = r.Apply(svcs)
	d := time.Since(t0)
	if err != nil {
		closer()
		return sample{}, nil, nil, nil, err
	}
	return sample{d, c.Reads, c.Writes}, r, c, closer, nil
}

func ipvsadm(ns *netns.NS, stdin string, args ...string) (time.Duration, error) {
	cmd := exec.Command("/usr/sbin/ipvsadm", args...)
	cmd.Stdin = strings.NewReader(stdin)
	var out strings.Builder
	cmd.Stdout, cmd.Stderr = &out, &out
	t0 := time.Now()
	if err := ns.Start(cmd); err != nil {
		return 0, err
	}
	err := cmd.Wait()
	d := time.Since(t0)
	if err != nil {
		return d, fmt.Errorf("ipvsadm %s: %w: %s", strings.Join(args, " "), err, out.String())
	}
	return d, nil
}

func countServices(ns *netns.NS) (int, int, error) {
	k, err := lvs.OpenIPVS(ns.Path())
	if err != nil {
		return 0, 0, err
	}
	defer k.Close()
	svcs, err := k.Services()
	if err != nil {
		return 0, 0, err
	}
	dests := 0
	for _, s := range svcs {
		ds, err := k.Destinations(s.Key)
		if err != nil {
			return 0, 0, err
		}
		dests += len(ds)
	}
	return len(svcs), dests, nil
}

func guest() error {
	svcs := desired()
	restore := restoreFile(svcs)
	lines := strings.Count(restore, "\n")
	var lv, ia, lvReload, iaEdit, iaReload, lvRepair []sample
	for round := range *rounds {
		// Alternate which tool goes first so warm-up favours neither.
		order := []string{"lvsha", "ipvsadm"}
		if round%2 == 1 {
			slices.Reverse(order)
		}
		for _, tool := range order {
			switch tool {
			case "lvsha":
				s, r, c, closer, err := lvshaCold(svcs)
				if err != nil {
					return fmt.Errorf("lvsha cold apply: %w", err)
				}
				lv = append(lv, s)
				// Reload: one weight changes.
				next := slices.Clone(svcs)
				next[*nSvc/2].Reals = slices.Clone(next[*nSvc/2].Reals)
				next[*nSvc/2].Reals[3].Weight = 5
				r0, w0 := c.Reads, c.Writes
				t0 := time.Now()
				rep, err := r.Apply(next)
				d := time.Since(t0)
				if err != nil {
					closer()
					return fmt.Errorf("lvsha reload: %w", err)
				}
				lvReload = append(lvReload, sample{d, c.Reads - r0, c.Writes - w0})
				if len(rep.Ops) != 1 {
					closer()
					return fmt.Errorf("one-weight reload made %d changes: %v", len(rep.Ops), rep)
				}
				// Drift check: the periodic full re-read.
				r0, w0 = c.Reads, c.Writes
				t0 = time.Now()
				if _, err := r.Repair(); err != nil {
					closer()
					return fmt.Errorf("lvsha repair: %w", err)
				}
				lvRepair = append(lvRepair, sample{time.Since(t0), c.Reads - r0, c.Writes - w0})
				closer()
			case "ipvsadm":
				ns, err := newNS(fmt.Sprint("i", time.Now().UnixNano()%1e6))
				if err != nil {
					return err
				}
				d, err := ipvsadm(ns, restore, "-R")
				if err != nil {
					ns.Close()
					return err
				}
				ia = append(ia, sample{d, 0, lines})
				if n, m, err := countServices(ns); err != nil || n != *nSvc || m != *nSvc**nReal {
					ns.Close()
					return fmt.Errorf("ipvsadm -R made %d services, %d dests (%v)", n, m, err)
				}
				mid := svcs[*nSvc/2]
				d, err = ipvsadm(ns, "", "-e", "-t", mid.Key.Addr.String(), "-r", mid.Reals[3].Addr.String(), "-g", "-w", "5")
				if err != nil {
					ns.Close()
					return err
				}
				iaEdit = append(iaEdit, sample{d, 0, 1})
				t0 := time.Now()
				_, err = ipvsadm(ns, "", "-C")
				if err == nil {
					_, err = ipvsadm(ns, restore, "-R")
				}
				iaReload = append(iaReload, sample{time.Since(t0), 0, lines + 1})
				ns.Close()
				if err != nil {
					return err
				}
			}
		}
	}
	ml, mi := median(lv), median(ia)
	rel, kver := "", ""
	if b, err := os.ReadFile("/proc/sys/kernel/osrelease"); err == nil {
		kver = strings.TrimSpace(string(b))
	}
	fmt.Printf("\nIPVS programming: %d services x %d real servers, Linux %s in QEMU (TCG, 1 vCPU), median of %d rounds%s\n\n",
		*nSvc, *nReal, kver, *rounds, rel)
	row := func(c, tool string, s sample, ops string) {
		fmt.Printf("%-30s %-20s %12s   %s\n", c, tool, s.d.Round(10*time.Microsecond), ops)
	}
	fmt.Printf("%-30s %-20s %12s   %s\n", "case", "tool", "time", "netlink requests")
	row("cold apply from empty", "lvsha", ml, fmt.Sprintf("%d (%d reads + %d writes in %d sendmsg)", ml.reads+ml.write, ml.reads, ml.write, (ml.write+lvs.BatchMax-1)/lvs.BatchMax))
	row("cold apply from empty", "ipvsadm -R", mi, fmt.Sprintf("%d (one sendmsg per line, + ipvsadm's start-up queries)", mi.write))
	mr, me, mc := median(lvReload), median(iaEdit), median(iaReload)
	row("reload, one weight changed", "lvsha", mr, fmt.Sprintf("%d (%d reads + %d writes)", mr.reads+mr.write, mr.reads, mr.write))
	row("reload, one weight changed", "ipvsadm -e (by hand)", me, "1 (+ start-up)")
	row("reload, one weight changed", "ipvsadm -C && -R", mc, fmt.Sprintf("%d", mc.write))
	mp := median(lvRepair)
	row("drift check (full re-read)", "lvsha", mp, fmt.Sprintf("%d (%d reads + %d writes)", mp.reads+mp.write, mp.reads, mp.write))
	ratio := float64(ml.d) / float64(mi.d)
	verdict := "met"
	if ratio > 1.2 {
		verdict = "NOT met"
	}
	fmt.Printf("\ncold apply lvsha / ipvsadm -R = %.2fx (goal <= 1.2x: %s); one-change reload = %d netlink request(s) (goal 1: %s)\n",
		ratio, verdict, mr.reads+mr.write, map[bool]string{true: "met", false: "NOT met"}[mr.reads+mr.write == 1])
	for i := range lv {
		fmt.Printf("  round %d: lvsha %v, ipvsadm -R %v\n", i+1, lv[i].d.Round(time.Millisecond), ia[i].d.Round(time.Millisecond))
	}
	return nil
}
