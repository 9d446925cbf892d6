package healthcheck

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"strconv"
	"syscall"
	"time"
)

// Checker probes one real server once. The context carries the deadline of
// the check; Check returns nil when the server is healthy.
type Checker interface {
	Check(ctx context.Context, target netip.AddrPort) error
}

// CheckerFunc adapts a function to Checker.
type CheckerFunc func(ctx context.Context, target netip.AddrPort) error

// Check calls f.
func (f CheckerFunc) Check(ctx context.Context, target netip.AddrPort) error { return f(ctx, target) }

// NewChecker builds the checker a valid Spec describes (Manager.Update
// validates them); an unreadable CA file is an error.
func NewChecker(s Spec) (Checker, error) {
	switch s.Type {
	case TypeHTTP, TypeHTTPS:
		return newHTTPChecker(s)
	case TypeTCP:
		return &tcpChecker{port: s.Port}, nil
	case TypeExec:
		return &execChecker{argv: s.Argv, port: s.Port}, nil
	}
	return nil, fmt.Errorf("check type %v: unknown", s.Type)
}

// StatusError is an HTTP status outside the expected list.
type StatusError struct{ Code int }

func (e *StatusError) Error() string { return "status " + strconv.Itoa(e.Code) }

// ErrBodyMismatch means the body did not match the expected regexp.
var ErrBodyMismatch = errors.New("body did not match")

// stageError says at which step of a check an error happened, so a timeout
// can be reported as "timeout after 1s (connect)".
type stageError struct {
	stage string
	err   error
}

func (e *stageError) Error() string { return e.stage + ": " + e.err.Error() }
func (e *stageError) Unwrap() error { return e.err }

func stage(name string, err error) error {
	if err == nil {
		return nil
	}
	return &stageError{name, err}
}

// Reason turns a check error into the short text carried by a Transition:
// "status 503", "timeout after 1s (connect)", "connection refused",
// "body did not match", "exit status 2", ...
func Reason(err error, timeout time.Duration) string {
	if err == nil {
		return "ok"
	}
	var se *stageError
	st := ""
	if errors.As(err, &se) {
		st = se.stage
	}
	var ne net.Error
	if errors.Is(err, context.DeadlineExceeded) || errors.Is(err, os.ErrDeadlineExceeded) ||
		(errors.As(err, &ne) && ne.Timeout()) {
		if st != "" {
			return fmt.Sprintf("timeout after %v (%s)", timeout, st)
		}
		return fmt.Sprintf("timeout after %v", timeout)
	}
	switch {
	case errors.Is(err, syscall.ECONNREFUSED):
		return "connection refused"
	case errors.Is(err, syscall.ECONNRESET):
		if st != "" {
			return "connection reset (" + st + ")"
		}
		return "connection reset"
	case errors.Is(err, syscall.EHOSTUNREACH), errors.Is(err, syscall.ENETUNREACH):
		return "unreachable"
	}
	var status *StatusError
	if errors.As(err, &status) {
		return status.Error()
	}
	if errors.Is(err, ErrBodyMismatch) {
		return ErrBodyMismatch.Error()
	}
	return err.Error()
}

func probeAddr(target netip.AddrPort, port uint16) netip.AddrPort {
	if port != 0 {
		return netip.AddrPortFrom(target.Addr(), port)
	}
	return target
}

type tcpChecker struct{ port uint16 }

func (c *tcpChecker) Check(ctx context.Context, target netip.AddrPort) error {
	conn, err := dial(ctx, probeAddr(target, c.port))
	if err != nil {
		return err
	}
	return conn.Close()
}

func loadCAFile(path string) (*x509.CertPool, error) {
	pem, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("tls ca file: %w", err)
	}
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM(pem) {
		return nil, fmt.Errorf("tls ca file %s: no PEM certificates", path)
	}
	return pool, nil
}

func newTLSConfig(s Spec) (*tls.Config, error) {
	cfg := &tls.Config{
		InsecureSkipVerify: s.TLSSkipVerify, //nolint:gosec // explicit opt-in per check
		MinVersion:         tls.VersionTLS12,
	}
	if s.TLSCAFile != "" {
		pool, err := loadCAFile(s.TLSCAFile)
		if err != nil {
			return nil, err
		}
		cfg.RootCAs = pool
	}
	return cfg, nil
}
