// Command demo is `make demo`: the seed topology (a client, two lvsha
// directors, two web servers) in a throw-away QEMU VM whose Debian kernel
// has IPVS, narrated step by step: round robin with direct routing, a
// director crash and the failover outage, a web server failing and coming
// back, and a reload. It ends with a verdict and exit code 0 (PASS) or 1.
//
// On the host it builds what it needs (lvsha, unless -lvsha names a static
// binary such as `make build`'s bin/lvsha, and itself, statically) and boots
// the VM (internal/testenv/vm); inside the VM the same binary runs the scenario of
// internal/scenarios/e2e in show mode. The VM's kernel is prepared on first use
// (`make setup` does it ahead).
//
//	go run ./internal/scenarios/demo [-lvsha PATH] [-kernel-log]
package main

import (
	"bytes"
	"context"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"regexp"
	"strings"
	"syscall"
	"time"

	"github.com/lvsha/lvsha/internal/scenarios/e2e"
	"github.com/lvsha/lvsha/internal/testenv/vm"
)

func main() {
	if vm.InGuest() {
		os.Exit(guest())
	}
	os.Exit(host(os.Args[1:], os.Stdout, os.Stderr))
}

// guest runs the scenario inside the VM, narrated on the console.
func guest() int {
	if _, err := e2e.Run(context.Background(), e2e.Config{Out: os.Stdout, Show: true}); err != nil {
		return 1
	}
	return 0
}

const banner = `lvsha demo: the seed LVS direct-routing topology with two directors, for real
  client .10 --+-- director1 .132 (lvsha, VRRP priority 150)   VIP 192.168.94.200:80
               +-- director2 .133 (lvsha, VRRP priority 100)   rr scheduler, direct routing
               +-- web1 .134, web2 .135, web3 .136 (lvsha realserver, "this is webN")
  every host is a network namespace inside a QEMU VM running Debian's kernel with IPVS;
  nothing touches this machine's network.
`

func host(args []string, stdout, stderr io.Writer) int {
	fs := flag.NewFlagSet("demo", flag.ContinueOnError)
	fs.SetOutput(stderr)
	lvshaFlag := fs.String("lvsha", "", "static lvsha binary to run in the VM, e.g. bin/lvsha from `make build` (default: build one from this checkout)")
	kernelLog := fs.Bool("kernel-log", false, "show the guest kernel's console messages too")
	if err := fs.Parse(args); err != nil {
		return 2
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	start := time.Now()
	fmt.Fprint(stdout, banner)

	res, err := launch(ctx, stdout, *lvshaFlag, *kernelLog)
	took := time.Since(start).Round(100 * time.Millisecond)
	fmt.Fprintln(stdout)
	fmt.Fprintln(stdout, strings.Repeat("=", 78))
	switch {
	case err != nil:
		fmt.Fprintf(stdout, "VERDICT: FAIL - the demo could not run: %v (after %v)\n", err, took)
	case res.ExitCode != 0:
		fmt.Fprintf(stdout, "VERDICT: FAIL - the scenario failed (exit %d) in %v; see FAIL above\n", res.ExitCode, took)
	default:
		fmt.Fprintf(stdout, "VERDICT: PASS - lvsha did everything above in a real kernel (%v, of which VM boot %v)\n",
			took, res.Boot.Round(100*time.Millisecond))
	}
	fmt.Fprintln(stdout, strings.Repeat("=", 78))
	if err != nil || res.ExitCode != 0 {
		return 1
	}
	return 0
}

// launch builds the binaries and runs the VM, streaming its console.
func launch(ctx context.Context, stdout io.Writer, lvsha string, kernelLog bool) (vm.Result, error) {
	if _, err := exec.LookPath("qemu-system-x86_64"); err != nil {
		return vm.Result{}, fmt.Errorf("qemu-system-x86_64 not installed: run `make setup` (or `make demo`, which does): %w", err)
	}
	root, err := e2e.ModuleRoot(ctx)
	if err != nil {
		return vm.Result{}, err
	}
	tmp, err := os.MkdirTemp("", "lvsha-demo-")
	if err != nil {
		return vm.Result{}, fmt.Errorf("temp dir: %w", err)
	}
	defer os.RemoveAll(tmp)

	// Build lvsha from this checkout unless given one: a stale bin/lvsha
	// would show yesterday's code.
	if lvsha == "" {
		lvsha = filepath.Join(tmp, "lvsha")
		fmt.Fprintf(stdout, "\nbuilding lvsha (static) from %s...\n", root)
		if err := e2e.BuildLvsha(ctx, lvsha); err != nil {
			return vm.Result{}, err
		}
	} else if err := vm.IsStatic(lvsha); err != nil {
		return vm.Result{}, err
	}
	if out, err := exec.CommandContext(ctx, lvsha, "version").Output(); err == nil {
		fmt.Fprintf(stdout, "using %s (%s)\n", lvsha, strings.TrimSpace(string(out)))
	}
	guestBin := filepath.Join(tmp, "lvsha-demo")
	if err := vm.BuildStatic(ctx, "github.com/lvsha/lvsha/internal/scenarios/demo", guestBin); err != nil {
		return vm.Result{}, err
	}
	files, err := e2e.GuestFiles(root, lvsha)
	if err != nil {
		return vm.Result{}, err
	}
	log := slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelInfo}))
	kdir, err := vm.KernelDir(ctx, log)
	if err != nil {
		return vm.Result{}, fmt.Errorf("VM kernel: %w (run `make setup`)", err)
	}
	fmt.Fprintf(stdout, "booting the VM (QEMU, TCG; kernel %s)...\n", filepath.Base(resolve(kdir)))
	console := &consoleFilter{w: stdout, kernel: kernelLog}
	o := e2e.VMOptions(files)
	o.Binary, o.Console, o.KernelDir, o.Logger = guestBin, console, kdir, log
	res, err := vm.Run(ctx, o)
	console.flush()
	return res, err
}

func resolve(p string) string {
	if r, err := filepath.EvalSymlinks(p); err == nil {
		return r
	}
	return p
}

// kernelLine matches the guest kernel's printk lines ("[   28.11] reboot: ...").
var kernelLine = regexp.MustCompile(`^\[\s*\d+\.\d+\] `)

// consoleFilter passes the guest's narration through line by line, without
// the harness's markers and (unless asked) the kernel's messages.
type consoleFilter struct {
	w      io.Writer
	kernel bool
	buf    []byte
}

func (c *consoleFilter) Write(p []byte) (int, error) {
	c.buf = append(c.buf, p...)
	for {
		i := bytes.IndexByte(c.buf, '\n')
		if i < 0 {
			break
		}
		c.line(string(c.buf[:i]))
		c.buf = c.buf[i+1:]
	}
	return len(p), nil
}

func (c *consoleFilter) line(l string) {
	l = strings.TrimRight(l, "\r")
	if strings.HasPrefix(l, "lvsha-vm-") || (!c.kernel && kernelLine.MatchString(l)) {
		return
	}
	fmt.Fprintln(c.w, l)
}

func (c *consoleFilter) flush() {
	if len(c.buf) > 0 {
		c.line(string(c.buf))
		c.buf = nil
	}
}
