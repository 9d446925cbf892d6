package main

import (
	"context"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/lvsha/lvsha/internal/testenv/testutil"
)

// TestSoak is the short soak `make test` runs: 60 s of chaos against two
// real directors, then the negative control (a split the checker must
// flag). Any invariant violation fails it.
func TestSoak(t *testing.T) {
	if testing.Short() {
		testutil.Unavailable(t, "the soak needs root and network namespaces (not with -short)")
	}
	testutil.NeedRoot(t)
	bin := testutil.LvshaBinary(t)
	d := 60 * time.Second
	if v := os.Getenv("LVSHA_SOAK"); v != "" {
		var err error
		if d, err = time.ParseDuration(v); err != nil {
			t.Fatalf("LVSHA_SOAK: %v", err)
		}
	}
	var out strings.Builder
	o := options{bin: bin, duration: d, seed: uint64(time.Now().UnixNano()), control: true, out: &logWriter{t: t}}
	res, err := run(context.Background(), o)
	if err != nil {
		t.Fatal(err)
	}
	res.report(&out)
	t.Log(out.String())
	if err := res.verdict(); err != nil {
		t.Errorf("seed %d: %v", o.seed, err)
	}
}

// logWriter sends the run's progress lines to the test log as they come.
type logWriter struct{ t *testing.T }

func (w *logWriter) Write(b []byte) (int, error) {
	w.t.Log(strings.TrimRight(string(b), "\n"))
	return len(b), nil
}
