package probe

import (
	"net/netip"
	"testing"
	"time"

	"github.com/lvsha/lvsha/internal/testenv/netns"
	"github.com/lvsha/lvsha/internal/testenv/testutil"
)

// TestOutage: a prober of each family sees steady replies, then an outage
// while the target's port is isolated, of about that length and no other.
func TestOutage(t *testing.T) {
	if testing.Short() {
		testutil.Unavailable(t, "namespace tests do not run with -short")
	}
	testutil.NeedRoot(t)
	lab, err := netns.NewLab(netns.UniquePrefix("lvp"))
	if err != nil {
		t.Fatal(err)
	}
	defer lab.Close()
	a, err := lab.AddNode("a", netip.MustParsePrefix("10.97.0.1/24"))
	if err != nil {
		t.Fatal(err)
	}
	b, err := lab.AddNode("b", netip.MustParsePrefix("10.97.0.2/24"))
	if err != nil {
		t.Fatal(err)
	}
	for n, addr := range map[*netns.Node]string{a: "2001:db8:97::1/64", b: "2001:db8:97::2/64"} {
		if out, err := n.Run("ip", "-6", "addr", "add", addr, "dev", "eth0", "nodad"); err != nil {
			t.Fatalf("%v: %s", err, out)
		}
	}
	for _, dst := range []string{"10.97.0.2", "2001:db8:97::2"} {
		t.Run(dst, func(t *testing.T) {
			p, err := Start(a.NS, netip.MustParseAddr(dst), 5*time.Millisecond)
			if err != nil {
				t.Fatal(err)
			}
			defer p.Stop()
			if !netns.WaitFor(5*time.Second, 5*time.Millisecond, func() bool { return p.Answered() >= 20 }) {
				t.Fatalf("%d replies", p.Answered())
			}
			const cut = 300 * time.Millisecond
			at := time.Now()
			if err := lab.Isolate("b", true); err != nil {
				t.Fatal(err)
			}
			time.Sleep(cut) // the outage being measured: a length, not a wait for an event
			if err := lab.Isolate("b", false); err != nil {
				t.Fatal(err)
			}
			if !netns.WaitFor(5*time.Second, 5*time.Millisecond, func() bool { return p.AnsweredSince(at.Add(cut)) >= 20 }) {
				t.Fatalf("no replies after the cut")
			}
			outs, _ := p.OutagesAfter(-1, time.Now())
			if len(outs) != 1 || outs[0].Length() < cut || outs[0].Length() > cut+500*time.Millisecond || outs[0].Lost < 40 {
				t.Fatalf("outages %+v, want one of about %v", outs, cut)
			}
			if g := p.LongestReplyGap(at.Add(-time.Second)); g < cut || g > cut+500*time.Millisecond {
				t.Errorf("longest reply gap %v, want about %v", g, cut)
			}
		})
	}
}
