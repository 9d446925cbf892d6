// Command vmrun runs a static binary inside lvsha's test VM (see package
// internal/testenv/vm) and exits with the binary's exit code.
//
//	vmrun [-timeout 3m] [-file guest=host]... [-lib /usr/sbin/ipvsadm]... BINARY [ARGS...]
//	vmrun -prepare     only make sure the kernel cache is ready
package main

import (
	"context"
	"flag"
	"fmt"
	"log/slog"
	"os"
	"os/signal"
	"strings"
	"syscall"
	"time"

	"github.com/lvsha/lvsha/internal/testenv/vm"
)

type multi []string

func (m *multi) String() string     { return strings.Join(*m, ",") }
func (m *multi) Set(s string) error { *m = append(*m, s); return nil }

func main() { os.Exit(run()) }

func run() int {
	var files, libs, env, mods multi
	timeout := flag.Duration("timeout", 3*time.Minute, "bound on the whole run")
	prepare := flag.Bool("prepare", false, "only prepare the kernel cache")
	quiet := flag.Bool("q", false, "do not copy the console to stdout")
	mem := flag.Int("m", 512, "guest memory in MiB")
	flag.Var(&files, "file", "extra file GUEST=HOST (repeatable)")
	flag.Var(&libs, "lib", "host executable to copy with its shared libraries, same path in the guest (repeatable)")
	flag.Var(&env, "env", "KEY=VALUE for the binary (repeatable)")
	flag.Var(&mods, "module", "extra kernel module (repeatable)")
	flag.Parse()
	log := slog.New(slog.NewTextHandler(os.Stderr, nil))
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	if *prepare {
		dir, err := vm.KernelDir(ctx, log)
		if err != nil {
			log.Error("prepare", "err", err)
			return 1
		}
		fmt.Println(dir)
		return 0
	}
	if flag.NArg() < 1 {
		flag.Usage()
		return 2
	}
	o := vm.Options{Binary: flag.Arg(0), Args: flag.Args()[1:], Env: env, Modules: mods,
		Timeout: *timeout, MemoryMB: *mem, Files: map[string]string{}, Logger: log}
	if !*quiet {
		o.Console = os.Stdout
	}
	for _, f := range files {
		g, h, ok := strings.Cut(f, "=")
		if !ok {
			log.Error("-file wants GUEST=HOST", "got", f)
			return 2
		}
		o.Files[g] = h
	}
	for _, l := range libs {
		fs, err := vm.WithLibs(l)
		if err != nil {
			log.Error("lib", "err", err)
			return 1
		}
		for g, h := range fs {
			o.Files[g] = h
		}
	}
	res, err := vm.Run(ctx, o)
	if err != nil {
		log.Error("vm run failed", "err", err)
		return 1
	}
	log.Info("vm run", "exit", res.ExitCode, "boot", res.Boot.Round(time.Millisecond), "total", res.Total.Round(time.Millisecond))
	return res.ExitCode
}
