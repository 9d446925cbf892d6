package e2e

import (
	"path/filepath"
	"regexp"
	"strings"
	"testing"

	"github.com/lvsha/lvsha/internal/testenv/testutil"
	"github.com/lvsha/lvsha/internal/testenv/vm"
	"github.com/lvsha/lvsha/internal/testenv/vm/vmtest"
)

// TestViaVIPVM runs TestViaVIP in the VM (real IPVS).
func TestViaVIPVM(t *testing.T) {
	if testing.Short() {
		testutil.Unavailable(t, "the VM scenario does not run with -short")
	}
	vmtest.Need(t)
	root, err := ModuleRoot(t.Context())
	if err != nil {
		t.Fatal(err)
	}
	lvsha := filepath.Join(t.TempDir(), "lvsha")
	if err := BuildLvsha(t.Context(), lvsha); err != nil {
		t.Fatal(err)
	}
	files, err := GuestFiles(root, lvsha)
	if err != nil {
		t.Fatal(err)
	}
	res := vmtest.Run(t, "^TestViaVIP$", VMOptions(files))
	for _, m := range regexp.MustCompile(`PASS: .*`).FindAllString(res.Console, -1) {
		t.Log(strings.TrimSpace(m))
	}
}

// TestViaVIP is the scenario; it runs inside the VM.
func TestViaVIP(t *testing.T) {
	if !vm.InGuest() {
		t.Skip("runs inside the VM, started by TestViaVIPVM")
	}
	if err := RunViaVIP(t.Context(), GuestLvsha, t.TempDir(), func(f string, a ...any) { t.Logf(f, a...) }); err != nil {
		t.Fatal(err)
	}
}
