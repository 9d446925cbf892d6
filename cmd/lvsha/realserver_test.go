package main

import (
	"bytes"
	"net/netip"
	"path/filepath"
	"strings"
	"testing"

	"github.com/lvsha/lvsha/lvs/realserver"
)

func TestPrintDown(t *testing.T) {
	var b bytes.Buffer
	printDown(&b, realserver.Report{
		Removed:  []netip.Addr{netip.MustParseAddr("192.0.2.1")},
		Rescoped: []netip.Addr{netip.MustParseAddr("192.0.2.2")},
		Restored: []string{"net.ipv4.conf.all.arp_ignore=0", "net.ipv4.conf.all.arp_announce=0"},
		Left:     []string{"VIP 192.0.2.3 left on lo: up did not put it there"},
	})
	want := "realserver down: removed 192.0.2.1 from lo; gave 192.0.2.2 on lo back its scope global; " +
		"restored net.ipv4.conf.all.arp_ignore=0 net.ipv4.conf.all.arp_announce=0\n" +
		"realserver down: VIP 192.0.2.3 left on lo: up did not put it there\n"
	if b.String() != want {
		t.Errorf("got\n%s\nwant\n%s", b.String(), want)
	}
}

// TestRealserverDownWithoutState: with no state file down changes nothing
// (it only lists addresses), says so and exits 0 so a stop succeeds.
func TestRealserverDownWithoutState(t *testing.T) {
	dir := t.TempDir()
	code, out, errOut := runCLI("realserver", "down", "--vip", "192.0.2.77", "--interface", "eth0", "--state-dir", dir)
	if code != 0 {
		t.Fatalf("exit %d, stderr %s", code, errOut)
	}
	if !strings.Contains(out, "realserver down: nothing undone\n") ||
		!strings.Contains(out, "ARP sysctls left as they are") {
		t.Errorf("stdout %q", out)
	}
	if !strings.Contains(errOut, filepath.Join(dir, realserver.StateFile)+": no state file: nothing undone") {
		t.Errorf("stderr %q", errOut)
	}
}
