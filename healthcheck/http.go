package healthcheck

import (
	"bufio"
	"bytes"
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http/httputil"
	"net/netip"
	"slices"
	"strconv"
	"sync"
	"time"
)

// httpChecker speaks just enough HTTP/1.1 for a probe: one request with
// "Connection: close" on a fresh connection, the status line, the framing
// headers, and at most MaxBody bytes of body. net/http's Transport is not
// used because it pools connections and costs several times more CPU per
// probe, which matters with thousands of real servers.
type httpChecker struct {
	spec Spec
	tls  *tls.Config // nil for plain http
	// staticName: the TLS name does not depend on the target, so tls
	// already carries it and is not cloned per check.
	staticName bool
	reqPrefix  string // "GET /path HTTP/1.1\r\nHost: "
	reqSuffix  string // "\r\nUser-Agent: ...\r\n\r\n"
}

const (
	maxHeaderBytes = 64 << 10
	readBufSize    = 4 << 10
)

var readerPool = sync.Pool{New: func() any { return bufio.NewReaderSize(nil, readBufSize) }}

func newHTTPChecker(s Spec) (*httpChecker, error) {
	c := &httpChecker{
		spec:      s,
		reqPrefix: s.Method + " " + s.Path + " HTTP/1.1\r\nHost: ",
		reqSuffix: "\r\nUser-Agent: lvsha-healthcheck\r\nAccept: */*\r\nConnection: close\r\n\r\n",
	}
	if s.Type == TypeHTTPS {
		cfg, err := newTLSConfig(s)
		if err != nil {
			return nil, err
		}
		c.tls = cfg
		if s.TLSServerName != "" || s.Host != "" {
			c.staticName = true
			cfg.ServerName = c.serverName(s.Host)
		}
	}
	return c, nil
}

func (c *httpChecker) host(addr netip.AddrPort) string {
	if c.spec.Host != "" {
		return c.spec.Host
	}
	return string(c.appendHost(nil, addr))
}

// appendHost appends the Host header's value for addr: the address, in
// brackets for IPv6, with the port unless it is the scheme's default.
func (c *httpChecker) appendHost(b []byte, addr netip.AddrPort) []byte {
	if c.spec.Host != "" {
		return append(b, c.spec.Host...)
	}
	if addr.Addr().Is6() {
		b = append(b, '[')
		b = addr.Addr().AppendTo(b)
		b = append(b, ']')
	} else {
		b = addr.Addr().AppendTo(b)
	}
	if (c.tls == nil && addr.Port() == 80) || (c.tls != nil && addr.Port() == 443) {
		return b
	}
	b = append(b, ':')
	return strconv.AppendUint(b, uint64(addr.Port()), 10)
}

func (c *httpChecker) Check(ctx context.Context, target netip.AddrPort) error {
	addr := probeAddr(target, c.spec.Port)
	tc, err := dial(ctx, addr)
	if err != nil {
		return err
	}
	defer tc.Close()
	// Cancelling ctx (shutdown, target removed) unblocks any read or write.
	stop := context.AfterFunc(ctx, func() { _ = tc.SetDeadline(aLongTimeAgo) })
	defer stop()

	var conn net.Conn = tc
	host := c.host(addr)
	if c.tls != nil {
		cfg := c.tls
		if !c.staticName {
			cfg = cfg.Clone()
			cfg.ServerName = c.serverName(host)
		}
		tlc := tls.Client(tc, cfg)
		if err := tlc.HandshakeContext(ctx); err != nil {
			return stage(tlsStage, err)
		}
		conn = tlc
	}

	req := c.reqPrefix + host + c.reqSuffix
	if _, err := io.WriteString(conn, req); err != nil {
		return stage("sending request", err)
	}

	br := readerPool.Get().(*bufio.Reader)
	br.Reset(conn)
	defer func() { br.Reset(nil); readerPool.Put(br) }()
	return c.readResponse(br)
}

// serverName is the TLS name sent as SNI and verified: the configured name,
// else the Host without its port (an IP literal is verified against the
// certificate's IP SANs and not sent as SNI).
func (c *httpChecker) serverName(host string) string {
	if c.spec.TLSServerName != "" {
		return c.spec.TLSServerName
	}
	if h, _, err := net.SplitHostPort(host); err == nil {
		host = h
	}
	if len(host) > 1 && host[0] == '[' {
		host = host[1 : len(host)-1]
	}
	return host
}

// aLongTimeAgo is a deadline in the past: setting it fails pending I/O at once.
var aLongTimeAgo = time.Unix(1, 0)

func (c *httpChecker) readResponse(br *bufio.Reader) error {
	var (
		code       int
		contentLen int64 = -1
		chunked    bool
		total      int
	)
	for {
		line, err := readLine(br, &total)
		if err != nil {
			return stage("waiting for response", err)
		}
		code, err = parseStatusLine(line)
		if err != nil {
			return err
		}
		for {
			line, err := readLine(br, &total)
			if err != nil {
				return stage("reading headers", err)
			}
			if len(line) == 0 {
				break
			}
			name, value, ok := bytes.Cut(line, []byte(":"))
			if !ok {
				continue
			}
			value = bytes.TrimSpace(value)
			switch {
			case bytes.EqualFold(name, []byte("Content-Length")):
				n, err := strconv.ParseInt(string(value), 10, 64)
				if err != nil || n < 0 {
					return fmt.Errorf("bad Content-Length %q", value)
				}
				contentLen = n
			case bytes.EqualFold(name, []byte("Transfer-Encoding")):
				chunked = bytes.Contains(bytes.ToLower(value), []byte("chunked"))
			}
		}
		// Skip interim responses (100 Continue, 103 Early Hints).
		if code >= 200 || code == 101 {
			break
		}
		contentLen, chunked = -1, false
	}
	if !c.spec.statusOK(code) {
		return &StatusError{Code: code}
	}

	if c.spec.Method == "HEAD" || code == 204 || code == 304 || code < 200 {
		if c.spec.BodyRegex != nil {
			return c.match(nil)
		}
		return nil
	}
	var body io.Reader = br
	switch {
	case chunked:
		body = httputil.NewChunkedReader(br)
		contentLen = -1
	case contentLen >= 0:
		body = io.LimitReader(br, contentLen)
	}
	// Read the body (at most MaxBody bytes) even without a regexp: a server
	// that sends headers and then stalls is not healthy.
	want := c.spec.MaxBody
	if contentLen >= 0 && contentLen < want {
		want = contentLen
	}
	if c.spec.BodyRegex == nil {
		n, err := io.Copy(io.Discard, io.LimitReader(body, want))
		if err != nil {
			return stage("reading body", err)
		}
		if contentLen >= 0 && n < want {
			return stage("reading body", io.ErrUnexpectedEOF)
		}
		return nil
	}
	buf := bodyPool.Get().(*[]byte)
	defer bodyPool.Put(buf)
	b := (*buf)[:0]
	for int64(len(b)) < want {
		if len(b) == cap(b) {
			b = slices.Grow(b, int(min(int64(cap(b)), want-int64(len(b)))))
		}
		n, err := body.Read(b[len(b):int(min(int64(cap(b)), want))])
		b = b[:len(b)+n]
		if err == io.EOF {
			break
		}
		if err != nil {
			*buf = b[:0]
			return stage("reading body", err)
		}
	}
	*buf = b[:0]
	if contentLen >= 0 && int64(len(b)) < want {
		return stage("reading body", io.ErrUnexpectedEOF)
	}
	return c.match(b)
}

func (c *httpChecker) match(b []byte) error {
	if c.spec.BodyRegex.Match(b) {
		return nil
	}
	return ErrBodyMismatch
}

var bodyPool = sync.Pool{New: func() any { b := make([]byte, 0, readBufSize); return &b }}

var errHeaderTooLong = errors.New("response headers too long")

// readLine returns one header line without its CRLF; the slice is valid until
// the next read. total caps the bytes of all header lines.
func readLine(br *bufio.Reader, total *int) ([]byte, error) {
	line, err := br.ReadSlice('\n')
	if err == bufio.ErrBufferFull {
		return nil, errHeaderTooLong
	}
	if err == io.EOF && len(line) == 0 {
		return nil, io.ErrUnexpectedEOF
	}
	if err != nil && err != io.EOF {
		return nil, err
	}
	*total += len(line)
	if *total > maxHeaderBytes {
		return nil, errHeaderTooLong
	}
	line = bytes.TrimSuffix(line, []byte("\n"))
	line = bytes.TrimSuffix(line, []byte("\r"))
	return line, nil
}

// parseStatusLine reads "HTTP/1.1 503 Service Unavailable".
func parseStatusLine(line []byte) (int, error) {
	if len(line) < 12 || !bytes.HasPrefix(line, []byte("HTTP/1.")) || line[8] != ' ' ||
		(len(line) > 12 && line[12] != ' ') {
		return 0, fmt.Errorf("not an HTTP/1.x status line: %.40q", line)
	}
	code := 0
	for _, d := range line[9:12] {
		if d < '0' || d > '9' {
			return 0, fmt.Errorf("bad status code in %.40q", line)
		}
		code = code*10 + int(d-'0')
	}
	if code < 100 {
		return 0, fmt.Errorf("bad status code in %.40q", line)
	}
	return code, nil
}
