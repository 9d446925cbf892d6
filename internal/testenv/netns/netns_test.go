package netns

import (
	"net/netip"
	"os/exec"
	"strings"
	"testing"

	"github.com/lvsha/lvsha/internal/testenv/testutil"
)

func TestLab(t *testing.T) {
	if testing.Short() {
		testutil.Unavailable(t, "namespace tests do not run with -short")
	}
	testutil.NeedRoot(t)
	if _, err := exec.LookPath("ping"); err != nil {
		testutil.Unavailable(t, "ping not installed")
	}
	lab, err := NewLab(UniquePrefix("lvn"))
	if err != nil {
		t.Fatal(err)
	}
	defer lab.Close()
	a, err := lab.AddNode("a", netip.MustParsePrefix("10.98.0.1/24"))
	if err != nil {
		t.Fatal(err)
	}
	b, err := lab.AddNode("b", netip.MustParsePrefix("10.98.0.2/24"))
	if err != nil {
		t.Fatal(err)
	}
	// Commands run inside the namespace: it sees its own eth0.
	out, err := a.Run("cat", "/proc/net/dev")
	if err != nil || !strings.Contains(out, "eth0") {
		t.Fatalf("inside a: %v %q", err, out)
	}
	if _, err := a.Run("ping", "-c1", "-W2", "10.98.0.2"); err != nil {
		t.Fatal(err)
	}
	mac, err := a.NeighbourMAC(netip.MustParseAddr("10.98.0.2"))
	if err != nil || mac.String() != b.MAC.String() {
		t.Fatalf("a's ARP entry for b: %v %v, want %v", mac, err, b.MAC)
	}
	// Isolated: link up, nobody reachable.
	if err := lab.Isolate("b", true); err != nil {
		t.Fatal(err)
	}
	if _, err := a.Run("ping", "-c1", "-W1", "10.98.0.2"); err == nil {
		t.Fatal("ping crossed an isolated port")
	}
	if err := lab.Isolate("b", false); err != nil {
		t.Fatal(err)
	}
	if _, err := a.Run("ping", "-c1", "-W2", "10.98.0.2"); err != nil {
		t.Fatalf("after rejoin: %v", err)
	}
	ok, err := b.HasAddr("eth0", netip.MustParseAddr("10.98.0.2"))
	if err != nil || !ok {
		t.Fatalf("HasAddr: %v %v", ok, err)
	}
	if err := lab.SetPort("b", false); err != nil {
		t.Fatal(err)
	}
	if _, err := a.Run("ping", "-c1", "-W1", "10.98.0.2"); err == nil {
		t.Fatal("ping crossed an unplugged port")
	}
	if err := lab.Close(); err != nil {
		t.Fatal(err)
	}
	if out, _ := exec.Command("ip", "netns", "list").Output(); strings.Contains(string(out), lab.Prefix) {
		t.Errorf("namespaces left: %s", out)
	}
}
