package e2e

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	"github.com/lvsha/lvsha/internal/director/control"
	"github.com/lvsha/lvsha/internal/testenv/netns"
	"github.com/lvsha/lvsha/lvs/atomicfile"
)

// director is one `lvsha -f FILE` daemon running in a director namespace.
type director struct {
	name   string
	node   *netns.Node
	lvsha  string // the binary
	config string // its config file
	socket string // its control socket
	logf   string // its stderr

	cmd     *exec.Cmd
	done    chan struct{} // closed when the process has exited
	waitErr error
}

func newDirector(name string, node *netns.Node, lvsha, dir string) *director {
	return &director{
		name:   name,
		node:   node,
		lvsha:  lvsha,
		config: filepath.Join(dir, name+".toml"),
		socket: filepath.Join("/run/lvsha", name+".sock"),
		logf:   filepath.Join(dir, name+".log"),
	}
}

// writeConfig replaces the config file atomically (a reload must never see
// half a file).
func (d *director) writeConfig(text string) error {
	if err := atomicfile.Write(d.config, []byte(text), 0o644); err != nil {
		return fmt.Errorf("%s: config: %w", d.name, err)
	}
	return nil
}

// checkConfig runs `lvsha -t` on the config, so a bad derived config fails
// with lvsha's own explanation.
func (d *director) checkConfig() (string, error) {
	out, err := d.node.Run(d.lvsha, "-t", "-f", d.config)
	if err != nil {
		return out, fmt.Errorf("%s: lvsha -t rejects %s: %w", d.name, d.config, err)
	}
	return strings.TrimSpace(out), nil
}

// start runs `lvsha -f CONFIG` inside the director's namespace.
func (d *director) start() error {
	logf, err := os.OpenFile(d.logf, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		return fmt.Errorf("%s: log file: %w", d.name, err)
	}
	cmd := exec.Command(d.lvsha, "-f", d.config)
	cmd.Stdout, cmd.Stderr = logf, logf
	if err := d.node.Start(cmd); err != nil {
		logf.Close()
		return fmt.Errorf("%s: start lvsha: %w", d.name, err)
	}
	d.cmd, d.done = cmd, make(chan struct{})
	go func() {
		d.waitErr = cmd.Wait()
		logf.Close()
		close(d.done)
	}()
	return nil
}

// exited reports whether the daemon is gone, and how it ended.
func (d *director) exited() (bool, error) {
	if d.done == nil {
		return true, nil
	}
	select {
	case <-d.done:
		return true, d.waitErr
	default:
		return false, nil
	}
}

// alive is a wait condition's guard: a daemon that died is a fatal error,
// not something to wait out.
func (d *director) alive() error {
	if gone, err := d.exited(); gone {
		return fatalf("%s: lvsha exited (%v); its log ends with:\n%s", d.name, err, d.logTail(20))
	}
	return nil
}

func (d *director) signal(sig syscall.Signal) error {
	if err := d.alive(); err != nil {
		return err
	}
	if err := d.cmd.Process.Signal(sig); err != nil {
		return fmt.Errorf("%s: send %v: %w", d.name, sig, err)
	}
	return nil
}

// waitExit waits until the process is gone.
func (d *director) waitExit(ctx context.Context, timeout time.Duration) error {
	select {
	case <-d.done:
		return nil
	case <-ctx.Done():
		return fmt.Errorf("%s: waiting for lvsha to exit: %w", d.name, ctx.Err())
	case <-time.After(timeout):
		return fmt.Errorf("%s: lvsha still running %v later", d.name, timeout)
	}
}

// stop ends the daemon cleanly (SIGTERM), killing it if it does not exit in
// time. For cleanup: it never fails.
func (d *director) stop(timeout time.Duration) {
	if gone, _ := d.exited(); gone {
		return
	}
	_ = d.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-d.done:
	case <-time.After(timeout):
		_ = d.cmd.Process.Kill()
		<-d.done
	}
}

// status asks the daemon over its control socket, the same request
// `lvsha status --json` makes, without starting a process (cheap enough to
// poll every few milliseconds under TCG).
func (d *director) status(ctx context.Context) (*control.Status, error) {
	if err := d.alive(); err != nil {
		return nil, err
	}
	ctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	st, err := control.QueryStatus(ctx, d.socket)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", d.name, err)
	}
	return st, nil
}

// statusCLI runs the real `lvsha status [--json]` in the director's
// namespace and returns its output.
func (d *director) statusCLI(jsonOut bool) (string, error) {
	args := []string{"status", "-S", d.socket}
	if jsonOut {
		args = append(args, "--json")
	}
	out, err := d.node.Run(d.lvsha, args...)
	if err != nil {
		return out, fmt.Errorf("%s: lvsha status: %w", d.name, err)
	}
	return out, nil
}

// statusJSON is `lvsha status --json`, decoded.
func (d *director) statusJSON() (*control.Status, error) {
	out, err := d.statusCLI(true)
	if err != nil {
		return nil, err
	}
	var st control.Status
	if err := json.Unmarshal([]byte(out), &st); err != nil {
		return nil, fmt.Errorf("%s: lvsha status --json: %w: %q", d.name, err, out)
	}
	return &st, nil
}

// logTail returns the last n lines of the daemon's log, indented, without
// the vrrp driver's "slow action" warnings (frequent and harmless under
// QEMU's emulated CPU), which it counts instead.
func (d *director) logTail(n int) string {
	b, err := os.ReadFile(d.logf)
	if err != nil {
		return "    (no log: " + err.Error() + ")"
	}
	var lines []string
	slow := 0
	for _, l := range strings.Split(strings.TrimRight(string(b), "\n"), "\n") {
		if strings.Contains(l, `msg="vrrp: slow action"`) {
			slow++
			continue
		}
		lines = append(lines, l)
	}
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return fmt.Sprintf("    (%d \"vrrp: slow action\" warnings left out)\n    %s", slow, strings.Join(lines, "\n    "))
}

// vrrpState returns the state of the daemon's (only) VRRP instance and the
// master it knows of.
func vrrpState(st *control.Status) (state, master string, err error) {
	if len(st.VRRP) != 1 {
		return "", "", fmt.Errorf("status has %d VRRP instances, want 1", len(st.VRRP))
	}
	return st.VRRP[0].State, st.VRRP[0].Master, nil
}

// real finds a real server in the daemon's (only) virtual service.
func findReal(st *control.Status, addr string) (control.RealStatus, bool) {
	for _, s := range st.Services {
		for _, r := range s.Reals {
			if r.Address == addr {
				return r, true
			}
		}
	}
	return control.RealStatus{}, false
}

// describeReals is a one-line summary of the service's real servers.
func describeReals(st *control.Status) string {
	var b bytes.Buffer
	for _, s := range st.Services {
		fmt.Fprintf(&b, "%s (in kernel: %v):", s.Key, s.InKernel)
		for _, r := range s.Reals {
			fmt.Fprintf(&b, " %s %s weight %d/%d;", r.Address, r.Health, r.Weight, r.KernelWeight)
		}
	}
	if st.IPVSError != "" {
		fmt.Fprintf(&b, " ipvs error: %s", st.IPVSError)
	}
	return b.String()
}
