package healthcheck

import (
	"bufio"
	"context"
	"errors"
	"io"
	"net/netip"
	"os"
	"runtime"
	"sync"
	"syscall"
	"time"

	"golang.org/x/sys/unix"
)

// The reactor runs plain http and tcp probes without a goroutine each: its
// start opens the non-blocking socket and registers it with one epoll
// instance; a single goroutine waits on it, writes the request, collects the
// response and judges it with the same parser as httpChecker.Check. Against
// a goroutine per probe on Go's poller this saves the per-probe goroutine,
// its stack, the poller registration and the park/unpark wake-ups: with
// 10,000 servers on this project's build machine about 110 instead of
// 125-160 µs of CPU per check (most of either is the kernel's TCP work) and
// 3 goroutines instead of up to maxInFlight. https (crypto/tls wants a
// net.Conn) and exec keep their goroutine.

// prober is implemented by the checkers the reactor can run.
type prober interface {
	// reactorOK reports whether the reactor can run this check.
	reactorOK() bool
	// probe returns the address to connect to and the request to send,
	// appended to buf (none: connecting is the whole check).
	probe(buf []byte, target netip.AddrPort) (addr netip.AddrPort, req []byte)
	// judge decides on the response bytes received so far; errNeedMore
	// asks for more (eof: the server has closed, no more will come).
	judge(resp []byte, eof bool) error
}

var errNeedMore = errors.New("need more data")

func (c *tcpChecker) reactorOK() bool { return true }

func (c *tcpChecker) probe(buf []byte, target netip.AddrPort) (netip.AddrPort, []byte) {
	return probeAddr(target, c.port), buf[:0]
}

func (c *tcpChecker) judge([]byte, bool) error { return nil }

func (c *httpChecker) reactorOK() bool { return c.tls == nil }

func (c *httpChecker) probe(buf []byte, target netip.AddrPort) (netip.AddrPort, []byte) {
	addr := probeAddr(target, c.spec.Port)
	buf = append(buf[:0], c.reqPrefix...)
	buf = c.appendHost(buf, addr)
	return addr, append(buf, c.reqSuffix...)
}

func (c *httpChecker) judge(resp []byte, eof bool) error {
	br := readerPool.Get().(*bufio.Reader)
	br.Reset(&partialReader{b: resp, eof: eof})
	defer func() { br.Reset(nil); readerPool.Put(br) }()
	return c.readResponse(br)
}

// maxResponse bounds what the reactor buffers for one response: headers
// plus the body bytes a check may read, with room for chunk framing.
func maxResponse(p prober) int {
	if c, ok := p.(*httpChecker); ok {
		return maxHeaderBytes + 2*int(c.spec.MaxBody) + 4096
	}
	return 0
}

// partialReader reads the bytes received so far and then reports
// errNeedMore, or io.EOF once the server has closed.
type partialReader struct {
	b   []byte
	eof bool
}

func (r *partialReader) Read(p []byte) (int, error) {
	if len(r.b) == 0 {
		if r.eof {
			return 0, io.EOF
		}
		return 0, errNeedMore
	}
	n := copy(p, r.b)
	r.b = r.b[n:]
	return n, nil
}

type probeState struct {
	id        uint32
	fd        int
	p         prober
	req       []byte
	connected bool
	resp      []byte
	max       int
	stage     string // for a timeout: what was awaited
	deadline  time.Time
	started   time.Time
	tag       any    // the caller's, handed back to done
	reqBuf    []byte // holds req; kept when the state is recycled
}

// probePool recycles probe states: one a check is garbage the GC would
// otherwise collect 10,000 times a second.
var probePool = sync.Pool{New: func() any { return new(probeState) }}

// finishProbe reports a probe's outcome and recycles its state; the probe
// is out of the map and its descriptor closed.
func (rx *reactor) finishProbe(ps *probeState, err error) {
	putResp(ps.resp)
	tag, started, buf := ps.tag, ps.started, ps.reqBuf
	*ps = probeState{reqBuf: buf[:0]}
	probePool.Put(ps)
	rx.done(tag, err, started)
}

// reactor owns an epoll instance and the probes registered with it.
//
// The loop never blocks in epoll_wait: the epoll descriptor is itself
// registered with the Go runtime's poller (it is readable while any probe
// has an event), and the loop parks there, asking epoll with a zero
// timeout once woken. A goroutine blocked in a system call keeps its
// thread in the syscall state, and the runtime's sysmon, seeing that, polls
// every 20 µs to hand the P elsewhere: that alone was a third of lvsha's
// CPU with 300 servers.
type reactor struct {
	epfd   int
	epf    *os.File // epfd, as the poller knows it; closing it closes epfd
	epc    syscall.RawConn
	mu     sync.Mutex
	probes map[uint32]*probeState
	nextID uint32
	stop   bool
	// wake is the read deadline set on epf to wake the loop for probe
	// deadlines: never after the earliest one, and zero when no probe is
	// in flight. It may be earlier (that probe finished since): waking
	// then costs a scan, which sets the next one.
	wake time.Time
	wg   sync.WaitGroup
	// done receives each probe's outcome (from the loop, or from start or
	// cancel themselves), with the tag given to start and its start time.
	done func(tag any, err error, started time.Time)
}

func newReactor(done func(tag any, err error, started time.Time)) (*reactor, error) {
	fd, err := syscall.EpollCreate1(syscall.EPOLL_CLOEXEC)
	if err != nil {
		return nil, os.NewSyscallError("epoll_create1", err)
	}
	// Non-blocking, so that os.NewFile hands it to the runtime's poller.
	if err := syscall.SetNonblock(fd, true); err != nil {
		syscall.Close(fd)
		return nil, os.NewSyscallError("fcntl", err)
	}
	f := os.NewFile(uintptr(fd), "epoll")
	rc, err := f.SyscallConn()
	if err != nil {
		f.Close()
		return nil, err
	}
	rx := &reactor{epfd: fd, epf: f, epc: rc, probes: make(map[uint32]*probeState), done: done}
	rx.wg.Go(rx.loop)
	return rx, nil
}

// noID is never a probe's id.
const noID = 0

// wakeBy makes the loop wake at t at the latest. Called with mu held.
func (rx *reactor) wakeBy(t time.Time) {
	if rx.wake.IsZero() || t.Before(rx.wake) {
		rx.wake = t
		_ = rx.epf.SetReadDeadline(t)
	}
}

// close stops the loop; probes still registered are failed with
// context.Canceled.
func (rx *reactor) close() {
	rx.mu.Lock()
	rx.stop = true
	_ = rx.epf.SetReadDeadline(time.Unix(1, 0)) // wakes the loop now
	var left []*probeState
	for _, ps := range rx.probes {
		left = append(left, ps)
	}
	clear(rx.probes)
	rx.mu.Unlock()
	rx.wg.Wait()
	for _, ps := range left {
		rawClose(ps.fd)
		rx.finishProbe(ps, context.Canceled)
	}
	rx.epf.Close()
}

// start begins p's probe of target. rx.done is called exactly once with
// tag and the outcome, possibly before start returns (then the id is 0).
// The id ends the probe early through cancel.
func (rx *reactor) start(p prober, target netip.AddrPort, via dialVia, timeout time.Duration, tag any) (id uint32) {
	now := time.Now()
	ps := probePool.Get().(*probeState)
	addr, req := p.probe(ps.reqBuf, target)
	*ps = probeState{p: p, req: req, reqBuf: req, max: maxResponse(p), stage: "connect",
		deadline: now.Add(timeout), started: now, tag: tag}
	if len(req) == 0 {
		ps.req = nil
	}
	fd, err := connectNonblock(addr, via)
	if err != nil {
		rx.finishProbe(ps, stage("connect", err))
		return 0
	}
	ps.fd = fd
	rx.mu.Lock()
	if rx.stop {
		rx.mu.Unlock()
		rawClose(fd)
		rx.finishProbe(ps, context.Canceled)
		return 0
	}
	rx.nextID++
	if rx.nextID == noID {
		rx.nextID++
	}
	ps.id = rx.nextID
	rx.wakeBy(ps.deadline) // the loop may be waiting for a later one, or none
	rx.probes[ps.id] = ps
	// Edge-triggered, so each event is handled completely. The probe id,
	// not the fd, identifies the probe: an event for a closed and reused
	// descriptor number is then simply stale.
	ev := syscall.EpollEvent{Events: syscall.EPOLLIN | syscall.EPOLLOUT | syscall.EPOLLRDHUP | epollET, Pad: int32(ps.id)}
	if err := rawEpollCtl(rx.epfd, syscall.EPOLL_CTL_ADD, fd, &ev); err != nil {
		delete(rx.probes, ps.id)
		rx.mu.Unlock()
		rawClose(fd)
		rx.finishProbe(ps, stage("connect", os.NewSyscallError("epoll_ctl", err)))
		return 0
	}
	id = ps.id
	rx.mu.Unlock()
	return id
}

// cancel ends probe id with context.Canceled, unless it has ended already.
func (rx *reactor) cancel(id uint32) {
	rx.mu.Lock()
	ps, ok := rx.probes[id]
	if ok {
		delete(rx.probes, id)
	}
	rx.mu.Unlock()
	if ok {
		rawClose(ps.fd)
		rx.finishProbe(ps, context.Canceled)
	}
}

const epollET = 1 << 31 // EPOLLET as the uint32 bit

type finished struct {
	ps  *probeState
	err error
}

func (rx *reactor) loop() {
	events := make([]syscall.EpollEvent, 128)
	var out []finished
	for {
		n := 0
		// The callback asks epoll without waiting; returning false parks
		// the goroutine in the runtime's poller until epfd is readable or
		// the read deadline (the earliest probe deadline) passes.
		err := rx.epc.Read(func(fd uintptr) bool {
			n = rawEpollWait(int(fd), events)
			return n > 0
		})
		now := time.Now()
		rx.mu.Lock()
		if rx.stop {
			rx.mu.Unlock()
			return
		}
		for _, ev := range events[:n] {
			ps := rx.probes[uint32(ev.Pad)]
			if ps == nil {
				continue // finished or cancelled already
			}
			if err, end := rx.handle(ps, ev.Events); end {
				delete(rx.probes, ps.id)
				out = append(out, finished{ps, err})
			}
		}
		// The wake time passed (err is the poller's deadline error, but
		// a reactor busy with events may not see one): fail the probes
		// past their deadline and wake for the earliest of the others.
		if err != nil || (!rx.wake.IsZero() && !now.Before(rx.wake)) {
			rx.wake = time.Time{}
			var next time.Time
			for id, ps := range rx.probes {
				if !now.Before(ps.deadline) {
					delete(rx.probes, id)
					out = append(out, finished{ps, stage(ps.stage, os.ErrDeadlineExceeded)})
				} else if next.IsZero() || ps.deadline.Before(next) {
					next = ps.deadline
				}
			}
			if next.IsZero() {
				_ = rx.epf.SetReadDeadline(time.Time{})
			} else {
				rx.wakeBy(next)
			}
		}
		rx.mu.Unlock()
		if n == len(events) {
			// More are waiting: the loop would go on without parking.
			// Let the others (VRRP above all, on a single P) run first.
			runtime.Gosched()
		}
		for i, f := range out {
			rawClose(f.ps.fd)
			rx.finishProbe(f.ps, f.err)
			out[i] = finished{}
		}
		out = out[:0]
	}
}

// handle advances a probe on an event; end reports that it is decided.
func (rx *reactor) handle(ps *probeState, events uint32) (err error, end bool) {
	if !ps.connected {
		if events&(syscall.EPOLLOUT|syscall.EPOLLERR|syscall.EPOLLHUP) == 0 {
			return nil, false
		}
		n, gerr := rawSockError(ps.fd)
		switch {
		case gerr != nil:
			return stage("connect", os.NewSyscallError("getsockopt", gerr)), true
		case n != 0:
			return stage("connect", os.NewSyscallError("connect", syscall.Errno(n))), true
		case events&syscall.EPOLLOUT == 0:
			return nil, false
		}
		ps.connected = true
		ps.stage = "sending request"
		if ps.req == nil {
			return nil, true // tcp: connected is enough
		}
	}
	for len(ps.req) > 0 {
		// MSG_NOSIGNAL: a peer that reset must not raise SIGPIPE.
		n, werr := rawSend(ps.fd, ps.req, unix.MSG_NOSIGNAL)
		if werr == unix.EINTR {
			continue
		}
		if werr == unix.EAGAIN {
			return nil, false // the next EPOLLOUT edge resumes
		}
		if werr != nil {
			return stage("sending request", os.NewSyscallError("send", werr)), true
		}
		ps.req = ps.req[n:]
		if len(ps.req) == 0 {
			ps.stage = "waiting for response"
		}
	}
	// Judge after every read: a response normally arrives in one, and a
	// huge body is cut off as soon as enough of it is here.
	for {
		if len(ps.resp) == cap(ps.resp) {
			if ps.resp == nil {
				ps.resp = (*respPool.Get().(*[]byte))[:0]
			} else {
				next := make([]byte, len(ps.resp), min(2*cap(ps.resp), ps.max))
				copy(next, ps.resp)
				putResp(ps.resp)
				ps.resp = next
			}
		}
		n, rerr := rawRead(ps.fd, ps.resp[len(ps.resp):cap(ps.resp)])
		if rerr == syscall.EAGAIN {
			return nil, false
		}
		if rerr == syscall.EINTR {
			continue
		}
		if rerr != nil {
			return stage(ps.stage, os.NewSyscallError("read", rerr)), true
		}
		eof := n == 0
		ps.resp = ps.resp[:len(ps.resp)+n]
		jerr := ps.p.judge(ps.resp, eof)
		if !errors.Is(jerr, errNeedMore) {
			return jerr, true
		}
		var se *stageError
		if errors.As(jerr, &se) {
			ps.stage = se.stage
		}
		if len(ps.resp) >= ps.max {
			return errors.New("response framing too large to judge"), true
		}
	}
}

// respPool holds response buffers of the reactor's probes.
var respPool = sync.Pool{New: func() any { b := make([]byte, 0, readBufSize); return &b }}

func putResp(b []byte) {
	if cap(b) == readBufSize {
		b = b[:0]
		respPool.Put(&b)
	}
}
