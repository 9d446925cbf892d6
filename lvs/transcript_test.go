package lvs_test

import (
	"bytes"
	"errors"
	"fmt"
	"log/slog"
	"net/netip"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/lvsha/lvsha/internal/testenv/transcript"
	"github.com/lvsha/lvsha/lvs"
	"github.com/lvsha/lvsha/lvs/lvstest"
)

// TestTranscript runs each testdata/*.txt against a reconciler over
// production's IPVS kernel on lvstest's table, and compares the output of
// every command exactly, in the layout of internal/testenv/transcript
// (`go test ./lvs -run Transcript -update` rewrites the outputs). Commands:
//
//   - apply: input is the desired table, one service a line ("KEY SCHED
//     [dr|nat|tun] [persistence=DUR] [quorum=N] [sorry=ADDR] [remove]") each
//     followed by its real servers indented ("ADDR WEIGHT [down]"). Output:
//     the calls the kernel received (writes grouped by sendmsg), the report,
//     the logs, the error if any, and the table after.
//   - repair: Reconciler.Repair, same output.
//   - kernel: input is changes made behind the reconciler's back
//     ("add-service KEY SCHED [t=N]", "update-service ...", "del-service KEY",
//     "add-dest KEY ADDR WEIGHT FWD", "update-dest ...", "del-dest KEY ADDR",
//     "conns KEY ADDR ACTIVE INACTIVE"). Output: the table.
//   - fail ERRNO: every later call whose text contains one of the input lines
//     fails with ERRNO (no input: nothing fails).
//   - snapshot: Reconciler.Snapshot as the status shows it.
func TestTranscript(t *testing.T) {
	transcript.Run(t, "testdata/*.txt", func(t *testing.T) func(transcript.Block) []string {
		var logs bytes.Buffer
		log := slog.New(slog.NewTextHandler(&logs, &slog.HandlerOptions{ReplaceAttr: func(_ []string, a slog.Attr) slog.Attr {
			if a.Key == slog.TimeKey {
				return slog.Attr{}
			}
			return a
		}}))
		f, k := lvstest.New(t)
		r := lvs.NewReconciler(k, log)
		return func(b transcript.Block) []string {
			logs.Reset()
			f.Reset()
			return runCommand(t, f, r, b, &logs)
		}
	})
}

func runCommand(t *testing.T, f *lvstest.Table, r *lvs.Reconciler, b transcript.Block, logs *bytes.Buffer) []string {
	t.Helper()
	cmd, args, _ := strings.Cut(b.Cmd, " ")
	switch cmd {
	case "apply":
		rep, err := r.Apply(parseServices(t, b.Input))
		return renderRun(f, rep, err, logs)
	case "repair":
		rep, err := r.Repair()
		return renderRun(f, rep, err, logs)
	case "kernel":
		for _, l := range b.Input {
			if err := driftLine(f, l); err != nil {
				t.Fatalf("kernel %q: %v", l, err)
			}
		}
		return renderTable(f)
	case "fail":
		if len(b.Input) == 0 {
			f.SetFail(nil)
			return nil
		}
		errno, ok := errnos[args]
		if !ok {
			t.Fatalf("fail: unknown errno %q", args)
		}
		subs := b.Input
		f.SetFail(func(call string) error {
			for _, s := range subs {
				if strings.Contains(call, s) {
					return errno
				}
			}
			return nil
		})
		return nil
	case "snapshot":
		s, err := r.Snapshot()
		if err != nil {
			return []string{"error: " + err.Error()}
		}
		var out []string
		for _, svc := range s.Services {
			l := fmt.Sprintf("%v %s t=%d", svc.Key, svc.Scheduler, svc.Timeout)
			if !svc.Owned {
				l += " foreign"
			}
			if svc.QuorumLost {
				l += " quorum-lost"
			}
			out = append(out, l)
			for _, d := range svc.Dests {
				out = append(out, fmt.Sprintf("  %v weight=%d %v active=%d inactive=%d", d.Addr, d.Weight, d.Forwarding, d.ActiveConns, d.InactConns))
			}
		}
		return out
	}
	t.Fatalf("unknown command %q", b.Cmd)
	return nil
}

var errnos = map[string]syscall.Errno{"EINVAL": syscall.EINVAL, "ENOENT": syscall.ENOENT, "ESRCH": syscall.ESRCH, "EEXIST": syscall.EEXIST}

// renderRun shows what an apply or repair did: the kernel's view (reads,
// and the writes of each sendmsg) and the reconciler's (report, logs,
// error), then the table.
func renderRun(f *lvstest.Table, rep lvs.Report, err error, logs *bytes.Buffer) []string {
	var out []string
	sends := f.Sends()
	left := 0
	for _, c := range f.Calls() {
		if strings.HasPrefix(c, "Services") || strings.HasPrefix(c, "Destinations") {
			out = append(out, "read "+c)
			continue
		}
		if left == 0 && len(sends) > 0 {
			left, sends = sends[0], sends[1:]
			out = append(out, fmt.Sprintf("sendmsg (%d requests)", left))
		}
		out = append(out, "  "+c)
		left--
	}
	out = append(out, strings.Split("report: "+rep.String(), "\n")...)
	for _, k := range rep.QuorumLost {
		out = append(out, "quorum lost: "+k.String())
	}
	for _, l := range strings.Split(strings.TrimRight(logs.String(), "\n"), "\n") {
		if l != "" {
			out = append(out, "log: "+l)
		}
	}
	if err != nil {
		for _, l := range strings.Split(err.Error(), "\n") {
			out = append(out, "error: "+l)
		}
	}
	return append(out, renderTable(f)...)
}

func renderTable(f *lvstest.Table) []string {
	d := f.Dump()
	if d == "" {
		return []string{"table: empty"}
	}
	out := []string{"table:"}
	for _, l := range strings.Split(d, "\n") {
		out = append(out, "  "+l)
	}
	return out
}

func parseServices(t *testing.T, lines []string) []lvs.Service {
	t.Helper()
	var svcs []lvs.Service
	for _, l := range lines {
		fields := strings.Fields(l)
		if strings.HasPrefix(l, " ") {
			if len(svcs) == 0 || len(fields) < 2 {
				t.Fatalf("bad real server line %q", l)
			}
			w, err := strconv.Atoi(fields[1])
			if err != nil {
				t.Fatalf("%q: %v", l, err)
			}
			rs := lvs.Real{Addr: netip.MustParseAddrPort(fields[0]), Weight: w, Up: true}
			if len(fields) > 2 && fields[2] == "down" {
				rs.Up = false
			}
			s := &svcs[len(svcs)-1]
			s.Reals = append(s.Reals, rs)
			continue
		}
		if len(fields) < 2 {
			t.Fatalf("bad service line %q", l)
		}
		k, err := lvs.ParseKey(fields[0])
		if err != nil {
			t.Fatal(err)
		}
		s := lvs.Service{Key: k, Scheduler: fields[1]}
		for _, opt := range fields[2:] {
			name, val, _ := strings.Cut(opt, "=")
			var err error
			switch name {
			case "dr", "nat", "tun":
				s.Forwarding, err = parseForwarding(name)
			case "persistence":
				s.Persistence, err = time.ParseDuration(val)
			case "quorum":
				s.Quorum, err = strconv.Atoi(val)
			case "sorry":
				s.Sorry, err = netip.ParseAddrPort(val)
			case "remove":
				s.OnFailure = lvs.Remove
			default:
				err = errors.New("unknown option")
			}
			if err != nil {
				t.Fatalf("%q: %s: %v", l, opt, err)
			}
		}
		svcs = append(svcs, s)
	}
	return svcs
}

var driftKinds = map[string]lvs.OpKind{}

func init() {
	for k := lvs.OpNewService; k <= lvs.OpDelDest; k++ {
		driftKinds[k.String()] = k
	}
}

// driftLine applies one "kernel" input line.
func driftLine(f *lvstest.Table, l string) error {
	fields := strings.Fields(l)
	if len(fields) < 2 {
		return errors.New("too short")
	}
	key, err := lvs.ParseKey(fields[1])
	if err != nil {
		return err
	}
	if fields[0] == "conns" {
		if len(fields) != 5 {
			return errors.New("want conns KEY ADDR ACTIVE INACTIVE")
		}
		a, i1 := strconv.Atoi(fields[3])
		in, i2 := strconv.Atoi(fields[4])
		if err := errors.Join(i1, i2); err != nil {
			return err
		}
		return f.SetConns(key, netip.MustParseAddrPort(fields[2]), a, in)
	}
	kind, ok := driftKinds[fields[0]]
	if !ok {
		return fmt.Errorf("unknown change %q", fields[0])
	}
	c := lvs.Change{Kind: kind, Service: lvs.KService{Key: key}}
	switch kind {
	case lvs.OpNewService, lvs.OpUpdateService:
		if len(fields) < 3 {
			return errors.New("no scheduler")
		}
		c.Service.Scheduler = fields[2]
		if len(fields) > 3 {
			n, err := strconv.ParseUint(strings.TrimPrefix(fields[3], "t="), 10, 32)
			if err != nil {
				return err
			}
			c.Service.Timeout = uint32(n)
		}
	case lvs.OpNewDest, lvs.OpUpdateDest, lvs.OpDelDest:
		if len(fields) < 3 {
			return errors.New("no real server")
		}
		c.Dest.Addr = netip.MustParseAddrPort(fields[2])
		if kind != lvs.OpDelDest {
			if len(fields) != 5 {
				return errors.New("want KEY ADDR WEIGHT FWD")
			}
			if c.Dest.Weight, err = strconv.Atoi(fields[3]); err != nil {
				return err
			}
			if c.Dest.Forwarding, err = parseForwarding(fields[4]); err != nil {
				return err
			}
		}
	}
	return f.Drift(c)
}

// parseForwarding reads a forwarding method as its String prints it.
func parseForwarding(s string) (lvs.Forwarding, error) {
	for _, f := range []lvs.Forwarding{lvs.DR, lvs.NAT, lvs.Tunnel} {
		if f.String() == s {
			return f, nil
		}
	}
	return 0, fmt.Errorf("unknown forwarding %q", s)
}
