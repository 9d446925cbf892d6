package main

import (
	"strings"
	"testing"
)

// TestConsoleFilter: the narration passes through whole, line by line even
// when the console delivers it in pieces, without the harness's markers,
// carriage returns or (unless asked) kernel messages.
func TestConsoleFilter(t *testing.T) {
	const console = "lvsha-vm-start 0123456789abcdef\r\n" +
		"==> [1/6] Building\r\n    ok: 6 namespaces\r\n" +
		"[    5.123456] IPVS: Registered protocols\r\n" +
		"lvsha-vm-result 0123456789abcdef 0\r\n[   28.111804] reboot: Power down\r\ntail without newline"
	for _, c := range []struct {
		kernel bool
		want   string
	}{
		{false, "==> [1/6] Building\n    ok: 6 namespaces\ntail without newline\n"},
		{true, "==> [1/6] Building\n    ok: 6 namespaces\n[    5.123456] IPVS: Registered protocols\n[   28.111804] reboot: Power down\ntail without newline\n"},
	} {
		var out strings.Builder
		f := &consoleFilter{w: &out, kernel: c.kernel}
		for i := 0; i < len(console); i += 7 {
			if _, err := f.Write([]byte(console[i:min(i+7, len(console))])); err != nil {
				t.Fatal(err)
			}
		}
		f.flush()
		if out.String() != c.want {
			t.Errorf("kernel=%v: got\n%q\nwant\n%q", c.kernel, out.String(), c.want)
		}
	}
}

// TestHostRejectsDynamicLvsha: -lvsha must name a binary the busybox guest
// can run; the verdict says why not and the exit code is 1.
func TestHostRejectsDynamicLvsha(t *testing.T) {
	var out, errb strings.Builder
	code := host([]string{"-lvsha", "/bin/sh"}, &out, &errb)
	if code != 1 || !strings.Contains(out.String(), "VERDICT: FAIL") {
		t.Fatalf("exit %d, output:\n%s%s", code, out.String(), errb.String())
	}
	if !strings.Contains(out.String(), "dynamically linked") && !strings.Contains(out.String(), "qemu-system-x86_64 not installed") {
		t.Errorf("verdict does not say why: %s", out.String())
	}
}
