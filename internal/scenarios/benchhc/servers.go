package main

import (
	"bufio"
	"bytes"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/netip"
	"os"
	"sync/atomic"
	"time"
)

// The real servers the checks go to: minimal canned-response servers or
// net/http, some of which start failing midway.

// failMode says how target i fails after "fail": 0 never, 1 answers 503,
// 2 accepts and never answers.
func (c config) failMode(i int) int {
	if c.failing == 0 {
		return 0
	}
	step := c.targets / c.failing
	if i%step != 0 || i/step >= c.failing {
		return 0
	}
	return 1 + (i/step)%2
}

// served counts the requests the minimal servers answered: a measure of
// checks done that is the same whichever checker makes them.
var served atomic.Uint64

// runServers listens on every target address, serves "ok" until told
// "fail" on stdin, then fails the chosen ones. It prints "ready" and
// "failing" on stdout as acknowledgements, and "served N" when asked
// "count".
func runServers(c config, useNetHTTP bool) error {
	var failing atomic.Bool
	if useNetHTTP {
		if err := serveNetHTTP(c, &failing); err != nil {
			return err
		}
	} else {
		for i := range c.targets {
			l, err := net.Listen("tcp", c.addr(i).String())
			if err != nil {
				return fmt.Errorf("listen %s: %w", c.addr(i), err)
			}
			go serveMinimal(l, c.failMode(i), &failing)
		}
	}
	fmt.Println("ready")
	sc := bufio.NewScanner(os.Stdin)
	for sc.Scan() {
		switch sc.Text() {
		case "fail":
			failing.Store(true)
			fmt.Println("failing")
		case "count":
			fmt.Println("served", served.Load())
		}
	}
	return nil // stdin closed: the parent is done
}

var (
	respOK  = []byte("HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 22\r\nConnection: close\r\n\r\nthis is a real server\n")
	resp503 = []byte("HTTP/1.1 503 Service Unavailable\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
)

// serveMinimal answers each connection with a canned response after the
// request head: the load generator should cost as little CPU as possible,
// since it shares the machine with the checker being measured.
func serveMinimal(l net.Listener, mode int, failing *atomic.Bool) {
	for {
		conn, err := l.Accept()
		if err != nil {
			return
		}
		go func() {
			defer conn.Close()
			buf := make([]byte, 1024)
			n := 0
			for !bytes.Contains(buf[:n], []byte("\r\n\r\n")) {
				if n == len(buf) {
					return
				}
				m, err := conn.Read(buf[n:])
				if err != nil {
					return
				}
				n += m
			}
			resp := respOK
			if failing.Load() {
				switch mode {
				case 1:
					resp = resp503
				case 2:
					_, _ = io.Copy(io.Discard, conn) // hang until the checker gives up
					return
				}
			}
			_, _ = conn.Write(resp)
			served.Add(1)
		}()
	}
}

// serveNetHTTP serves the targets with net/http (-nethttp).
func serveNetHTTP(c config, failing *atomic.Bool) error {
	index := make(map[netip.AddrPort]int, c.targets)
	for i := range c.targets {
		index[c.addr(i)] = i
	}
	handler := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if failing.Load() {
			la, _ := r.Context().Value(http.LocalAddrContextKey).(net.Addr)
			ap, _ := netip.ParseAddrPort(la.String())
			switch c.failMode(index[ap]) {
			case 1:
				w.WriteHeader(http.StatusServiceUnavailable)
				return
			case 2:
				<-r.Context().Done()
				return
			}
		}
		io.WriteString(w, "this is a real server\n")
	})
	srv := &http.Server{Handler: handler, ReadHeaderTimeout: 10 * time.Second}
	srv.SetKeepAlivesEnabled(false)
	for i := range c.targets {
		l, err := net.Listen("tcp", c.addr(i).String())
		if err != nil {
			return fmt.Errorf("listen %s: %w", c.addr(i), err)
		}
		go srv.Serve(l)
	}
	return nil
}
