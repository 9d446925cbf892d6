package e2e

import (
	"context"
	"fmt"
	"sort"
	"strings"
	"sync"
	"time"
)

// request is one request of a requestLoop.
type request struct {
	start, end time.Time
	body       string // "this is web1", ... when it succeeded
	err        error
}

func (r request) ok() bool { return r.err == nil }

// requestLoop is a client starting a request on a new connection every
// period, whether or not the earlier ones have finished (like a ping every
// 10 ms: one lost SYN must not hold up the probes after it), each bounded
// by a timeout, and recording every outcome.
type requestLoop struct {
	stopc chan struct{}
	done  chan struct{}

	mu   sync.Mutex
	recs []request // finished requests
}

// startLoop starts the loop. At most inFlight requests are open at once: a
// few are enough to keep probing through lost SYNs, and a bound keeps the
// client from swamping the (emulated, single) CPU the directors share.
func startLoop(ctx context.Context, c *client, period, timeout time.Duration, inFlight int) *requestLoop {
	l := &requestLoop{stopc: make(chan struct{}), done: make(chan struct{})}
	go func() {
		defer close(l.done)
		var wg sync.WaitGroup
		defer wg.Wait()
		sem := make(chan struct{}, inFlight)
		t := time.NewTicker(period)
		defer t.Stop()
		for {
			select {
			case sem <- struct{}{}:
				wg.Go(func() {
					defer func() { <-sem }()
					start := time.Now()
					body, err := c.get(ctx, timeout)
					l.mu.Lock()
					l.recs = append(l.recs, request{start: start, end: time.Now(), body: body, err: err})
					l.mu.Unlock()
				})
			default: // inFlight requests open: skip this tick
			}
			select {
			case <-l.stopc:
				return
			case <-ctx.Done():
				return
			case <-t.C:
			}
		}
	}()
	return l
}

// stop ends the loop and returns every request it made.
func (l *requestLoop) stop() []request {
	select {
	case <-l.stopc:
	default:
		close(l.stopc)
	}
	<-l.done
	return l.records()
}

// records returns the finished requests in the order they started.
func (l *requestLoop) records() []request {
	l.mu.Lock()
	rs := append([]request(nil), l.recs...)
	l.mu.Unlock()
	sort.SliceStable(rs, func(i, j int) bool { return rs[i].start.Before(rs[j].start) })
	return rs
}

// since returns the finished requests that started at or after t.
func (l *requestLoop) since(t time.Time) []request {
	var out []request
	for _, r := range l.records() {
		if !r.start.Before(t) {
			out = append(out, r)
		}
	}
	return out
}

// waitRequests waits until at least n requests that started at or after t
// have finished, and returns them.
func (l *requestLoop) waitRequests(ctx context.Context, what string, t time.Time, n int, timeout time.Duration, okOnly bool) ([]request, error) {
	var got []request
	_, err := waitFor(ctx, what, timeout, 10*time.Millisecond, func() error {
		got = l.since(t)
		if okOnly {
			got = successes(got)
		}
		if len(got) < n {
			return fmt.Errorf("%d of %d requests (%s)", len(got), n, summarize(l.since(t)))
		}
		return nil
	})
	return got, err
}

// medianLatency is the median time of the successful requests.
func medianLatency(rs []request) time.Duration {
	var ds []time.Duration
	for _, r := range rs {
		if r.ok() {
			ds = append(ds, r.end.Sub(r.start))
		}
	}
	if len(ds) == 0 {
		return 0
	}
	sort.Slice(ds, func(i, j int) bool { return ds[i] < ds[j] })
	return ds[len(ds)/2]
}

func successes(rs []request) []request {
	var out []request
	for _, r := range rs {
		if r.ok() {
			out = append(out, r)
		}
	}
	return out
}

// gap is the longest time without a successful reply.
type gap struct {
	Length   time.Duration
	From, To time.Time // the successful replies around it
	Failed   int       // failed requests started within it
}

// longestGap finds the longest time between two successive successful
// replies (by the time each reply arrived), and counts the failed requests
// that started within it. With fewer than two successes it returns false.
func longestGap(rs []request) (gap, bool) {
	var ends []time.Time
	for _, r := range rs {
		if r.ok() {
			ends = append(ends, r.end)
		}
	}
	if len(ends) < 2 {
		return gap{}, false
	}
	sort.Slice(ends, func(i, j int) bool { return ends[i].Before(ends[j]) })
	var best gap
	for i := 1; i < len(ends); i++ {
		if d := ends[i].Sub(ends[i-1]); d > best.Length || i == 1 {
			best = gap{Length: d, From: ends[i-1], To: ends[i]}
		}
	}
	for _, r := range rs {
		if !r.ok() && r.start.After(best.From) && r.start.Before(best.To) {
			best.Failed++
		}
	}
	return best, true
}

// alternates checks that consecutive replies differ and cover every one of
// want: what round robin over want looks like.
func alternates(bodies []string, want ...string) error {
	seen := map[string]int{}
	for i, b := range bodies {
		seen[b]++
		if i > 0 && b == bodies[i-1] {
			return fmt.Errorf("replies %d and %d both %q (want round robin): %s", i, i+1, b, strings.Join(bodies, ", "))
		}
	}
	for _, w := range want {
		if seen[w] == 0 {
			return fmt.Errorf("no reply %q (want round robin over %s): %s", w, strings.Join(want, ", "), strings.Join(bodies, ", "))
		}
	}
	if len(seen) != len(want) {
		return fmt.Errorf("replies from %d servers, want %d: %s", len(seen), len(want), strings.Join(bodies, ", "))
	}
	return nil
}

// balanced checks that replies came from every one of want and that no two
// counts differ by more than slack: round robin seen through overlapping
// requests.
func balanced(bodies []string, slack int, want ...string) error {
	seen := map[string]int{}
	for _, b := range bodies {
		seen[b]++
	}
	if len(seen) != len(want) {
		return fmt.Errorf("replies from %d servers, want %d (%s): %s", len(seen), len(want), strings.Join(want, ", "), strings.Join(bodies, ", "))
	}
	lo, hi := len(bodies), 0
	for _, w := range want {
		lo, hi = min(lo, seen[w]), max(hi, seen[w])
	}
	if hi-lo > slack {
		return fmt.Errorf("uneven split %v (want round robin within %d): %s", seen, slack, strings.Join(bodies, ", "))
	}
	return nil
}

func bodies(rs []request) []string {
	out := make([]string, len(rs))
	for i, r := range rs {
		out[i] = r.body
		if !r.ok() {
			out[i] = "error: " + r.err.Error()
		}
	}
	return out
}

// summarize counts outcomes: "12 requests: 5 web1, 5 web2, 2 failed (last
// error: ...)".
func summarize(rs []request) string {
	counts := map[string]int{}
	var order []string
	failed := 0
	var last error
	for _, r := range rs {
		if !r.ok() {
			failed++
			last = r.err
			continue
		}
		k := strings.TrimPrefix(r.body, "this is ")
		if counts[k] == 0 {
			order = append(order, k)
		}
		counts[k]++
	}
	parts := []string{fmt.Sprintf("%d requests", len(rs))}
	for _, k := range order {
		parts = append(parts, fmt.Sprintf("%d %s", counts[k], k))
	}
	if failed > 0 {
		parts = append(parts, fmt.Sprintf("%d failed (last: %v)", failed, last))
	}
	return strings.Join(parts, ", ")
}

// streamMark marks the first request that started at or after At with
// Label in a rendered stream.
type streamMark struct {
	At    time.Time
	Label string
}

// renderStream draws one character per request (1, 2, 3 for web1..web3,
// "." for a request without reply), with event marks in brackets, wrapped
// at width characters per line.
func renderStream(rs []request, width int, marks ...streamMark) string {
	var b strings.Builder
	col := 0
	put := func(s string) {
		if col+len(s) > width && col > 0 {
			b.WriteString("\n")
			col = 0
		}
		b.WriteString(s)
		col += len(s)
	}
	next := 0
	for _, r := range rs {
		for next < len(marks) && !r.start.Before(marks[next].At) {
			put("[" + marks[next].Label + "]")
			next++
		}
		c := "."
		if r.ok() {
			c = "?"
			if n := strings.TrimPrefix(r.body, "this is web"); len(n) == 1 {
				c = n
			}
		}
		put(c)
	}
	for ; next < len(marks); next++ {
		put("[" + marks[next].Label + "]")
	}
	return b.String()
}
