package vrrp

import (
	"testing"
	"time"
)

// TestDropLog: the first drop of each reason warns, repeats are counted and
// warned about again once a minute has passed since the last warning, with
// the number that went unlogged in between. The times are given, not slept.
func TestDropLog(t *testing.T) {
	var l dropLog
	steps := []struct {
		at     time.Duration
		reason string
		warn   bool
		missed uint64
	}{
		{0, "ttl", true, 0},
		{time.Second, "ttl", false, 0},
		{30 * time.Second, "ttl", false, 0},
		{30 * time.Second, "checksum", true, 0}, // each reason its own
		{59 * time.Second, "ttl", false, 0},
		{60 * time.Second, "ttl", true, 3}, // a minute after the first warning
		{61 * time.Second, "ttl", false, 0},
		{89 * time.Second, "checksum", false, 0},
		{90 * time.Second, "checksum", true, 1},
		{10 * time.Minute, "ttl", true, 1}, // after a quiet spell: at once, with what it missed
		{10*time.Minute + time.Second, "ttl", false, 0},
	}
	for _, s := range steps {
		warn, missed := l.note(t0.Add(s.at), s.reason)
		if warn != s.warn || missed != s.missed {
			t.Errorf("%v %s: warn %v missed %d, want %v %d", s.at, s.reason, warn, missed, s.warn, s.missed)
		}
	}
}
