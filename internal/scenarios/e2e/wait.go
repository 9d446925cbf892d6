package e2e

import (
	"context"
	"errors"
	"fmt"
	"time"
)

// fatalError stops a wait at once: waiting longer cannot help (a daemon
// died, a namespace is gone).
type fatalError struct{ err error }

func (f fatalError) Error() string { return f.err.Error() }
func (f fatalError) Unwrap() error { return f.err }

func fatalf(format string, args ...any) error {
	return fatalError{fmt.Errorf(format, args...)}
}

// waitFor polls cond every interval until it returns nil, and returns how
// long that took. cond's non-nil answer says why the condition does not
// hold yet; the last one is in the timeout error, so a failed wait says
// what it was still seeing. A fatalError ends the wait at once.
func waitFor(ctx context.Context, what string, timeout, interval time.Duration, cond func() error) (time.Duration, error) {
	start := time.Now()
	deadline := start.Add(timeout)
	for {
		err := cond()
		if err == nil {
			return time.Since(start), nil
		}
		var fe fatalError
		if errors.As(err, &fe) {
			return time.Since(start), fmt.Errorf("waiting for %s: %w", what, fe.err)
		}
		if time.Now().After(deadline) {
			return time.Since(start), fmt.Errorf("timed out after %v waiting for %s: last seen: %w", timeout, what, err)
		}
		select {
		case <-ctx.Done():
			return time.Since(start), fmt.Errorf("waiting for %s: %w (last seen: %v)", what, ctx.Err(), err)
		case <-time.After(interval):
		}
	}
}
