package checker

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"os/exec"
	"runtime/debug"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/lvsha/lvsha/healthcheck"
)

// Timeouts of the supervision.
const (
	// callTimeout bounds a request the daemon waits for (an update on
	// reload); the child answers in milliseconds unless it is wedged.
	callTimeout = 10 * time.Second
	// pingEvery and pingTimeout: a child that does not answer a ping
	// within pingTimeout is killed and restarted.
	pingEvery   = 2 * time.Second
	pingTimeout = 10 * time.Second
	// stopTimeout is how long a child gets to exit after its socket closes.
	stopTimeout = 3 * time.Second
	// Restart delays: minBackoff after a crash, doubling to maxBackoff
	// while the child keeps dying within stableAfter of its start.
	minBackoff  = 100 * time.Millisecond
	maxBackoff  = 10 * time.Second
	stableAfter = 10 * time.Second
)

// ErrNoChild is returned by calls made while the checker process is being
// restarted.
var ErrNoChild = errors.New("health checker process not running")

// errIdle ends a child's supervision when the targets went away.
var errIdle = errors.New("no targets")

// Client runs the checker child process and talks to it. Create it with
// NewClient, call Update and Run.
type Client struct {
	log *slog.Logger
	cmd func() *exec.Cmd
	// pingEvery and pingTimeout are the consts, shorter in tests.
	pingEvery, pingTimeout time.Duration

	updMu   sync.Mutex // serialises updates, including the one a new child gets
	mu      sync.Mutex
	desired []Target
	// verdict is each target's UP/DOWN verdict in this process, by ID: its
	// initial state, then the last state the child reported, and since
	// when. The Client owns it: a restarted child resumes from it, and the
	// daemon reads it (Verdicts) for IPVS weights and status.
	verdict map[string]healthcheck.Resume
	child   *child

	qmu    sync.Mutex
	queue  []string                          // IDs with a transition not yet delivered, oldest first
	queued map[string]healthcheck.Transition // the latest transition of each queued ID
	kick   chan struct{}
	out    chan healthcheck.Transition
	// changed has a value after an Update: Run starts a child for the
	// first targets and stops it when none are left.
	changed chan struct{}

	reqID    atomic.Uint64
	restarts atomic.Uint64
}

// NewClient returns a Client whose child is started by cmd (see Command).
func NewClient(log *slog.Logger, cmd func() *exec.Cmd) *Client {
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	return &Client{log: log, cmd: cmd, pingEvery: pingEvery, pingTimeout: pingTimeout, verdict: map[string]healthcheck.Resume{}, queued: map[string]healthcheck.Transition{},
		kick: make(chan struct{}, 1), out: make(chan healthcheck.Transition), changed: make(chan struct{}, 1)}
}

// Transitions returns the state changes reported by the child, in order,
// at most one pending per target (a newer one replaces it). It is closed
// when Run returns.
func (c *Client) Transitions() <-chan healthcheck.Transition { return c.out }

// Restarts is the number of times the child was restarted.
func (c *Client) Restarts() uint64 { return c.restarts.Load() }

// Pid is the child's process ID, 0 while none runs.
func (c *Client) Pid() int {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.child == nil {
		return 0
	}
	return c.child.cmd.Process.Pid
}

// Update replaces the set of targets, as healthcheck.Manager.Update does.
// The set is handed to the child, or kept for the next child if none is
// running. The child's Manager checks it (the config was validated before):
// a set it refuses changes nothing.
func (c *Client) Update(targets []Target) error {
	c.updMu.Lock()
	defer c.updMu.Unlock()
	c.mu.Lock()
	prevDesired, prevVerdict := c.desired, c.verdict
	c.desired = targets
	c.verdict = make(map[string]healthcheck.Resume, len(targets))
	for _, t := range targets {
		v, ok := prevVerdict[t.ID]
		if !ok {
			v = healthcheck.Resume{Up: t.Spec.InitialUp}
		}
		c.verdict[t.ID] = v
	}
	c.mu.Unlock()
	defer func() {
		select {
		case c.changed <- struct{}{}:
		default:
		}
	}()
	ctx, cancel := context.WithTimeout(context.Background(), callTimeout)
	defer cancel()
	reply, err := c.call(ctx, encodeUpdate(targets, nil))
	switch {
	case errors.Is(err, ErrNoChild):
		return nil // the next child starts from desired
	case err != nil:
		c.log.Warn("health checks: update not confirmed by the checker process; its restart will apply it", "err", err)
		return nil
	case reply.Err != "":
		c.mu.Lock()
		c.desired, c.verdict = prevDesired, prevVerdict
		c.mu.Unlock()
		return fmt.Errorf("checker process: %s", reply.Err)
	}
	return nil
}

// wanted says whether a child should run: there are targets.
func (c *Client) wanted() bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	return len(c.desired) > 0
}

// Idle says that there are no targets, so no child runs or is missed.
func (c *Client) Idle() bool { return !c.wanted() }

// Snapshot returns the state of every target from the child (none, and no
// error, when there are no targets).
func (c *Client) Snapshot(ctx context.Context) ([]healthcheck.TargetState, error) {
	if c.Idle() {
		return nil, nil
	}
	reply, err := c.call(ctx, request{Op: "snapshot"})
	if err != nil {
		return nil, err
	}
	if reply.Err != "" {
		return nil, fmt.Errorf("checker process: %s", reply.Err)
	}
	return reply.Snapshot, nil
}

// Stats returns the child's check statistics (empty when there are no
// targets).
func (c *Client) Stats(ctx context.Context) (*Stats, error) {
	if c.Idle() {
		return &Stats{}, nil
	}
	reply, err := c.call(ctx, request{Op: "stats"})
	if err != nil {
		return nil, err
	}
	if reply.Err != "" {
		return nil, fmt.Errorf("checker process: %s", reply.Err)
	}
	if reply.Stats == nil {
		return nil, errors.New("checker process: empty stats reply")
	}
	return reply.Stats, nil
}

// Run starts the child and keeps one running until ctx is done, then
// closes its socket (the child stops its checks and exits) and returns.
func (c *Client) Run(ctx context.Context) error {
	defer close(c.out)
	fwdDone := make(chan struct{})
	fwdCtx, fwdStop := context.WithCancel(context.Background())
	go func() { defer close(fwdDone); c.forward(fwdCtx) }()
	defer func() { fwdStop(); <-fwdDone }()

	backoff := minBackoff
	for {
		// No targets, no process: a director without checks (VRRP
		// only, or real servers without checks) runs alone.
		for !c.wanted() {
			select {
			case <-ctx.Done():
				return nil
			case <-c.changed:
			}
		}
		started := time.Now()
		ch, err := c.start()
		if err != nil {
			c.log.Error("health checks: cannot start the checker process", "err", err, "retry_in", backoff)
		} else {
			err = c.supervise(ctx, ch)
			if ctx.Err() != nil {
				return nil
			}
			if errors.Is(err, errIdle) {
				c.log.Debug("health checks: no targets left; checker process stopped", "pid", ch.cmd.Process.Pid)
				backoff = minBackoff
				continue
			}
			c.log.Error("health checks: checker process stopped; restarting it", "pid", ch.cmd.Process.Pid, "err", err)
		}
		if time.Since(started) > stableAfter {
			backoff = minBackoff
		}
		select {
		case <-ctx.Done():
			return nil
		case <-time.After(backoff):
		}
		backoff = min(2*backoff, maxBackoff)
		c.restarts.Add(1)
	}
}

// child is one running checker process.
type child struct {
	cmd     *exec.Cmd
	conn    net.Conn
	wmu     sync.Mutex
	pmu     sync.Mutex
	pending map[uint64]chan message
	dead    chan struct{} // closed when the reader stops
	exited  chan error    // receives cmd.Wait's result
}

// start runs a child and gives it the current targets, with the verdicts
// reached so far as their starting states.
func (c *Client) start() (*child, error) {
	fds, err := syscall.Socketpair(syscall.AF_UNIX, syscall.SOCK_STREAM|syscall.SOCK_CLOEXEC, 0)
	if err != nil {
		return nil, fmt.Errorf("socketpair: %w", err)
	}
	mine, theirs := os.NewFile(uintptr(fds[0]), "checker"), os.NewFile(uintptr(fds[1]), "checker")
	conn, err := net.FileConn(mine)
	_ = mine.Close()
	if err != nil {
		_ = theirs.Close()
		return nil, fmt.Errorf("checker socket: %w", err)
	}
	cmd := c.cmd()
	cmd.ExtraFiles = []*os.File{theirs} // fd 3 in the child
	if cmd.Stderr == nil {
		cmd.Stderr = os.Stderr
	}
	err = cmd.Start()
	_ = theirs.Close()
	if err != nil {
		_ = conn.Close()
		return nil, fmt.Errorf("checker process: %w", err)
	}
	ch := &child{cmd: cmd, conn: conn, pending: map[uint64]chan message{},
		dead: make(chan struct{}), exited: make(chan error, 1)}
	go func() { ch.exited <- cmd.Wait() }()
	go c.read(ch)
	c.log.Debug("health checks: checker process started", "pid", cmd.Process.Pid)

	c.updMu.Lock()
	defer c.updMu.Unlock()
	c.mu.Lock()
	req := encodeUpdate(c.desired, func(id string) healthcheck.Resume { return c.verdict[id] })
	c.mu.Unlock()
	ctx, cancel := context.WithTimeout(context.Background(), callTimeout)
	defer cancel()
	reply, err := c.callChild(ctx, ch, req)
	if err == nil && reply.Err != "" {
		err = errors.New(reply.Err)
	}
	if err != nil {
		// The config these targets come from was validated, so this
		// is a broken child.
		_ = c.stopChild(ch, true)
		return nil, fmt.Errorf("checker process: initial targets: %w", err)
	}
	// Only now is it the child others talk to: its first request was
	// the targets.
	c.mu.Lock()
	c.child = ch
	c.mu.Unlock()
	// The request was this process's garbage of the start (about 1 MB
	// for 10,000 targets).
	debug.FreeOSMemory()
	return ch, nil
}

// supervise waits until the child dies, stops answering pings, or ctx is
// done; the child is gone when it returns.
func (c *Client) supervise(ctx context.Context, ch *child) error {
	tick := time.NewTicker(c.pingEvery)
	defer tick.Stop()
	var cause error
	wedged := false
loop:
	for {
		select {
		case <-ctx.Done():
			break loop
		case <-c.changed:
			if !c.wanted() {
				cause = errIdle
				break loop
			}
		case <-ch.dead:
			cause = errors.New("its socket closed")
			break loop
		case err := <-ch.exited:
			ch.exited <- err // for stopChild
			cause = fmt.Errorf("exited: %w", exitErr(err))
			break loop
		case <-tick.C:
			pctx, cancel := context.WithTimeout(ctx, c.pingTimeout)
			_, err := c.callChild(pctx, ch, request{Op: "ping"})
			cancel()
			if err != nil && ctx.Err() == nil {
				cause = fmt.Errorf("no answer to a ping: %w", err)
				wedged = true
				break loop
			}
		}
	}
	if err := c.stopChild(ch, wedged); cause != nil && cause != errIdle && err != nil {
		cause = fmt.Errorf("%w (%w)", cause, exitErr(err))
	}
	return cause
}

func exitErr(err error) error {
	if err == nil {
		return errors.New("exit status 0")
	}
	return err
}

// stopChild closes the child's socket, gives it stopTimeout to exit (none
// if it is wedged), then kills it; it returns what Wait returned.
func (c *Client) stopChild(ch *child, wedged bool) error {
	c.mu.Lock()
	if c.child == ch {
		c.child = nil
	}
	c.mu.Unlock()
	_ = ch.conn.Close()
	if wedged {
		_ = ch.cmd.Process.Kill()
	}
	select {
	case err := <-ch.exited:
		return err
	case <-time.After(stopTimeout):
		_ = ch.cmd.Process.Kill()
		return <-ch.exited
	}
}

// read dispatches the child's messages until its socket closes.
func (c *Client) read(ch *child) {
	defer func() {
		ch.pmu.Lock()
		close(ch.dead)
		ch.pmu.Unlock()
	}()
	fr := newFrameReader(ch.conn)
	for {
		var msg message
		if err := fr.read(&msg); err != nil {
			if !errors.Is(err, io.EOF) && !errors.Is(err, net.ErrClosed) {
				c.log.Error("health checks: bad message from the checker process", "err", err)
			}
			return
		}
		if msg.Reply != 0 {
			ch.pmu.Lock()
			w := ch.pending[msg.Reply]
			delete(ch.pending, msg.Reply)
			ch.pmu.Unlock()
			if w != nil {
				w <- msg
			}
			continue
		}
		if msg.Transition != nil {
			c.transition(*msg.Transition)
		}
	}
}

func (c *Client) call(ctx context.Context, req request) (message, error) {
	c.mu.Lock()
	ch := c.child
	c.mu.Unlock()
	if ch == nil {
		return message{}, ErrNoChild
	}
	return c.callChild(ctx, ch, req)
}

func (c *Client) callChild(ctx context.Context, ch *child, req request) (message, error) {
	req.ID = c.reqID.Add(1)
	w := make(chan message, 1)
	ch.pmu.Lock()
	select {
	case <-ch.dead:
		ch.pmu.Unlock()
		return message{}, ErrNoChild
	default:
	}
	ch.pending[req.ID] = w
	ch.pmu.Unlock()
	defer func() {
		ch.pmu.Lock()
		delete(ch.pending, req.ID)
		ch.pmu.Unlock()
	}()
	ch.wmu.Lock()
	if d, ok := ctx.Deadline(); ok {
		_ = ch.conn.SetWriteDeadline(d)
	}
	err := writeFrame(ch.conn, req)
	_ = ch.conn.SetWriteDeadline(time.Time{})
	ch.wmu.Unlock()
	if err != nil {
		return message{}, fmt.Errorf("checker process: %w", err)
	}
	select {
	case msg := <-w:
		return msg, nil
	case <-ch.dead:
		return message{}, ErrNoChild
	case <-ctx.Done():
		return message{}, fmt.Errorf("checker process: %s: %w", req.Op, ctx.Err())
	}
}
