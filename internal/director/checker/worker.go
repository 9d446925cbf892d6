package checker

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"runtime/debug"
	"sort"
	"sync"
	"syscall"
	"time"

	"github.com/lvsha/lvsha/healthcheck"
)

// Serve is the child's side: it runs the health checks of the targets the
// parent sends on conn and answers its requests, until conn reaches EOF
// (the parent closed it or died). opts are passed to the Manager.
func Serve(conn net.Conn, log *slog.Logger, opts ...healthcheck.Option) error {
	w := &worker{conn: conn, group: map[string]string{},
		hist: map[string]*hist{}, fails: map[failKey]uint64{}}
	m := healthcheck.NewManager(log, append(opts, healthcheck.WithObserver(w.observe))...)
	ctx, cancel := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	wg.Go(func() { _ = m.Run(ctx) })
	wg.Go(func() {
		for tr := range m.Transitions() {
			if err := w.send(message{Transition: &tr}); err != nil {
				// The parent is gone; the reader below sees it too.
				cancel()
			}
		}
	})
	defer func() {
		cancel()
		wg.Wait()
	}()

	fr := newFrameReader(conn)
	for {
		var req request
		if err := fr.read(&req); err != nil {
			if errors.Is(err, io.EOF) || errors.Is(err, net.ErrClosed) || errors.Is(err, syscall.ECONNRESET) {
				return nil // the daemon closed the socket or died
			}
			return fmt.Errorf("checker: reading from the daemon: %w", err)
		}
		reply := message{Reply: req.ID}
		switch req.Op {
		case "update":
			if err := w.update(m, req); err != nil {
				reply.Err = err.Error()
			}
		case "snapshot":
			reply.Snapshot = m.Snapshot()
			if reply.Snapshot == nil {
				reply.Snapshot = []healthcheck.TargetState{}
			}
		case "stats":
			reply.Stats = w.stats()
		case "ping":
		default:
			reply.Err = fmt.Sprintf("unknown request %q", req.Op)
		}
		err := w.send(reply)
		if errors.Is(err, errFrameTooBig) {
			// Nothing was sent: say so rather than drop the connection
			// (the daemon would restart this process at every ask).
			err = w.send(message{Reply: req.ID, Err: fmt.Sprintf("%.40q reply: %v", req.Op, err)})
		}
		if err != nil {
			if errors.Is(err, syscall.EPIPE) || errors.Is(err, syscall.ECONNRESET) {
				return nil // the daemon is gone
			}
			return fmt.Errorf("checker: writing to the daemon: %w", err)
		}
	}
}

type failKey struct{ id, class string }

type hist struct {
	counts []uint64 // per bucket, not cumulative; the last is +Inf
	sum    float64
	n      uint64
}

type worker struct {
	conn  net.Conn
	wmu   sync.Mutex
	smu   sync.Mutex
	group map[string]string // target ID -> group
	hist  map[string]*hist  // by group
	fails map[failKey]uint64
}

func (w *worker) send(msg message) error {
	w.wmu.Lock()
	defer w.wmu.Unlock()
	return writeFrame(w.conn, msg)
}

func (w *worker) update(m *healthcheck.Manager, req request) error {
	ts, group, err := decodeUpdate(req)
	if err != nil {
		return err
	}
	if err := m.Update(ts); err != nil {
		return err
	}
	w.smu.Lock()
	w.group = group
	// Counters of targets that are gone would otherwise pile up over
	// reloads.
	for k := range w.fails {
		if _, ok := group[k.id]; !ok {
			delete(w.fails, k)
		}
	}
	w.smu.Unlock()
	// The decoded request (about 1 MB for 10,000 targets) is the child's
	// one burst of garbage: give it back now, not when the scavenger
	// gets to it.
	debug.FreeOSMemory()
	return nil
}

// observe is the Manager's observer: it runs after every check, on the
// scheduling goroutine.
func (w *worker) observe(id string, took time.Duration, class string) {
	w.smu.Lock()
	defer w.smu.Unlock()
	g, ok := w.group[id]
	if !ok {
		return // removed by an update since the check started
	}
	h := w.hist[g]
	if h == nil {
		h = &hist{counts: make([]uint64, len(Buckets)+1)}
		w.hist[g] = h
	}
	sec := took.Seconds()
	i := sort.SearchFloat64s(Buckets, sec) // first bound >= sec
	h.counts[i]++
	h.sum += sec
	h.n++
	if class != "" {
		w.fails[failKey{id, class}]++
	}
}

func (w *worker) stats() *Stats {
	w.smu.Lock()
	defer w.smu.Unlock()
	st := &Stats{Durations: make(map[string]*Histogram, len(w.hist))}
	for g, h := range w.hist {
		out := &Histogram{Counts: make([]uint64, len(Buckets)), Sum: h.sum, Count: h.n}
		var cum uint64
		for i := range Buckets {
			cum += h.counts[i]
			out.Counts[i] = cum
		}
		st.Durations[g] = out
	}
	for k, n := range w.fails {
		st.Failures = append(st.Failures, Failure{ID: k.id, Reason: k.class, N: n})
	}
	sort.Slice(st.Failures, func(i, j int) bool {
		a, b := st.Failures[i], st.Failures[j]
		return a.ID < b.ID || a.ID == b.ID && a.Reason < b.Reason
	})
	return st
}
