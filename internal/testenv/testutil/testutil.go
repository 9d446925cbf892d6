// Package testutil holds helpers shared by lvsha's tests: the rule that tests
// needing root, network namespaces or the VM fail (not skip) under `make test`.
package testutil

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"sync"
	"testing"
)

// Strict reports whether the tests run under `make test`, which sets
// LVSHA_STRICT=1: then a test that cannot get what it needs fails instead of
// skipping, so CI can never pass by skipping the tests that matter.
func Strict() bool { return os.Getenv("LVSHA_STRICT") == "1" }

// NeedRoot stops the test when the process is not root: a failure under
// `make test`, a skip in a plain unprivileged `go test ./...`.
func NeedRoot(t testing.TB) {
	t.Helper()
	if os.Geteuid() == 0 {
		return
	}
	Unavailable(t, "needs root (network namespaces, raw sockets)")
}

// Unavailable fails the test under `make test` and skips it otherwise.
func Unavailable(t testing.TB, why string) {
	t.Helper()
	if Strict() {
		t.Fatalf("%s; LVSHA_STRICT=1 forbids skipping", why)
	}
	t.Skip(why)
}

var lvsha struct {
	once sync.Once
	path string
	err  error
}

// LvshaBinary returns the real lvsha binary for tests that run it:
// LVSHA_BIN (`make test` sets it to bin/lvsha), or one built once per test
// process, statically as the Makefile builds it.
func LvshaBinary(t testing.TB) string {
	t.Helper()
	lvsha.once.Do(func() {
		if lvsha.path = os.Getenv("LVSHA_BIN"); lvsha.path != "" {
			return
		}
		dir, err := os.MkdirTemp("", "lvsha-test-bin")
		if err != nil {
			lvsha.err = err
			return
		}
		lvsha.path = filepath.Join(dir, "lvsha")
		cmd := exec.Command("go", "build", "-o", lvsha.path, "github.com/lvsha/lvsha/cmd/lvsha")
		cmd.Env = append(os.Environ(), "CGO_ENABLED=0")
		if out, err := cmd.CombinedOutput(); err != nil {
			lvsha.err = fmt.Errorf("go build github.com/lvsha/lvsha/cmd/lvsha: %w\n%s", err, out)
		}
	})
	if lvsha.err != nil {
		t.Fatal(lvsha.err)
	}
	return lvsha.path
}
