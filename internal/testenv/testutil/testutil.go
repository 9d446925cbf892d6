// Package testutil holds helpers shared by lvsha's tests: the rule that tests
// needing root, network namespaces or the VM fail (not skip) under `make test`.
package testutil

import (
	"os"
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
