package e2e

import (
	"regexp"
	"strings"
	"testing"

	"github.com/lvsha/lvsha/internal/testenv/vm"
)

// TestDualStackVM runs TestDualStack in the VM (real IPVS); it fails unless
// the whole dual-stack scenario passes.
func TestDualStackVM(t *testing.T) {
	res := runInVM(t, "^TestDualStack$")
	for _, m := range regexp.MustCompile(`PASS: .*`).FindAllString(res.Console, -1) {
		t.Log(strings.TrimSpace(m))
	}
}

// TestDualStack is the scenario; it runs inside the VM.
func TestDualStack(t *testing.T) {
	if !vm.InGuest() {
		t.Skip("runs inside the VM, started by TestDualStackVM")
	}
	rep, err := RunDualStack(t.Context(), GuestLvsha, t.TempDir(), func(f string, a ...any) { t.Logf(f, a...) })
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("report: %+v", *rep)
}
