// Package vm runs a static Linux binary inside a throw-away QEMU VM that
// boots Debian's own kernel, so lvsha's IPVS code can be tested against a
// real kernel on build machines whose kernel has no IPVS (and no KVM).
//
// The guest is an initramfs made of busybox-static, the kernel modules the
// run needs (with their dependencies), the binary and any extra files. Its
// /init mounts proc, sys, dev, /run and /tmp, loads the modules, brings lo
// up, runs the binary and prints a result marker with the exit code on the
// serial console before powering off. The host takes the exit code from the
// marker: no marker (crash, hang, timeout) is a failure.
package vm

import (
	"bytes"
	"context"
	"crypto/rand"
	_ "embed"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/exec"
	"path"
	"path/filepath"
	"regexp"
	"slices"
	"sort"
	"strconv"
	"strings"
	"time"
)

//go:embed setup.sh
var setupScript []byte

// DefaultCache is where setup.sh keeps unpacked kernels, one directory per
// kernel version, with "current" pointing at the one in use.
const DefaultCache = "/var/cache/lvsha-vm"

// GuestEnv is set to "1" in the guest's environment, so a test binary can
// tell it runs inside the VM.
const GuestEnv = "LVSHA_IN_VM"

// InGuest reports whether this process runs inside a VM started by Run.
func InGuest() bool { return os.Getenv(GuestEnv) == "1" }

// Options describe one VM run.
type Options struct {
	// Binary is the host path of a static executable; it runs as
	// /bin/<basename> in the guest.
	Binary string
	// Args are passed to Binary.
	Args []string
	// Env holds extra environment variables (KEY=VALUE) for Binary.
	// LVSHA_IN_VM=1 and a PATH are always set.
	Env []string
	// Files maps guest paths to host paths of extra files (other binaries,
	// their shared libraries, configs).
	Files map[string]string
	// Modules are loaded in addition to DefaultModules.
	Modules []string
	// Timeout bounds the whole run, boot included; 0 means 3 minutes.
	Timeout time.Duration
	// MemoryMB is the guest's RAM; 0 means 512.
	MemoryMB int
	// CPUs is the number of guest CPUs; 0 means 1 (TCG is slow and the
	// build machines are small).
	CPUs int
	// Console, if set, receives the serial console as it is produced.
	Console io.Writer
	// KernelDir is an unpacked kernel (vmlinux + modules/); empty means
	// $LVSHA_VM_KERNEL_DIR or DefaultCache/current, prepared on demand.
	KernelDir string
	// Logger reports progress; nil means slog.Default().
	Logger *slog.Logger
}

// Result is what a run produced.
type Result struct {
	// ExitCode is the binary's exit status inside the guest.
	ExitCode int
	// Console is the whole serial console output.
	Console string
	// Boot is the time from starting qemu to the binary starting, Total
	// the whole run.
	Boot, Total time.Duration
}

// ErrNoMarker means the guest never printed the result marker: it
// crashed, hung or timed out before the binary finished.
var ErrNoMarker = errors.New("vm: no result marker on the console")

// KernelDir returns the unpacked kernel to use, preparing it with the
// embedded setup.sh (apt-get download, unpack) when it is missing.
func KernelDir(ctx context.Context, log *slog.Logger) (string, error) {
	if log == nil {
		log = slog.Default()
	}
	if d := os.Getenv("LVSHA_VM_KERNEL_DIR"); d != "" {
		return d, nil
	}
	cache := os.Getenv("LVSHA_VM_CACHE")
	if cache == "" {
		cache = DefaultCache
	}
	cur := filepath.Join(cache, "current")
	if _, err := os.Stat(filepath.Join(cur, "ready")); err == nil {
		return cur, nil
	}
	// setup.sh takes a lock in the cache: when several test binaries start
	// at once, one prepares and the others wait, then find it ready.
	log.Info("vm: preparing kernel cache (apt-get download linux-image-amd64)", "dir", cache)
	// From a file, not stdin: a command in the script reading stdin
	// would swallow the rest of the script.
	script, err := os.CreateTemp("", "lvsha-vm-setup-*.sh")
	if err != nil {
		return "", fmt.Errorf("vm: prepare kernel: %w", err)
	}
	defer os.Remove(script.Name())
	if _, err := script.Write(setupScript); err != nil {
		script.Close()
		return "", fmt.Errorf("vm: prepare kernel: %w", err)
	}
	if err := script.Close(); err != nil {
		return "", fmt.Errorf("vm: prepare kernel: %w", err)
	}
	cmd := exec.CommandContext(ctx, "sh", script.Name(), "kernel")
	cmd.Env = append(os.Environ(), "LVSHA_VM_CACHE="+cache)
	out, err := cmd.CombinedOutput()
	if err != nil {
		return "", fmt.Errorf("vm: prepare kernel: %w\n%s", err, out)
	}
	return cur, nil
}

var markerRE = regexp.MustCompile(`lvsha-vm-result ([0-9a-f]{16}) (-?[0-9]+)`)

// Run boots the VM, runs the binary and returns its exit code. An error
// means the run itself failed (no marker, qemu missing, timeout); a non-zero
// exit code of the binary is not an error.
func Run(ctx context.Context, o Options) (Result, error) {
	return launch(ctx, o, func(initrd, kdir, nonce string) error {
		return buildInitramfs(initrd, kdir, nonce, o)
	}, nil, nil)
}

// launch is Run and BootDisk without their guests: it makes the initramfs
// with mkInitrd, boots it with the extra qemu arguments and kernel command
// line (cmdline, given the nonce, may be nil), and reads the result marker
// that carries the run's nonce.
func launch(ctx context.Context, o Options, mkInitrd func(initrd, kdir, nonce string) error, qemuArgs []string, cmdline func(nonce string) string) (Result, error) {
	start := time.Now()
	log := o.Logger
	if log == nil {
		log = slog.Default()
	}
	if o.Timeout == 0 {
		o.Timeout = 3 * time.Minute
	}
	if o.MemoryMB == 0 {
		o.MemoryMB = 512
	}
	if o.CPUs == 0 {
		o.CPUs = 1
	}
	kdir := o.KernelDir
	if kdir == "" {
		var err error
		if kdir, err = KernelDir(ctx, log); err != nil {
			return Result{}, err
		}
	}
	qemu, err := exec.LookPath("qemu-system-x86_64")
	if err != nil {
		return Result{}, fmt.Errorf("vm: %w (run internal/testenv/vm/setup.sh)", err)
	}
	tmp, err := os.MkdirTemp("", "lvsha-vm-")
	if err != nil {
		return Result{}, fmt.Errorf("vm: %w", err)
	}
	defer os.RemoveAll(tmp)

	nonceb := make([]byte, 8)
	if _, err := rand.Read(nonceb); err != nil {
		return Result{}, fmt.Errorf("vm: nonce: %w", err)
	}
	nonce := hex.EncodeToString(nonceb)
	initrd := filepath.Join(tmp, "initrd.cpio")
	if err := mkInitrd(initrd, kdir, nonce); err != nil {
		return Result{}, fmt.Errorf("vm: initramfs: %w", err)
	}

	rctx, cancel := context.WithTimeout(ctx, o.Timeout)
	defer cancel()
	args := []string{
		"-accel", "tcg", "-nodefaults", "-display", "none", "-serial", "stdio",
		"-nic", "none", "-no-reboot",
		"-m", strconv.Itoa(o.MemoryMB), "-smp", strconv.Itoa(o.CPUs),
		"-kernel", filepath.Join(kdir, "vmlinux"), "-initrd", initrd,
		// Left to itself the guest kernel picks the HPET, whose every read
		// is an emulated MMIO access: the vDSO cannot use it, so each
		// clock_gettime is a system call, which inflated a Go program's
		// CPU (it reads the clock often) far beyond a C program's.
		"-append", "console=ttyS0 panic=-1 quiet clocksource=tsc tsc=reliable",
	}
	if cmdline != nil {
		args[len(args)-1] += " " + cmdline(nonce)
	}
	cmd := exec.CommandContext(rctx, qemu, append(args, qemuArgs...)...)
	var console bytes.Buffer
	bootw := &bootWatch{marker: []byte("lvsha-vm-start " + nonce)}
	ws := []io.Writer{&console, bootw}
	if o.Console != nil {
		ws = append(ws, o.Console)
	}
	cmd.Stdout = io.MultiWriter(ws...)
	cmd.Stderr = cmd.Stdout
	cmd.WaitDelay = 5 * time.Second
	runErr := cmd.Run()
	res := Result{Console: console.String(), Total: time.Since(start)}
	if !bootw.at.IsZero() {
		res.Boot = bootw.at.Sub(start)
	}
	m := markerRE.FindAllStringSubmatch(res.Console, -1)
	for _, mm := range m {
		if mm[1] == nonce {
			res.ExitCode, _ = strconv.Atoi(mm[2])
			log.Debug("vm: done", "exit", res.ExitCode, "boot", res.Boot, "total", res.Total)
			return res, nil
		}
	}
	switch {
	case rctx.Err() == context.DeadlineExceeded:
		return res, fmt.Errorf("vm: timed out after %v: %w", o.Timeout, ErrNoMarker)
	case ctx.Err() != nil:
		return res, fmt.Errorf("vm: %w", ctx.Err())
	case runErr != nil:
		return res, fmt.Errorf("vm: qemu: %v: %w", runErr, ErrNoMarker)
	}
	return res, ErrNoMarker
}

// bootWatch notes when the guest announces that the binary starts.
type bootWatch struct {
	marker []byte
	tail   []byte
	at     time.Time
}

func (b *bootWatch) Write(p []byte) (int, error) {
	if b.at.IsZero() {
		b.tail = append(b.tail, p...)
		if bytes.Contains(b.tail, b.marker) {
			b.at = time.Now()
			b.tail = nil
		} else if len(b.tail) > 256 {
			b.tail = b.tail[len(b.tail)-256:]
		}
	}
	return len(p), nil
}

// shQuote quotes s for the guest's busybox sh.
func shQuote(s string) string {
	return "'" + strings.ReplaceAll(s, "'", `'\''`) + "'"
}

func buildInitramfs(out, kdir, nonce string, o Options) error {
	mods, err := newModuleSet(filepath.Join(kdir, "modules"))
	if err != nil {
		return err
	}
	for _, m := range append(append([]string{}, DefaultModules...), o.Modules...) {
		if err := mods.add(m, false); err != nil {
			return err
		}
	}
	f, err := os.Create(out)
	if err != nil {
		return err
	}
	defer f.Close()
	c := newCPIO(f)
	for _, d := range []string{"bin", "sbin", "usr/bin", "usr/sbin", "proc", "sys", "dev", "run", "tmp", "etc", "root"} {
		c.mkdirAll(d)
	}
	c.CharDev("dev/console", 5, 1)
	c.CharDev("dev/null", 1, 3)
	c.Symlink("var/run", "/run")
	c.HostFile("bin/busybox", "/bin/busybox")
	// Modules live where modprobe looks for them: /lib/modules/<release>.
	release := filepath.Base(kdir)
	if r, err := filepath.EvalSymlinks(kdir); err == nil {
		release = filepath.Base(r)
	}
	modDir := "lib/modules/" + release + "/"
	for i, name := range mods.order {
		c.HostFile(modDir+name+".ko", mods.paths[i])
	}
	c.File(modDir+"modules.dep", 0o644, mods.modulesDep())
	c.File("etc/lvsha-vm/modules", 0o644, []byte(strings.Join(mods.order, "\n")+"\n"))

	guestBin := "/bin/" + filepath.Base(o.Binary)
	c.HostFile(guestBin, o.Binary)
	guests := make([]string, 0, len(o.Files))
	for g := range o.Files {
		guests = append(guests, g)
	}
	sort.Strings(guests)
	for _, g := range guests {
		c.HostFile(path.Clean("/"+g), o.Files[g])
	}

	var s strings.Builder
	s.WriteString(`#!/bin/busybox sh
/bin/busybox --install -s
export PATH=/bin:/sbin:/usr/bin:/usr/sbin HOME=/root TMPDIR=/tmp
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev 2>/dev/null
mount -t tmpfs tmpfs /run
mount -t tmpfs tmpfs /tmp
while read -r m; do
	insmod /lib/modules/` + release + `/$m.ko || echo "lvsha-vm: insmod $m failed"
done </etc/lvsha-vm/modules
ip link set lo up
export ` + GuestEnv + `=1
`)
	for _, e := range o.Env {
		k, v, _ := strings.Cut(e, "=")
		fmt.Fprintf(&s, "export %s=%s\n", k, shQuote(v))
	}
	fmt.Fprintf(&s, "cd /tmp\necho lvsha-vm-start %s\n%s", nonce, shQuote(guestBin))
	for _, a := range o.Args {
		s.WriteString(" " + shQuote(a))
	}
	fmt.Fprintf(&s, "\nrc=$?\necho\necho lvsha-vm-result %s $rc\npoweroff -f\n", nonce)
	c.File("init", 0o755, []byte(s.String()))
	if err := c.Close(); err != nil {
		return err
	}
	return f.Close()
}

// GuestOutput passes a run's console on to w line by line, without the
// kernel's messages ("[   1.234] ..."), this package's own markers
// ("lvsha-vm-...") and lines starting with any of drop: what is left is
// what the guest program printed.
func GuestOutput(w io.Writer, drop ...string) io.Writer {
	return &guestOutput{w: w, drop: append([]string{"[", "lvsha-vm-"}, drop...)}
}

type guestOutput struct {
	w    io.Writer
	drop []string
	buf  []byte
}

func (g *guestOutput) Write(p []byte) (int, error) {
	g.buf = append(g.buf, p...)
	for {
		i := bytes.IndexByte(g.buf, '\n')
		if i < 0 {
			return len(p), nil
		}
		line := strings.TrimRight(string(g.buf[:i]), "\r")
		g.buf = g.buf[i+1:]
		if slices.ContainsFunc(g.drop, func(d string) bool { return strings.HasPrefix(line, d) }) {
			continue
		}
		if _, err := fmt.Fprintln(g.w, line); err != nil {
			return 0, err
		}
	}
}
