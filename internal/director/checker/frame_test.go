package checker

import (
	"bytes"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"runtime"
	"strings"
	"testing"
	"time"

	"github.com/lvsha/lvsha/healthcheck"
)

// forged is a stream of one frame header claiming n bytes, then body.
func forged(n uint32, body string) io.Reader {
	var hdr [4]byte
	binary.BigEndian.PutUint32(hdr[:], n)
	return io.MultiReader(bytes.NewReader(hdr[:]), strings.NewReader(body))
}

// TestForgedFrameHeader: a header over the limit is refused before any
// read, and one under it allocates only what actually arrives.
func TestForgedFrameHeader(t *testing.T) {
	var m message
	for _, n := range []uint32{maxFrame + 1, 1<<32 - 1} {
		if err := newFrameReader(forged(n, "{}")).read(&m); err == nil || !strings.Contains(err.Error(), "over the") {
			t.Errorf("header of %d bytes: %v, want refused", n, err)
		}
	}

	// A header at the limit followed by a few bytes and the end.
	var before, after runtime.MemStats
	runtime.ReadMemStats(&before)
	err := newFrameReader(forged(maxFrame, `{"reply":1`)).read(&m)
	runtime.ReadMemStats(&after)
	if !errors.Is(err, io.ErrUnexpectedEOF) {
		t.Errorf("truncated frame: %v", err)
	}
	if got := after.TotalAlloc - before.TotalAlloc; got > 1<<20 {
		t.Errorf("reading a forged %d-byte header with 10 bytes behind it allocated %d bytes", maxFrame, got)
	}
}

// TestFrameRoundTrip: what writeFrame sends, read gets back, over a real
// socket; a message over the limit is refused and nothing is sent.
func TestFrameRoundTrip(t *testing.T) {
	a, b := net.Pipe()
	defer a.Close()
	defer b.Close()
	want := message{Reply: 7, Err: strings.Repeat("e", 100<<10)}
	go func() { _ = writeFrame(a, want) }()
	var got message
	if err := newFrameReader(b).read(&got); err != nil || got.Reply != want.Reply || got.Err != want.Err {
		t.Fatalf("round trip: %v, reply %d, %d bytes of error", err, got.Reply, len(got.Err))
	}
	var sink countingConn
	if err := writeFrame(&sink, message{Err: strings.Repeat("e", maxFrame)}); !errors.Is(err, errFrameTooBig) || sink.n != 0 {
		t.Errorf("oversized message: %v, %d bytes sent", err, sink.n)
	}
}

type countingConn struct {
	net.Conn
	n int
}

func (c *countingConn) Write(p []byte) (int, error) { c.n += len(p); return len(p), nil }

// TestLargestMessagesFit measures the largest legitimate messages at
// 10,000 targets: each must fit a frame with a margin of four.
func TestLargestMessagesFit(t *testing.T) {
	const n = 10000
	spec := &healthcheck.Spec{Type: healthcheck.TypeHTTPS, Path: "/health/deep/check", Method: "GET", Host: "service.example.org",
		Status: []healthcheck.StatusRange{{Lo: 200, Hi: 299}}, MaxBody: 64 << 10, TLSServerName: "service.example.org",
		Interval: time.Second, Timeout: time.Second, Rise: 2, Fall: 3, InitialUp: true}
	ts := make([]Target, n)
	for i := range ts {
		// 100 services of 100 real servers; IDs as conf makes them.
		svc := fmt.Sprintf("TCP 10.1.0.%d:443", i/100)
		addr := netip.AddrPortFrom(netip.AddrFrom4([4]byte{10, 2, byte(i >> 8), byte(i)}), 8443)
		ts[i] = Target{ID: svc + " -> " + addr.String(), Addr: addr, Spec: spec, Group: svc}
	}
	now := time.Now()
	update := encodeUpdate(ts, func(string) healthcheck.Resume { return healthcheck.Resume{Up: true, Since: now} })
	snap := make([]healthcheck.TargetState, n)
	for i := range snap {
		// 300 bytes: an exec check's output is cut at 256.
		snap[i] = healthcheck.TargetState{ID: ts[i].ID, Addr: ts[i].Addr, LastError: strings.Repeat("x", 300),
			LastCheck: now, LastChange: now, Checks: 1 << 40, Failures: 1 << 40}
	}
	st := &Stats{Durations: map[string]*Histogram{}}
	for _, t := range ts {
		st.Durations[t.Group] = &Histogram{Counts: make([]uint64, len(Buckets)), Sum: 1e9, Count: 1 << 40}
		for _, c := range healthcheck.FailureClasses {
			st.Failures = append(st.Failures, Failure{ID: t.ID, Reason: c, N: 1 << 40})
		}
	}
	for name, msg := range map[string]any{"update": update, "snapshot": message{Reply: 1 << 60, Snapshot: snap}, "stats": message{Reply: 1 << 60, Stats: st}} {
		b, err := json.Marshal(msg)
		if err != nil {
			t.Fatal(err)
		}
		t.Logf("%s of %d targets: %d bytes", name, n, len(b))
		if len(b) > maxFrame/4 {
			t.Errorf("%s of %d targets is %d bytes: over a quarter of the %d-byte frame limit", name, n, len(b), maxFrame)
		}
	}
}

// TestOversizedReplyIsAnError: a reply over the limit reaches the daemon
// as an error, and the checker process goes on serving (dropping the
// connection would make the daemon restart it at every ask). An unknown
// request's name is quoted into the reply, each DEL byte growing from one
// byte to five: a 7 MiB name makes a 35 MiB reply.
func TestOversizedReplyIsAnError(t *testing.T) {
	parent, child := net.Pipe()
	defer parent.Close()
	done := make(chan error, 1)
	go func() { done <- Serve(child, nil) }()
	_ = parent.SetReadDeadline(time.Now().Add(20 * time.Second))
	fr := newFrameReader(parent)
	go func() { _ = writeFrame(parent, request{ID: 1, Op: strings.Repeat("\x7f", 7<<20)}) }()
	var reply message
	if err := fr.read(&reply); err != nil || reply.Reply != 1 || !strings.Contains(reply.Err, errFrameTooBig.Error()) {
		t.Fatalf("reply %d %.100q, %v; want an error naming the limit", reply.Reply, reply.Err, err)
	}
	if len(reply.Err) > 1000 {
		t.Errorf("the error reply is %d bytes", len(reply.Err))
	}
	go func() { _ = writeFrame(parent, request{ID: 2, Op: "ping"}) }()
	var pong message
	if err := fr.read(&pong); err != nil || pong.Reply != 2 || pong.Err != "" {
		t.Fatalf("ping after the oversized reply: %+v %v", pong, err)
	}
	_ = parent.Close()
	if err := <-done; err != nil {
		t.Errorf("Serve: %v", err)
	}
}
