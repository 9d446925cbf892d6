package vrrp

import (
	"bytes"
	"context"
	"errors"
	"log/slog"
	"net"
	"os/exec"
	"strings"
	"sync"
	"time"
)

// notifier runs notify commands one after another, in the order of the
// transitions, on its own goroutine: a slow or hanging command delays only
// the commands after it (each has a timeout), never the VRRP loop.
type notifier struct {
	log      *slog.Logger
	start    func(*exec.Cmd) error
	mu       sync.Mutex
	timeout  time.Duration // a reload may change it
	queue    chan []string
	once     sync.Once
	finished chan struct{}
}

func newNotifier(log *slog.Logger, timeout time.Duration, start func(*exec.Cmd) error) *notifier {
	return &notifier{log: log, start: start, timeout: timeout, queue: make(chan []string, 64), finished: make(chan struct{})}
}

// setTimeout changes the timeout of the commands run from now on.
func (n *notifier) setTimeout(d time.Duration) {
	n.mu.Lock()
	n.timeout = d
	n.mu.Unlock()
}

// enqueue queues a command; if 64 are already waiting it is dropped (and
// logged) rather than blocking the caller.
func (n *notifier) enqueue(argv []string) {
	select {
	case n.queue <- argv:
	default:
		n.log.Error("vrrp: notify queue full, command dropped", "argv", strings.Join(argv, " "))
	}
}

// close ends the queue; run returns once the queued commands are done.
func (n *notifier) close() { n.once.Do(func() { close(n.queue) }) }

func (n *notifier) run(ctx context.Context) {
	defer close(n.finished)
	for argv := range n.queue {
		if ctx.Err() != nil {
			continue // drain without running
		}
		n.exec(ctx, argv)
	}
}

func (n *notifier) exec(ctx context.Context, argv []string) {
	n.mu.Lock()
	timeout := n.timeout
	n.mu.Unlock()
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	cmd := exec.CommandContext(ctx, argv[0], argv[1:]...)
	// A killed command's children may keep its output pipe open: do not
	// wait for them longer than this.
	cmd.WaitDelay = time.Second
	began := time.Now()
	var buf bytes.Buffer
	cmd.Stdout, cmd.Stderr = &buf, &buf
	err := n.start(cmd)
	if err == nil {
		err = cmd.Wait()
	}
	out := buf.Bytes()
	if len(out) > 1024 {
		out = out[:1024]
	}
	if err != nil {
		n.log.Warn("vrrp: notify command failed", "argv", strings.Join(argv, " "), "err", err,
			"took", time.Since(began), "output", string(out))
		return
	}
	n.log.Debug("vrrp: notify command done", "argv", strings.Join(argv, " "), "took", time.Since(began))
}

func isClosed(err error) bool { return errors.Is(err, net.ErrClosed) }
