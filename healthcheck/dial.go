package healthcheck

import (
	"context"
	"fmt"
	"net"
	"net/netip"
	"os"
	"syscall"
	"time"
)

// dial opens a fresh TCP connection (never pooled: a check must prove the
// server still accepts new connections) with its deadline taken from ctx.
//
// It makes the socket itself instead of using net.Dialer: the Dialer also
// sets TCP_NODELAY and four keepalive options and asks for both addresses,
// seven system calls a one-request probe does not need, which were a fifth
// of the checker's CPU with 10,000 servers. The socket is handed to the
// runtime poller through os.NewFile (non-blocking descriptor), so reads,
// writes and deadlines behave as for a net.Conn.
func dial(ctx context.Context, addr netip.AddrPort) (*sockConn, error) {
	fd, err := connectNonblock(addr, viaFrom(ctx))
	if err != nil {
		return nil, stage("connect", err)
	}
	f := os.NewFile(uintptr(fd), "tcp "+addr.String())
	c := &sockConn{f: f, remote: addr}
	if dl, ok := ctx.Deadline(); ok {
		_ = f.SetDeadline(dl)
	}
	// Wait until writable (at once if connected already), then read the outcome.
	rc, rerr := f.SyscallConn()
	if rerr != nil {
		f.Close()
		return nil, stage("connect", rerr)
	}
	// RawConn.Write discards readiness seen before it starts, so each
	// call asks the socket itself: an error, connected (it has a peer),
	// or still in progress (wait for writability and ask again).
	var soErr error
	werr := rc.Write(func(fd uintptr) bool {
		n, gerr := syscall.GetsockoptInt(int(fd), syscall.SOL_SOCKET, syscall.SO_ERROR)
		switch {
		case gerr != nil:
			soErr = gerr
			return true
		case n != 0 && syscall.Errno(n) != syscall.EINPROGRESS && syscall.Errno(n) != syscall.EALREADY:
			soErr = syscall.Errno(n)
			return true
		}
		_, perr := syscall.Getpeername(int(fd))
		return perr == nil
	})
	if werr == nil && soErr != nil {
		werr = os.NewSyscallError("connect", soErr)
	}
	if werr != nil {
		f.Close()
		if ctx.Err() != nil && !isTimeout(werr) {
			werr = ctx.Err()
		}
		return nil, stage("connect", werr)
	}
	return c, nil
}

// connectNonblock opens a non-blocking TCP socket and starts connecting it
// to addr (through via, if set): the one way both the reactor and dial open
// a connection.
func connectNonblock(addr netip.AddrPort, via dialVia) (int, error) {
	family, zone := syscall.AF_INET, uint32(0)
	if ip := addr.Addr().Unmap(); !ip.Is4() {
		family = syscall.AF_INET6
		if z := ip.Zone(); z != "" {
			ifi, err := net.InterfaceByName(z)
			if err != nil {
				return -1, fmt.Errorf("zone %q: %w", z, err)
			}
			zone = uint32(ifi.Index)
		}
	}
	fd, err := rawSocket(family, syscall.SOCK_STREAM|syscall.SOCK_NONBLOCK|syscall.SOCK_CLOEXEC, syscall.IPPROTO_TCP)
	if err != nil {
		return -1, os.NewSyscallError("socket", err)
	}
	if via.mark != 0 {
		if err := viaSetup(fd, via); err != nil {
			rawClose(fd)
			return -1, err
		}
	}
	err = rawConnect(fd, addr, zone)
	if err != nil && err != syscall.EINPROGRESS && err != syscall.EINTR {
		rawClose(fd)
		return -1, os.NewSyscallError("connect", err)
	}
	return fd, nil
}

func isTimeout(err error) bool {
	ne, ok := err.(net.Error)
	return ok && ne.Timeout()
}

// sockConn is a connected TCP socket as a net.Conn (for crypto/tls).
type sockConn struct {
	f      *os.File
	remote netip.AddrPort
}

func (c *sockConn) Read(b []byte) (int, error)         { return c.f.Read(b) }
func (c *sockConn) Write(b []byte) (int, error)        { return c.f.Write(b) }
func (c *sockConn) Close() error                       { return c.f.Close() }
func (c *sockConn) LocalAddr() net.Addr                { return &net.TCPAddr{} }
func (c *sockConn) RemoteAddr() net.Addr               { return net.TCPAddrFromAddrPort(c.remote) }
func (c *sockConn) SetDeadline(t time.Time) error      { return c.f.SetDeadline(t) }
func (c *sockConn) SetReadDeadline(t time.Time) error  { return c.f.SetReadDeadline(t) }
func (c *sockConn) SetWriteDeadline(t time.Time) error { return c.f.SetWriteDeadline(t) }
