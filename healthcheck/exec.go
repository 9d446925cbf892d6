package healthcheck

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"net/netip"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"syscall"
	"time"
)

// execChecker runs a command without a shell (RunCommand); exit status 0
// means healthy.
type execChecker struct {
	argv  []string
	port  uint16
	start func(*exec.Cmd) error // nil: exec.Cmd.Start
}

// maxExecOutput is how much of the command's output is kept for the reason.
const maxExecOutput = 256

// cappedBuffer keeps the first maxExecOutput bytes written to it.
type cappedBuffer struct{ bytes.Buffer }

func (b *cappedBuffer) Write(p []byte) (int, error) {
	if room := maxExecOutput - b.Len(); room > 0 {
		b.Buffer.Write(p[:min(room, len(p))])
	}
	return len(p), nil
}

func (c *execChecker) Check(ctx context.Context, target netip.AddrPort) error {
	addr := probeAddr(target, c.port)
	return RunCommand(ctx, c.argv, []string{
		"LVSHA_RS_ADDR=" + addr.Addr().String(),
		"LVSHA_RS_PORT=" + strconv.Itoa(int(addr.Port())),
	}, c.start)
}

// RunCommand runs argv without a shell, with env added to the environment,
// and returns nil if it exits 0, else why not (its exit status and the
// start of its output). The command gets its own process group: when ctx
// ends the whole group (children of a script too) is killed, and whatever
// it left behind is killed when it exits; it is killed as well if the
// caller dies. start starts it (nil: exec.Cmd.Start). Exec checks and the
// director's tracked scripts both run their commands with it.
func RunCommand(ctx context.Context, argv, env []string, start func(*exec.Cmd) error) error {
	cmd := exec.CommandContext(ctx, argv[0], argv[1:]...)
	cmd.Env = append(os.Environ(), env...)
	var out cappedBuffer
	cmd.Stdout, cmd.Stderr = &out, &out
	// Pdeathsig: if the caller (the checker process, or the daemon for a
	// tracked script) dies or is killed as wedged mid-run, the command dies too instead of running on with nobody to time it
	// out. It fires when the forking thread exits, and Go ends a thread
	// only when a goroutine locked to it returns, which neither this nor
	// process.ChildStarter's spawner thread does.
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
	cmd.Cancel = func() error { return killGroup(cmd) }
	// A grandchild that keeps the output pipe open must not hold Wait.
	cmd.WaitDelay = 100 * time.Millisecond

	if start == nil {
		start = (*exec.Cmd).Start
	}
	err := start(cmd)
	if err == nil {
		err = cmd.Wait()
	}
	if cmd.Process != nil {
		_ = killGroup(cmd)
	}
	if ctxErr := ctx.Err(); ctxErr != nil {
		return stage("running "+argv[0], ctxErr)
	}
	if err == nil {
		return nil
	}
	var exitErr *exec.ExitError
	if errors.As(err, &exitErr) {
		msg := exitErr.Error() // "exit status 2" or "signal: killed"
		if o := strings.TrimSpace(out.String()); o != "" {
			msg += ": " + strings.ReplaceAll(o, "\n", " ")
		}
		return errors.New(msg)
	}
	return fmt.Errorf("exec %s: %w", argv[0], err)
}

// killGroup sends SIGKILL to the command's process group (its pgid is its
// pid because of Setpgid).
func killGroup(cmd *exec.Cmd) error {
	err := syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL)
	if errors.Is(err, syscall.ESRCH) {
		return os.ErrProcessDone
	}
	return err
}
