package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/netip"
	"strings"

	"github.com/lvsha/lvsha/conf"
	"github.com/lvsha/lvsha/lvs/realserver"
)

// listFlag collects a repeatable flag (--vip A --vip B) or a comma list.
type listFlag []string

func (l *listFlag) String() string { return strings.Join(*l, ",") }

func (l *listFlag) Set(s string) error {
	for _, p := range strings.Split(s, ",") {
		if p = strings.TrimSpace(p); p != "" {
			*l = append(*l, p)
		}
	}
	return nil
}

func runRealserver(args []string, stdout, stderr io.Writer) int {
	if len(args) == 0 {
		return usageErr(stderr, "realserver: want up, down or status")
	}
	action := args[0]
	switch action {
	case "up", "down", "status":
	default:
		return usageErr(stderr, fmt.Sprintf("realserver: unknown action %q (want up, down or status)", action))
	}
	fs := newFlagSet("lvsha realserver")
	var file, iface, stateDir string
	var vipFlags listFlag
	fs.StringVar(&file, "f", "", "")
	fs.StringVar(&file, "config", "", "")
	fs.Var(&vipFlags, "vip", "")
	fs.StringVar(&iface, "interface", "", "")
	fs.StringVar(&iface, "i", "", "")
	fs.StringVar(&stateDir, "state-dir", "", "")
	if err := fs.Parse(args[1:]); err != nil {
		return usageErr(stderr, err.Error())
	}
	if fs.NArg() > 0 {
		return usageErr(stderr, fmt.Sprintf("realserver: unexpected argument %q", fs.Arg(0)))
	}

	var cfg realserver.Config
	switch {
	case file != "" && (len(vipFlags) > 0 || iface != ""):
		return usageErr(stderr, "realserver: use either -f FILE or --vip/--interface, not both")
	case file != "":
		c, warnings, err := conf.Load(file)
		if err != nil {
			fmt.Fprintln(stderr, err)
			return exitFail
		}
		for _, w := range warnings {
			fmt.Fprintln(stderr, w.Format(file))
		}
		if c.Realserver == nil {
			fmt.Fprintf(stderr, "lvsha: %s has no [realserver] section\n", file)
			return exitFail
		}
		cfg = c.Realserver.Runtime
	case len(vipFlags) > 0 && iface != "":
		for _, s := range vipFlags {
			a, err := conf.ParseRealserverVIP(s)
			if err != nil {
				return usageErr(stderr, "realserver: --vip: "+err.Error())
			}
			cfg.VIPs = append(cfg.VIPs, a)
		}
		cfg.Interface = iface
	default:
		return usageErr(stderr, "realserver: need -f FILE, or --vip ADDR (repeatable) and --interface IF")
	}

	log := slog.New(slog.NewTextHandler(stderr, &slog.HandlerOptions{Level: slog.LevelInfo}))
	opts := realserver.Options{StateDir: stateDir, Logger: log}
	ctx := context.Background()
	switch action {
	case "up":
		if err := realserver.Up(ctx, cfg, opts); err != nil {
			fmt.Fprintf(stderr, "lvsha: realserver up: %v\n", err)
			return exitFail
		}
		fmt.Fprintf(stdout, "realserver up: %s on lo, %s\n", addrList(cfg.VIPs), arpNote(cfg, "all and "+cfg.Interface))
	case "down":
		rep, err := realserver.Down(ctx, cfg, opts)
		printDown(stdout, rep)
		switch {
		case errors.Is(err, realserver.ErrNoState):
			// Nothing was changed, which is the safe outcome; say so and
			// let a stop succeed (a down after a down lands here too).
			fmt.Fprintf(stderr, "lvsha: realserver down: %v\n", err)
		case err != nil:
			fmt.Fprintf(stderr, "lvsha: realserver down: %v\n", err)
			return exitFail
		}
	case "status":
		problems, err := realserver.Status(ctx, cfg, opts)
		if err != nil {
			fmt.Fprintf(stderr, "lvsha: realserver status: %v\n", err)
			return exitFail
		}
		if len(problems) > 0 {
			for _, p := range problems {
				fmt.Fprintf(stdout, "PROBLEM: %s\n", p)
			}
			fmt.Fprintf(stdout, "realserver status: %d problem(s)\n", len(problems))
			return exitFail
		}
		fmt.Fprintf(stdout, "realserver status: OK (%s on lo, %s)\n", addrList(cfg.VIPs), arpNote(cfg, cfg.Interface))
	}
	return exitOK
}

// arpNote says what was done about ARP.
func arpNote(cfg realserver.Config, where string) string {
	if cfg.SuppressesARP() {
		return "ARP suppressed on " + where
	}
	return "no ARP setting (IPv6 VIPs only)"
}

// printDown says what realserver down did and what it left.
func printDown(w io.Writer, rep realserver.Report) {
	var did []string
	if len(rep.Removed) > 0 {
		did = append(did, "removed "+addrList(rep.Removed)+" from lo")
	}
	if len(rep.Rescoped) > 0 {
		did = append(did, "gave "+addrList(rep.Rescoped)+" on lo back its scope global")
	}
	if len(rep.Restored) > 0 {
		did = append(did, "restored "+strings.Join(rep.Restored, " "))
	}
	if len(did) == 0 {
		did = append(did, "nothing undone")
	}
	fmt.Fprintf(w, "realserver down: %s\n", strings.Join(did, "; "))
	for _, l := range rep.Left {
		fmt.Fprintf(w, "realserver down: %s\n", l)
	}
}

func addrList(as []netip.Addr) string {
	s := make([]string, len(as))
	for i, a := range as {
		s[i] = a.String()
	}
	return strings.Join(s, " ")
}
