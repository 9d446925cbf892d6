// Package hctest has test support for health checks: a loopback HTTP
// server whose answer to each probe the test scripts (200, 503, no answer,
// closed connection) and that records when each probe arrived. Checks
// reach it as they reach a real server, so the checker under test (the
// Manager's epoll reactor for plain http and tcp) runs as in production.
package hctest

import (
	"io"
	"net"
	"net/netip"
	"strings"
	"sync"
	"testing"
	"time"
)

// Answer is what a Server does with one probe.
type Answer int

const (
	OK          Answer = iota // 200, empty body
	Unavailable               // 503
	Hang                      // never answers; keeps the connection until the checker closes it
	Close                     // closes the connection without answering
)

// Always scripts the same answer for every probe.
func Always(a Answer) func(n int) Answer { return func(int) Answer { return a } }

// Server is a loopback HTTP server for health checks.
type Server struct {
	Addr netip.AddrPort

	l       net.Listener
	wg      sync.WaitGroup
	mu      sync.Mutex
	script  func(n int) Answer
	arrived []time.Time
	open    map[net.Conn]bool
	closed  bool
}

// NewServer starts a server on 127.0.0.1 that answers connection n (0 for
// the first) with script(n). It stops when the test ends, closing the
// connections it still holds.
func NewServer(t testing.TB, script func(n int) Answer) *Server {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	s := &Server{Addr: netip.MustParseAddrPort(l.Addr().String()), l: l, script: script, open: map[net.Conn]bool{}}
	t.Cleanup(s.close)
	s.wg.Go(s.accept)
	return s
}

// Set makes every probe from now on get a.
func (s *Server) Set(a Answer) {
	s.mu.Lock()
	s.script = Always(a)
	s.mu.Unlock()
}

// Count is the number of connections that arrived so far.
func (s *Server) Count() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return len(s.arrived)
}

// Before counts the connections that arrived before at. For a transition
// at at, that is the number of checks that led to it: a target's checks
// never overlap, and the next one starts after the result that made the
// transition.
func (s *Server) Before(at time.Time) int {
	s.mu.Lock()
	defer s.mu.Unlock()
	n := 0
	for _, a := range s.arrived {
		if a.Before(at) {
			n++
		}
	}
	return n
}

func (s *Server) accept() {
	for {
		c, err := s.l.Accept()
		if err != nil {
			return
		}
		s.mu.Lock()
		if s.closed {
			s.mu.Unlock()
			c.Close()
			return
		}
		n := len(s.arrived)
		s.arrived = append(s.arrived, time.Now())
		answer := s.script(n)
		s.open[c] = true
		s.mu.Unlock()
		s.wg.Go(func() {
			defer func() {
				s.mu.Lock()
				delete(s.open, c)
				s.mu.Unlock()
				c.Close()
			}()
			s.serve(c, answer)
		})
	}
}

func (s *Server) serve(c net.Conn, answer Answer) {
	if !readHead(c) {
		return // a tcp check, or the checker gave up
	}
	switch answer {
	case OK:
		io.WriteString(c, "HTTP/1.1 200 OK\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
	case Unavailable:
		io.WriteString(c, "HTTP/1.1 503 Service Unavailable\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
	case Hang:
		io.Copy(io.Discard, c)
	case Close:
	}
}

// readHead consumes a request head; false if the connection ended first.
func readHead(c net.Conn) bool {
	var buf []byte
	tmp := make([]byte, 512)
	for !strings.Contains(string(buf), "\r\n\r\n") {
		n, err := c.Read(tmp)
		buf = append(buf, tmp[:n]...)
		if err != nil {
			return false
		}
	}
	return true
}

func (s *Server) close() {
	s.l.Close()
	s.mu.Lock()
	s.closed = true
	for c := range s.open {
		c.Close()
	}
	s.mu.Unlock()
	s.wg.Wait()
}
