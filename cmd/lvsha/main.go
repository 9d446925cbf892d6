// Command lvsha runs an LVS director pair with VRRP failover, IPVS and health
// checks (`lvsha -f FILE`), sets up LVS-DR real servers (`lvsha realserver`),
// and checks configs (`lvsha -t`).
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/signal"
	"strings"
	"syscall"

	"github.com/lvsha/lvsha/conf"
	"github.com/lvsha/lvsha/internal/director"
	"github.com/lvsha/lvsha/internal/director/checker"
	"github.com/lvsha/lvsha/internal/logging"
	"github.com/lvsha/lvsha/internal/process"
)

// version is set at build time: -ldflags "-X main.version=$(git describe)".
var version = "dev"

const usage = `lvsha - LVS director high availability: VRRP, IPVS and health checks.

Usage:
  lvsha [-f FILE] [-l LEVEL]          run the director daemon (default config ` + conf.DefaultConfigFile + `)
  lvsha -t [-f FILE]                  check the config and exit (also --config-test)
  lvsha realserver up|down|status [-f FILE | --vip ADDR... --interface IF]
                                      set up / undo / check an LVS-DR real server
  lvsha status [--json] [-S SOCKET]   show the running daemon's VRRP, IPVS and health state
  lvsha cleanup [-f FILE]             remove the VIPs a stopped (killed) daemon left behind
  lvsha import [-o FILE] [--check] KEEPALIVED_CONF
                                      translate a keepalived.conf into lvsha's TOML
  lvsha version                       print the version
  lvsha help                          print this help

Options:
  -f, --config FILE     config file
  -t, --config-test     check the config: every problem as FILE:LINE:COL: key: message
  -l, --log-level LEVEL override global.log_level (debug, info, warn, error)
`

// exit codes
const (
	exitOK    = 0
	exitFail  = 1
	exitUsage = 2
)

func main() {
	os.Exit(run(os.Args[1:], os.Stdout, os.Stderr))
}

func run(args []string, stdout, stderr io.Writer) int {
	if len(args) > 0 {
		switch args[0] {
		case "version":
			if len(args) > 1 {
				return usageErr(stderr, "version takes no arguments")
			}
			fmt.Fprintf(stdout, "lvsha %s\n", version)
			return exitOK
		case "help":
			fmt.Fprint(stdout, usage)
			return exitOK
		case "realserver":
			return runRealserver(args[1:], stdout, stderr)
		case "status":
			return runStatus(args[1:], stdout, stderr)
		case "cleanup":
			return runCleanup(args[1:], stdout, stderr)
		case "import":
			return runImport(args[1:], stdout, stderr)
		case checker.ChildArg: // not in the usage: the daemon starts it
			return checker.Main(args[1:], stderr, process.Checker)
		}
	}

	fs := newFlagSet("lvsha")
	file := conf.DefaultConfigFile
	var test bool
	var level string
	fs.StringVar(&file, "f", file, "")
	fs.StringVar(&file, "config", file, "")
	fs.BoolVar(&test, "t", false, "")
	fs.BoolVar(&test, "config-test", false, "")
	fs.StringVar(&level, "l", "", "")
	fs.StringVar(&level, "log-level", "", "")
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			fmt.Fprint(stdout, usage)
			return exitOK
		}
		return usageErr(stderr, err.Error())
	}
	if fs.NArg() > 0 {
		return usageErr(stderr, fmt.Sprintf("unknown command %q", fs.Arg(0)))
	}

	cfg, warnings, err := conf.Load(file)
	if test {
		return reportConfig(stdout, stderr, file, cfg, warnings, err)
	}
	if err != nil {
		var inv *conf.InvalidError
		if errors.As(err, &inv) {
			fmt.Fprintln(stderr, err)
			fmt.Fprintf(stderr, "lvsha: not starting: %s is invalid\n", file)
		} else {
			fmt.Fprintf(stderr, "lvsha: not starting: %v\n", err)
		}
		return exitFail
	}
	if level != "" {
		cfg.Global.LogLevel = level
	}
	log, err := logging.New(stderr, cfg.Global.LogLevel, cfg.Global.LogFormat)
	if err != nil {
		return usageErr(stderr, err.Error())
	}
	for _, w := range warnings {
		log.Warn("config", "warning", w.Format(file))
	}
	rtPrio := cfg.Global.RealtimePriority
	if err := process.Daemon(rtPrio); err != nil {
		log.Warn("cannot switch to real-time scheduling; VRRP may fail over falsely when the CPUs are busy",
			"priority", rtPrio, "err", err, "hint", "run as root, or with LimitRTPRIO= in the systemd unit")
	} else if rtPrio > 0 {
		log.Info("real-time scheduling", "policy", "SCHED_RR", "priority", rtPrio)
	}

	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, syscall.SIGINT)
	defer stop()
	hup := make(chan os.Signal, 1)
	signal.Notify(hup, syscall.SIGHUP)
	defer signal.Stop(hup)

	d := director.New(cfg, log, director.Options{Version: version, Reload: hup})
	if err := d.Run(ctx); err != nil {
		log.Error("lvsha stopped with an error", "err", err)
		return exitFail
	}
	return exitOK
}

// reportConfig prints the outcome of `lvsha -t`.
func reportConfig(stdout, stderr io.Writer, file string, cfg *conf.Config, warnings []conf.Diag, err error) int {
	var inv *conf.InvalidError
	switch {
	case errors.As(err, &inv):
		for _, d := range inv.Diags {
			fmt.Fprintln(stderr, d.Format(file))
		}
		n, w := inv.Errors(), len(inv.Diags)-inv.Errors()
		fmt.Fprintf(stderr, "%s: %s, %s: config is invalid\n", file, plural(n, "error"), plural(w, "warning"))
		return exitFail
	case err != nil:
		fmt.Fprintf(stderr, "%s: %v\n", file, err)
		return exitFail
	}
	for _, d := range warnings {
		fmt.Fprintln(stderr, d.Format(file))
	}
	fmt.Fprintf(stdout, "%s: config is valid (%s): %s", file, plural(len(warnings), "warning"), cfg.Summary())
	return exitOK
}

func plural(n int, word string) string {
	if n == 1 {
		return "1 " + word
	}
	return fmt.Sprintf("%d %ss", n, word)
}

func newFlagSet(name string) *flag.FlagSet {
	fs := flag.NewFlagSet(name, flag.ContinueOnError)
	fs.SetOutput(io.Discard) // our own usage text, once
	return fs
}

func usageErr(stderr io.Writer, msg string) int {
	fmt.Fprintf(stderr, "lvsha: %s\n\n%s", strings.Replace(msg, "flag provided but not defined:", "unknown flag", 1), usage)
	return exitUsage
}
