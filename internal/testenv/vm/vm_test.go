package vm_test

import (
	"bytes"
	"errors"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/lvsha/lvsha/internal/testenv/vm"
	"github.com/lvsha/lvsha/internal/testenv/vm/vmtest"
)

// TestGuestEnv runs inside the VM (started by TestVMSelf) and checks what
// /init promises the binary: mounts, writable /run and /tmp, IPVS loaded.
func TestGuestEnv(t *testing.T) {
	if !vm.InGuest() {
		t.Skip("runs inside the VM, started by TestVMSelf")
	}
	for _, p := range []string{"/proc/net/ip_vs", "/sys/class/net/lo", "/sys/module/bridge", "/sys/module/veth", "/sys/module/ip_vs_mh"} {
		if _, err := os.Stat(p); err != nil {
			t.Errorf("%s: %v", p, err)
		}
	}
	for _, d := range []string{"/run", "/tmp", "/var/run"} {
		if err := os.WriteFile(d+"/probe", []byte("x"), 0o644); err != nil {
			t.Errorf("%s not writable: %v", d, err)
		}
	}
	if b, err := os.ReadFile("/sys/class/net/lo/operstate"); err != nil || strings.TrimSpace(string(b)) == "down" {
		t.Errorf("lo not up: %q %v", b, err)
	}
	if os.Getenv("SELFTEST_ARG") != "it's \"quoted\"" {
		t.Errorf("env not passed verbatim: %q", os.Getenv("SELFTEST_ARG"))
	}
	if b, err := os.ReadFile("/etc/extra.txt"); err != nil || string(b) != "extra file\n" {
		t.Errorf("extra file: %q %v", b, err)
	}
}

// TestGuestFail fails on purpose inside the VM so TestVMExitCode can check
// that a failing guest is a failing exit code on the host.
func TestGuestFail(t *testing.T) {
	if !vm.InGuest() || os.Getenv("SELFTEST_FAIL") != "1" {
		t.Skip("runs inside the VM, started by TestVMExitCode")
	}
	t.Fatal("failing on purpose")
}

func TestVMSelf(t *testing.T) {
	extra := t.TempDir() + "/extra.txt"
	if err := os.WriteFile(extra, []byte("extra file\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	vmtest.Run(t, "^TestGuestEnv$", vm.Options{
		Env:     []string{"SELFTEST_ARG=it's \"quoted\""},
		Files:   map[string]string{"/etc/extra.txt": extra},
		Timeout: 2 * time.Minute,
	})
}

func TestVMExitCode(t *testing.T) {
	vmtest.Need(t)
	// vmtest.Run fails t on a non-zero exit, so call vm.Run directly.
	bin := vmtest.BuildTest(t)
	res, err := vm.Run(t.Context(), vm.Options{
		Binary: bin, Args: []string{"-test.run", "^TestGuestFail$"},
		Env: []string{"SELFTEST_FAIL=1"}, Timeout: 2 * time.Minute,
	})
	if err != nil {
		t.Fatalf("vm: %v\n%s", err, res.Console)
	}
	if res.ExitCode != 1 || !strings.Contains(res.Console, "failing on purpose") {
		t.Fatalf("exit code %d, want 1; console:\n%s", res.ExitCode, res.Console)
	}
}

// TestVMNoMarker: a guest that dies before the binary returns (here the
// "binary" powers the VM off itself) must be an error, never exit code 0.
func TestVMNoMarker(t *testing.T) {
	vmtest.Need(t)
	script := t.TempDir() + "/die.sh"
	if err := os.WriteFile(script, []byte("#!/bin/sh\npoweroff -f\n"), 0o755); err != nil {
		t.Fatal(err)
	}
	res, err := vm.Run(t.Context(), vm.Options{Binary: script, Timeout: time.Minute})
	if !errors.Is(err, vm.ErrNoMarker) {
		t.Fatalf("err = %v, want ErrNoMarker; console:\n%s", err, res.Console)
	}
}

// TestGuestOutput: the kernel's lines, the markers and the dropped
// prefixes go; the rest comes through whole, however it is split.
func TestGuestOutput(t *testing.T) {
	var b bytes.Buffer
	w := vm.GuestOutput(&b, "Keepalived")
	in := "[    0.1] Linux version\r\nlvsha-vm-result 0123 0\nKeepalived_vrrp: x\nrow 1\nrow 2\r\npartial"
	for _, c := range []string{in[:7], in[7:40], in[40:]} {
		if _, err := w.Write([]byte(c)); err != nil {
			t.Fatal(err)
		}
	}
	if got := b.String(); got != "row 1\nrow 2\n" {
		t.Fatalf("got %q", got)
	}
}
