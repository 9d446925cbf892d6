package healthcheck

import (
	"bufio"
	"context"
	"errors"
	"net/netip"
	"regexp"
	"strings"
	"testing"
	"testing/synctest"
	"time"
)

// parse runs the response parser of an http checker over raw bytes.
func parse(t testing.TB, spec Spec, raw string) error {
	t.Helper()
	spec.Type = TypeHTTP
	c, err := newHTTPChecker(complete(spec))
	if err != nil {
		t.Fatal(err)
	}
	return c.readResponse(bufio.NewReaderSize(strings.NewReader(raw), readBufSize))
}

func TestReadResponse(t *testing.T) {
	re := regexp.MustCompile("web1")
	for _, tc := range []struct {
		name string
		spec Spec
		raw  string
		want string // Reason, "" = ok
	}{
		{"no length, read to EOF", Spec{BodyRegex: re}, "HTTP/1.0 200 OK\r\n\r\nthis is web1\n", ""},
		{"no length, mismatch", Spec{BodyRegex: re}, "HTTP/1.0 200 OK\r\n\r\nthis is web2\n", "body did not match"},
		{"LF only line ends", Spec{BodyRegex: re}, "HTTP/1.1 200 OK\nContent-Length: 4\n\nweb1", ""},
		{"interim 100 skipped", Spec{}, "HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 503 Busy\r\nContent-Length: 0\r\n\r\n", "status 503"},
		{"status without reason", Spec{}, "HTTP/1.1 204\r\n\r\n", ""},
		{"chunked", Spec{BodyRegex: re}, "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n4\r\nweb1\r\n0\r\n\r\n", ""},
		{"bad chunk", Spec{BodyRegex: re}, "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\nweb1\r\n", "reading body: "},
		{"regex beyond MaxBody", Spec{BodyRegex: re, MaxBody: 8}, "HTTP/1.1 200 OK\r\nContent-Length: 12\r\n\r\nthis is web1", "body did not match"},
		{"regex within MaxBody", Spec{BodyRegex: regexp.MustCompile("^this is $"), MaxBody: 8}, "HTTP/1.1 200 OK\r\nContent-Length: 12\r\n\r\nthis is web1", ""},
		{"bad length", Spec{}, "HTTP/1.1 200 OK\r\nContent-Length: -1\r\n\r\n", "bad Content-Length"},
		{"empty", Spec{}, "", "waiting for response: unexpected EOF"},
		{"not http", Spec{}, "220 smtp.example ESMTP\r\n", "not an HTTP/1.x status line"},
		{"bad code", Spec{}, "HTTP/1.1 2x0 OK\r\n\r\n", "bad status code"},
		{"header too long", Spec{}, "HTTP/1.1 200 OK\r\nX: " + strings.Repeat("a", 5000) + "\r\n\r\n", "response headers too long"},
		{"headers too many", Spec{}, "HTTP/1.1 200 OK\r\n" + strings.Repeat("X-A: b\r\n", 10000) + "\r\n", "response headers too long"},
		{"HEAD ignores length", Spec{Method: "HEAD"}, "HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n", ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			err := parse(t, tc.spec, tc.raw)
			got := Reason(err, time.Second)
			if tc.want == "" {
				if err != nil {
					t.Fatalf("got %q, want ok", got)
				}
				return
			}
			if !strings.Contains(got, tc.want) {
				t.Fatalf("got %q, want %q", got, tc.want)
			}
		})
	}
}

// FuzzReadResponse: any bytes from a server end in a verdict, no panic.
func FuzzReadResponse(f *testing.F) {
	f.Add("HTTP/1.1 200 OK\r\nContent-Length: 4\r\n\r\nweb1")
	f.Add("HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n4\r\nweb1\r\n0\r\n\r\n")
	f.Add("HTTP/1.1 100 Continue\r\n\r\nHTTP/1.0 302 Found\r\nLocation: /\r\n\r\n")
	spec := Spec{BodyRegex: regexp.MustCompile("web[0-9]"), MaxBody: 64}
	f.Fuzz(func(t *testing.T, raw string) {
		_ = parse(t, spec, raw)
	})
}

// TestRunStops: cancelling Run cancels the checks in flight, waits for them
// and closes Transitions.
func TestRunStops(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		started := make(chan struct{}, 1)
		var cancelled bool
		c := CheckerFunc(func(ctx context.Context, _ netip.AddrPort) error {
			started <- struct{}{}
			<-ctx.Done()
			cancelled = errors.Is(ctx.Err(), context.Canceled)
			return ctx.Err()
		})
		m := NewManager(nil, withChecker(c))
		spec := fakeSpec(1, 1)
		spec.Timeout = time.Hour
		m.Update([]Target{target(1, spec)})
		ctx, cancel := context.WithCancel(t.Context())
		done := make(chan struct{})
		go func() { m.Run(ctx); close(done) }()
		<-started
		cancel()
		<-done
		if !cancelled {
			t.Error("check in flight not cancelled")
		}
		if _, ok := <-m.Transitions(); ok {
			t.Error("Transitions not closed")
		}
	})
}

// TestProbeRequest checks the request the reactor sends, built into a
// reused buffer: the Host header leaves out the scheme's default port and
// brackets IPv6, and a second probe into the same buffer leaves no trace of
// the first.
func TestProbeRequest(t *testing.T) {
	plain, err := newHTTPChecker(Spec{Type: TypeHTTP, Method: "GET", Path: "/h"})
	if err != nil {
		t.Fatal(err)
	}
	named, err := newHTTPChecker(Spec{Type: TypeHTTP, Method: "HEAD", Path: "/", Host: "www.example.com", Port: 8081})
	if err != nil {
		t.Fatal(err)
	}
	tlsc, err := newHTTPChecker(Spec{Type: TypeHTTPS, Method: "GET", Path: "/", TLSSkipVerify: true})
	if err != nil {
		t.Fatal(err)
	}
	const tail = "\r\nUser-Agent: lvsha-healthcheck\r\nAccept: */*\r\nConnection: close\r\n\r\n"
	var buf []byte
	for _, tc := range []struct {
		c        *httpChecker
		target   string
		wantAddr string
		wantHost string
		line     string
	}{
		{plain, "10.0.0.1:8080", "10.0.0.1:8080", "10.0.0.1:8080", "GET /h"},
		{plain, "10.0.0.1:80", "10.0.0.1:80", "10.0.0.1", "GET /h"},
		{plain, "[2001:db8::1]:80", "[2001:db8::1]:80", "[2001:db8::1]", "GET /h"},
		{plain, "[2001:db8::1]:8080", "[2001:db8::1]:8080", "[2001:db8::1]:8080", "GET /h"},
		{named, "10.0.0.1:80", "10.0.0.1:8081", "www.example.com", "HEAD /"},
		{tlsc, "10.0.0.1:443", "10.0.0.1:443", "10.0.0.1", "GET /"},
		{tlsc, "10.0.0.1:80", "10.0.0.1:80", "10.0.0.1:80", "GET /"},
	} {
		addr, req := tc.c.probe(buf, netip.MustParseAddrPort(tc.target))
		want := tc.line + " HTTP/1.1\r\nHost: " + tc.wantHost + tail
		if addr.String() != tc.wantAddr || string(req) != want {
			t.Errorf("%s: probe = %s %q, want %s %q", tc.target, addr, req, tc.wantAddr, want)
		}
		if h := tc.c.host(addr); h != tc.wantHost {
			t.Errorf("%s: host = %q, want %q (the goroutine checker's Host)", tc.target, h, tc.wantHost)
		}
		buf = req
	}
}
