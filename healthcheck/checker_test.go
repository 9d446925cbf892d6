package healthcheck

import (
	"context"
	"crypto/tls"
	"encoding/pem"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"net/netip"
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/lvsha/lvsha/internal/testenv/testutil"
)

// testTimeout is generous so that a loaded machine (make test runs all
// packages at once) does not turn a quick verdict into a timeout; tests that
// expect a timeout use shortTimeout.
const (
	testTimeout  = 10 * time.Second
	shortTimeout = 300 * time.Millisecond
)

func addrOf(t *testing.T, s string) netip.AddrPort {
	t.Helper()
	s = strings.TrimPrefix(strings.TrimPrefix(s, "http://"), "https://")
	ap, err := netip.ParseAddrPort(s)
	if err != nil {
		t.Fatal(err)
	}
	return ap
}

// check runs one check of spec against target with the test timeout.
func check(t *testing.T, spec Spec, target netip.AddrPort) error {
	t.Helper()
	return checkWithin(t, spec, target, testTimeout)
}

func checkWithin(t *testing.T, spec Spec, target netip.AddrPort, timeout time.Duration) error {
	t.Helper()
	c, err := NewChecker(complete(spec))
	if err != nil {
		t.Fatalf("NewChecker: %v", err)
	}
	ctx, cancel := context.WithTimeout(t.Context(), timeout)
	defer cancel()
	err = c.Check(ctx, target)
	// Plain http and tcp checks run on the Manager's epoll reactor: the
	// same probe there must reach the same verdict for the same reason.
	if p, ok := c.(prober); ok && p.reactorOK() {
		rerr := reactorCheck(t, p, target, timeout)
		if got, want := Reason(rerr, timeout), Reason(err, timeout); got != want {
			t.Errorf("reactor: %q (%v), goroutine: %q (%v)", got, rerr, want, err)
		}
	}
	return err
}

// reactorCheck runs one probe on a reactor of its own.
func reactorCheck(t *testing.T, p prober, target netip.AddrPort, timeout time.Duration) error {
	t.Helper()
	done := make(chan error, 1)
	rx, err := newReactor(func(tag any, err error, _ time.Time) {
		if tag != "probe" {
			t.Errorf("tag %v, want the one given to start", tag)
		}
		done <- err
	})
	if err != nil {
		t.Fatal(err)
	}
	defer rx.close()
	rx.start(p, target, dialVia{}, timeout, "probe")
	return <-done
}

// checkShort runs a check that is expected to time out and returns its reason.
func checkShort(t *testing.T, spec Spec, target netip.AddrPort) string {
	t.Helper()
	return Reason(checkWithin(t, spec, target, shortTimeout), shortTimeout)
}

func wantShort(t *testing.T, got, want string) {
	t.Helper()
	if got != want {
		t.Fatalf("reason = %q, want %q", got, want)
	}
}

func wantReason(t *testing.T, err error, want string) {
	t.Helper()
	if got := Reason(err, testTimeout); got != want {
		t.Fatalf("reason = %q (err %v), want %q", got, err, want)
	}
}

// refusedAddr returns a loopback address where nothing listens.
func refusedAddr(t *testing.T) netip.AddrPort {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	ap := addrOf(t, l.Addr().String())
	l.Close()
	return ap
}

// rawServer accepts connections on loopback and hands each to serve.
func rawServer(t *testing.T, serve func(net.Conn)) netip.AddrPort {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	var wg sync.WaitGroup
	t.Cleanup(func() { l.Close(); wg.Wait() })
	wg.Go(func() {
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			wg.Go(func() { defer c.Close(); serve(c) })
		}
	})
	return addrOf(t, l.Addr().String())
}

// readRequest consumes one request head from c.
func readRequest(c net.Conn) (string, error) {
	buf := make([]byte, 0, 1024)
	tmp := make([]byte, 512)
	for !strings.Contains(string(buf), "\r\n\r\n") {
		n, err := c.Read(tmp)
		buf = append(buf, tmp[:n]...)
		if err != nil {
			return string(buf), err
		}
	}
	return string(buf), nil
}

func TestHTTPStatus(t *testing.T) {
	var hits atomic.Int64
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		hits.Add(1)
		code, _ := strconv.Atoi(strings.TrimPrefix(r.URL.Path, "/"))
		w.WriteHeader(code)
		fmt.Fprintf(w, "code %d\n", code)
	}))
	defer srv.Close()
	target := addrOf(t, srv.URL)
	for _, tc := range []struct {
		path   string
		status string
		want   string
	}{
		{"/200", "", "ok"},
		{"/204", "", "ok"},
		{"/299", "", "ok"},
		{"/503", "", "status 503"},
		{"/404", "", "status 404"},
		{"/404", "200,404", "ok"},
		{"/503", "200-299, 500-502", "status 503"},
		{"/502", "200-299, 500-502", "ok"},
	} {
		t.Run(tc.path+"_"+tc.status, func(t *testing.T) {
			spec := Spec{Type: TypeHTTP, Path: tc.path}
			if tc.status != "" {
				r, err := parseRanges(tc.status)
				if err != nil {
					t.Fatal(err)
				}
				spec.Status = r
			}
			wantReason(t, check(t, spec, target), tc.want)
		})
	}
	if hits.Load() != 16 { // each case by Check and by the reactor
		t.Errorf("server saw %d requests, want 16", hits.Load())
	}
}

func TestHTTPRequestShape(t *testing.T) {
	var mu sync.Mutex
	var got []*http.Request
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		mu.Lock()
		got = append(got, r)
		mu.Unlock()
		io.WriteString(w, "hello")
	}))
	defer srv.Close()
	target := addrOf(t, srv.URL)
	if err := check(t, Spec{Type: TypeHTTP, Path: "/health?x=1", Method: "HEAD", Host: "www.example.com"}, target); err != nil {
		t.Fatal(err)
	}
	if err := check(t, Spec{Type: TypeHTTP}, target); err != nil {
		t.Fatal(err)
	}
	mu.Lock()
	defer mu.Unlock()
	if len(got) != 4 { // each by Check and by the reactor
		t.Fatalf("%d requests", len(got))
	}
	for _, r := range got[:2] {
		if r.Method != "HEAD" || r.Host != "www.example.com" || r.URL.RequestURI() != "/health?x=1" {
			t.Errorf("first check: %s %s Host %s", r.Method, r.URL, r.Host)
		}
	}
	for _, r := range got[2:] {
		if r.Method != "GET" || r.Host != target.String() || r.URL.Path != "/" {
			t.Errorf("second check: %s %s Host %s", r.Method, r.URL, r.Host)
		}
	}
	// No connection reuse: each check dialled anew.
	seen := map[string]bool{}
	for _, r := range got {
		if seen[r.RemoteAddr] {
			t.Errorf("two checks came from %s: connection reused", r.RemoteAddr)
		}
		seen[r.RemoteAddr] = true
	}
}

func TestHTTPRefused(t *testing.T) {
	wantReason(t, check(t, Spec{Type: TypeHTTP}, refusedAddr(t)), "connection refused")
	wantReason(t, check(t, Spec{Type: TypeTCP}, refusedAddr(t)), "connection refused")
}

func TestHTTPAcceptNeverAnswer(t *testing.T) {
	target := rawServer(t, func(c net.Conn) { io.Copy(io.Discard, c) })
	wantShort(t, checkShort(t, Spec{Type: TypeHTTP}, target), "timeout after 300ms (waiting for response)")
	// TCP only needs the connect.
	wantReason(t, check(t, Spec{Type: TypeTCP}, target), "ok")

}

func TestHTTPStalledBody(t *testing.T) {
	target := rawServer(t, func(c net.Conn) {
		if _, err := readRequest(c); err != nil {
			return
		}
		io.WriteString(c, "HTTP/1.1 200 OK\r\nContent-Length: 1000\r\n\r\npartial")
		io.Copy(io.Discard, c) // stall until the checker gives up
	})
	wantShort(t, checkShort(t, Spec{Type: TypeHTTP}, target), "timeout after 300ms (reading body)")
	wantShort(t, checkShort(t, Spec{Type: TypeHTTP, BodyRegex: regexp.MustCompile("partial")}, target),
		"timeout after 300ms (reading body)")
	// HEAD has no body to wait for.
	wantReason(t, check(t, Spec{Type: TypeHTTP, Method: "HEAD"}, target), "ok")
}

func TestHTTPTruncatedBody(t *testing.T) {
	target := rawServer(t, func(c net.Conn) {
		if _, err := readRequest(c); err != nil {
			return
		}
		io.WriteString(c, "HTTP/1.1 200 OK\r\nContent-Length: 1000\r\n\r\npartial")
	})
	wantReason(t, check(t, Spec{Type: TypeHTTP}, target), "reading body: unexpected EOF")
}

func TestHTTPHugeBody(t *testing.T) {
	const size = 100 << 20
	var written atomic.Int64
	chunk := []byte(strings.Repeat("x", 32<<10))
	target := rawServer(t, func(c net.Conn) {
		if _, err := readRequest(c); err != nil {
			return
		}
		io.WriteString(c, "HTTP/1.1 200 OK\r\nContent-Length: "+strconv.Itoa(size)+"\r\n\r\nhello ")
		for n := 0; n < size; n += len(chunk) {
			m, err := c.Write(chunk)
			written.Add(int64(m))
			if err != nil {
				return
			}
		}
	})
	for _, tc := range []struct {
		re   string
		want string
	}{
		{"", "ok"},
		{"^hello x+$", "ok"}, // matched against the first MaxBody bytes
		{"goodbye", "body did not match"},
	} {
		written.Store(0)
		spec := Spec{Type: TypeHTTP}
		if tc.re != "" {
			spec.BodyRegex = regexp.MustCompile(tc.re)
		}
		wantReason(t, check(t, spec, target), tc.want)
	}
	// The checker stopped reading at 64 KiB and closed: the server could
	// only push what the socket buffers hold, far less than 100 MB.
	if w := written.Load(); w >= 50<<20 {
		t.Errorf("server wrote %d bytes: body read not bounded", w)
	}
}

func TestHTTPRedirectNotFollowed(t *testing.T) {
	var followed atomic.Int64
	mux := http.NewServeMux()
	mux.HandleFunc("/old", func(w http.ResponseWriter, r *http.Request) {
		http.Redirect(w, r, "/new", http.StatusFound)
	})
	mux.HandleFunc("/new", func(w http.ResponseWriter, r *http.Request) { followed.Add(1) })
	srv := httptest.NewServer(mux)
	defer srv.Close()
	target := addrOf(t, srv.URL)
	wantReason(t, check(t, Spec{Type: TypeHTTP, Path: "/old"}, target), "status 302")
	wantReason(t, check(t, Spec{Type: TypeHTTP, Path: "/old", Status: []StatusRange{{200, 399}}}, target), "ok")
	if followed.Load() != 0 {
		t.Errorf("redirect was followed %d times", followed.Load())
	}
}

func TestHTTPBodyRegex(t *testing.T) {
	mux := http.NewServeMux()
	mux.HandleFunc("/plain", func(w http.ResponseWriter, r *http.Request) {
		io.WriteString(w, "this is web1\n")
	})
	mux.HandleFunc("/chunked", func(w http.ResponseWriter, r *http.Request) {
		io.WriteString(w, "this is ")
		w.(http.Flusher).Flush() // forces chunked encoding
		io.WriteString(w, "web2\n")
	})
	srv := httptest.NewServer(mux)
	defer srv.Close()
	target := addrOf(t, srv.URL)
	for _, tc := range []struct{ path, re, want string }{
		{"/plain", `this is web\d`, "ok"},
		{"/plain", `this is web2`, "body did not match"},
		{"/chunked", `^this is web2\n$`, "ok"},
		{"/chunked", `web1`, "body did not match"},
	} {
		spec := Spec{Type: TypeHTTP, Path: tc.path, BodyRegex: regexp.MustCompile(tc.re)}
		if got := Reason(check(t, spec, target), testTimeout); got != tc.want {
			t.Errorf("%s =~ %s: %q, want %q", tc.path, tc.re, got, tc.want)
		}
	}
}

func TestHTTPMalformed(t *testing.T) {
	target := rawServer(t, func(c net.Conn) {
		if _, err := readRequest(c); err != nil {
			return
		}
		io.WriteString(c, "SSH-2.0-OpenSSH_9.2\r\n")
	})
	if err := check(t, Spec{Type: TypeHTTP}, target); err == nil || !strings.Contains(err.Error(), "not an HTTP/1.x status line") {
		t.Fatalf("err = %v", err)
	}
}

func TestHTTPSVerification(t *testing.T) {
	// TLS handshakes are slow under the race detector: a generous timeout.
	httpsCheck := func(t *testing.T, spec Spec, target netip.AddrPort) error {
		t.Helper()
		return checkWithin(t, spec, target, 10*time.Second)
	}
	var sni atomic.Value
	srv := httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		io.WriteString(w, "secure")
	}))
	srv.EnableHTTP2 = false
	srv.TLS = &tls.Config{GetConfigForClient: func(h *tls.ClientHelloInfo) (*tls.Config, error) {
		sni.Store(h.ServerName)
		return nil, nil
	}}
	srv.StartTLS()
	defer srv.Close()
	target := addrOf(t, srv.URL)

	caFile := filepath.Join(t.TempDir(), "ca.pem")
	if err := os.WriteFile(caFile, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: srv.Certificate().Raw}), 0o600); err != nil {
		t.Fatal(err)
	}

	err := httpsCheck(t, Spec{Type: TypeHTTPS}, target)
	if err == nil || !strings.Contains(Reason(err, testTimeout), "certificate") {
		t.Fatalf("self-signed with verification: %v, want a certificate error", err)
	}
	if err := httpsCheck(t, Spec{Type: TypeHTTPS, TLSSkipVerify: true}, target); err != nil {
		t.Fatalf("skip verify: %v", err)
	}
	if err := httpsCheck(t, Spec{Type: TypeHTTPS, TLSCAFile: caFile, BodyRegex: regexp.MustCompile("secure")}, target); err != nil {
		t.Fatalf("with CA file: %v", err)
	}
	// SNI: the certificate is for example.com, the server sees the name.
	if err := httpsCheck(t, Spec{Type: TypeHTTPS, TLSCAFile: caFile, TLSServerName: "example.com"}, target); err != nil {
		t.Fatalf("with server name: %v", err)
	}
	if got, _ := sni.Load().(string); got != "example.com" {
		t.Errorf("server saw SNI %q, want example.com", got)
	}
	err = httpsCheck(t, Spec{Type: TypeHTTPS, TLSCAFile: caFile, TLSServerName: "other.test"}, target)
	if err == nil || !strings.Contains(err.Error(), "other.test") {
		t.Errorf("wrong server name accepted: %v", err)
	}
	if _, err := NewChecker(Spec{Type: TypeHTTPS, TLSCAFile: filepath.Join(t.TempDir(), "missing.pem")}); err == nil {
		t.Error("missing CA file accepted")
	}
}

func TestTCP(t *testing.T) {
	target := rawServer(t, func(c net.Conn) {})
	wantReason(t, check(t, Spec{Type: TypeTCP}, target), "ok")
	// Port overrides the real server's port.
	wantReason(t, check(t, Spec{Type: TypeTCP, Port: target.Port()}, netip.AddrPortFrom(target.Addr(), 1)), "ok")
}

func TestExec(t *testing.T) {
	target := netip.MustParseAddrPort("127.0.0.9:8080")
	for _, tc := range []struct {
		script string
		want   string
	}{
		{`exit 0`, "ok"},
		{`exit 3`, "exit status 3"},
		{`echo "down for maintenance" >&2; exit 1`, "exit status 1: down for maintenance"},
		{`test "$LVSHA_RS_ADDR:$LVSHA_RS_PORT" = 127.0.0.9:8080`, "ok"},
		{`kill -9 $$`, "signal: killed"},
	} {
		err := check(t, Spec{Type: TypeExec, Argv: []string{"/bin/sh", "-c", tc.script}}, target)
		if got := Reason(err, testTimeout); got != tc.want {
			t.Errorf("%s: %q, want %q", tc.script, got, tc.want)
		}
	}
	err := check(t, Spec{Type: TypeExec, Argv: []string{"/nonexistent/check"}}, target)
	if err == nil || !errors.Is(err, os.ErrNotExist) {
		t.Errorf("missing command: %v", err)
	}
	// No shell: the argument is passed as is.
	if err := check(t, Spec{Type: TypeExec, Argv: []string{"/bin/test", "$HOME", "=", "$HOME"}}, target); err != nil {
		t.Errorf("argv went through a shell? %v", err)
	}
}

// TestExecTimeoutKillsGroup runs a script that starts a grandchild and hangs;
// at the timeout both must be killed, not only the direct child.
func TestExecTimeoutKillsGroup(t *testing.T) {
	pids := filepath.Join(t.TempDir(), "pids")
	script := `sleep 600 & echo $$ $! > ` + pids + `.tmp; mv ` + pids + `.tmp ` + pids + `; wait`
	if got := checkShort(t, Spec{Type: TypeExec, Argv: []string{"/bin/sh", "-c", script}}, netip.MustParseAddrPort("127.0.0.1:80")); got != "timeout after 300ms (running /bin/sh)" {
		t.Fatalf("reason %q", got)
	}
	b, err := os.ReadFile(pids)
	if err != nil {
		t.Fatalf("script did not start: %v", err)
	}
	fields := strings.Fields(string(b))
	if len(fields) != 2 {
		t.Fatalf("pids file %q", b)
	}
	for _, f := range fields {
		pid, _ := strconv.Atoi(f)
		// The orphaned grandchild is reaped by init, perhaps not at once:
		// wait (bounded) until it is gone or a zombie.
		deadline := time.Now().Add(5 * time.Second)
		for alive(pid) {
			if time.Now().After(deadline) {
				t.Fatalf("process %d still running after the check timed out", pid)
			}
			time.Sleep(10 * time.Millisecond)
		}
	}
}

// alive reports whether pid exists and is not a zombie.
func alive(pid int) bool {
	if err := syscall.Kill(pid, 0); errors.Is(err, syscall.ESRCH) {
		return false
	}
	b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/stat")
	if err != nil {
		return false
	}
	s := string(b)
	i := strings.LastIndexByte(s, ')')
	return i < 0 || i+2 >= len(s) || s[i+2] != 'Z'
}

func TestIPv6Loopback(t *testing.T) {
	l, err := net.Listen("tcp", "[::1]:0")
	if err != nil {
		testutil.Unavailable(t, "no IPv6 loopback: "+err.Error())
	}
	srv := httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		io.WriteString(w, r.Host)
	}))
	srv.Listener = l
	srv.Start()
	defer srv.Close()
	target := addrOf(t, l.Addr().String())
	want := "[::1]:" + strconv.Itoa(int(target.Port()))
	if err := check(t, Spec{Type: TypeHTTP, BodyRegex: regexp.MustCompile(regexp.QuoteMeta(want))}, target); err != nil {
		t.Fatalf("http over IPv6 (Host %s): %v", want, err)
	}
	wantReason(t, check(t, Spec{Type: TypeTCP}, target), "ok")

	// exec: the command gets the IPv6 address as it is (no brackets).
	port := strconv.Itoa(int(target.Port()))
	execSpec := Spec{Type: TypeExec, Argv: []string{"/bin/sh", "-c", `test "$LVSHA_RS_ADDR" = ::1 && test "$LVSHA_RS_PORT" = ` + port}}
	if err := check(t, execSpec, target); err != nil {
		t.Errorf("exec with an IPv6 target: %v", err)
	}
	execSpec.Argv[2] = `test "$LVSHA_RS_ADDR" = 127.0.0.1`
	if err := check(t, execSpec, target); err == nil {
		t.Error("exec: a wrong address in LVSHA_RS_ADDR passed (the test cannot fail)")
	}

	// https, verified: httptest's certificate names ::1.
	l6, err := net.Listen("tcp", "[::1]:0")
	if err != nil {
		t.Fatal(err)
	}
	tlsSrv := httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		io.WriteString(w, "secure "+r.Host)
	}))
	tlsSrv.Listener = l6
	tlsSrv.StartTLS()
	defer tlsSrv.Close()
	caFile := filepath.Join(t.TempDir(), "ca.pem")
	if err := os.WriteFile(caFile, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: tlsSrv.Certificate().Raw}), 0o600); err != nil {
		t.Fatal(err)
	}
	tlsTarget := addrOf(t, l6.Addr().String())
	wantTLS := "secure [::1]:" + strconv.Itoa(int(tlsTarget.Port()))
	if err := checkWithin(t, Spec{Type: TypeHTTPS, TLSCAFile: caFile, BodyRegex: regexp.MustCompile(regexp.QuoteMeta(wantTLS))}, tlsTarget, 10*time.Second); err != nil {
		t.Errorf("https over IPv6: %v", err)
	}
}

// TestReactorEarliestDeadline: the reactor wakes for the earliest probe
// deadline, also when a probe with a shorter timeout starts after one with
// a longer timeout (and the loop already waits for the later deadline).
func TestReactorEarliestDeadline(t *testing.T) {
	target := rawServer(t, func(c net.Conn) { io.Copy(io.Discard, c) })
	c, err := NewChecker(complete(Spec{Type: TypeHTTP}))
	if err != nil {
		t.Fatal(err)
	}
	p := c.(prober)
	type result struct {
		tag any
		err error
	}
	done := make(chan result, 2)
	rx, err := newReactor(func(tag any, err error, _ time.Time) { done <- result{tag, err} })
	if err != nil {
		t.Fatal(err)
	}
	defer rx.close()
	rx.start(p, target, dialVia{}, 5*time.Second, "slow")
	rx.start(p, target, dialVia{}, 200*time.Millisecond, "fast")
	r := <-done
	if r.tag != "fast" || !errors.Is(r.err, os.ErrDeadlineExceeded) {
		t.Fatalf("first outcome %v: %v, want fast: timeout", r.tag, r.err)
	}
	// The slow probe is still in flight: it was not swept up early.
	select {
	case r := <-done:
		t.Fatalf("slow probe ended with the fast one: %v", r.err)
	default:
	}
	rx.mu.Lock()
	n, wake := len(rx.probes), rx.wake
	rx.mu.Unlock()
	if n != 1 || wake.IsZero() {
		t.Errorf("after the fast timeout: %d probes in flight, wake %v; want the slow one and its deadline", n, wake)
	}
}

// TestSourceToward: the source the kernel picks toward an address, of
// either family (loopback has both).
func TestSourceToward(t *testing.T) {
	for _, dst := range []string{"127.0.0.1", "::1"} {
		src, err := sourceToward(netip.MustParseAddr(dst))
		if err != nil || src != netip.MustParseAddr(dst) {
			t.Errorf("sourceToward(%s) = %v, %v", dst, src, err)
		}
	}
}
