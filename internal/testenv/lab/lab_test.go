package lab

import (
	"io"
	"strings"
	"testing"
	"time"

	"github.com/lvsha/lvsha/internal/testenv/netns"
	"github.com/lvsha/lvsha/internal/testenv/testutil"
)

// The topology without IPVS (runs on the host): each web server answers on
// its own address, and nobody answers ARP for the VIP (the webs suppress
// it, no director holds it here).
func TestSeedTopology(t *testing.T) {
	testutil.NeedRoot(t)
	s, err := NewSeed(netns.UniquePrefix("lvl"), SeedOptions{HTTPPort: 80})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	c := HTTPClient(s.Client.NS, false)
	for _, w := range []*netns.Node{s.Web1, s.Web2} {
		resp, err := c.Get("http://" + w.Addr.Addr().String() + "/")
		if err != nil {
			t.Fatal(err)
		}
		b, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if got := strings.TrimSpace(string(b)); got != "this is "+w.Role {
			t.Errorf("%s answered %q", w.Role, got)
		}
		if ok, err := w.HasAddr("lo", VIP); err != nil || !ok {
			t.Errorf("%s: VIP not on lo: %v", w.Role, err)
		}
	}
	c.Timeout = 2 * time.Second
	if _, err := c.Get("http://" + VIP.String() + "/"); err == nil {
		t.Fatal("VIP reachable without a director: a real server answered ARP for it")
	}
	if mac, err := s.Client.NeighbourMAC(VIP); err == nil && mac != nil {
		t.Fatalf("client learnt a MAC for the VIP: %v", mac)
	}
}
