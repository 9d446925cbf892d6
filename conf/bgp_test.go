package conf

import (
	"fmt"
	"net/netip"
	"strings"
	"testing"
	"time"

	"github.com/lvsha/lvsha/lvs"
)

// TestBGPDefaults: a minimal [bgp] gets lo, port 179, a 5 s drain and the
// data-centre timers, and its VIPs as host prefixes of their family; an
// announced VIP needs no VRRP instance (no "not held" warning).
func TestBGPDefaults(t *testing.T) {
	src := `
[[virtual_server]]
address = "192.0.2.10:80"
[[virtual_server.real_server]]
address = "10.0.0.1:80"
[[virtual_server]]
address = "[2001:db8::10]:80"
[[virtual_server.real_server]]
address = "[2001:db8:1::1]:80"

[bgp]
asn = 65001
router_id = "10.0.0.11"
announce = ["192.0.2.10", "2001:db8::10"]
[[bgp.neighbor]]
address = "10.0.0.254"
asn = 65000
`
	cfg, warns, err := Parse("t.toml", []byte(src))
	if err != nil {
		t.Fatal(err)
	}
	if len(warns) != 0 {
		t.Errorf("warnings %v, want none", warns)
	}
	b := cfg.BGP
	if b == nil {
		t.Fatal("no bgp section")
	}
	if !b.SloppyTCP || b.Interface != "lo" || b.ListenPort != 179 || b.DrainTime.D() != 5*time.Second || b.RouterIDAddr != netip.MustParseAddr("10.0.0.11") {
		t.Errorf("bgp %+v", b)
	}
	want := []netip.Prefix{netip.MustParsePrefix("192.0.2.10/32"), netip.MustParsePrefix("2001:db8::10/128")}
	if len(b.VIPs) != 2 || b.VIPs[0] != want[0] || b.VIPs[1] != want[1] {
		t.Errorf("VIPs %v, want %v", b.VIPs, want)
	}
	n := b.Neighbors[0]
	if n.Addr != netip.MustParseAddr("10.0.0.254") || n.HoldTime.D() != 9*time.Second || n.ConnectRetry.D() != 5*time.Second || n.Port != 179 {
		t.Errorf("neighbor %+v", n)
	}
}

// TestMHRemoveWarns: on_failure = "remove" with mh is a warning (at its
// key), "inhibit" and other schedulers are not.
func TestMHRemoveWarns(t *testing.T) {
	for _, tc := range []struct {
		sched, onFailure string
		warn             bool
	}{{"mh", "remove", true}, {"mh", "inhibit", false}, {"rr", "remove", false}} {
		src := fmt.Sprintf("[[virtual_server]]\naddress = \"192.0.2.10:80\"\nscheduler = %q\non_failure = %q\n[[virtual_server.real_server]]\naddress = \"10.0.0.1:80\"\n", tc.sched, tc.onFailure)
		_, warns, err := Parse("t.toml", []byte(src))
		if err != nil {
			t.Fatal(err)
		}
		got := false
		for _, w := range warns {
			if w.Path == "virtual_server[0].on_failure" {
				got = true
			}
		}
		if got != tc.warn {
			t.Errorf("%s with %s: warned %v, want %v (%v)", tc.sched, tc.onFailure, got, tc.warn, warns)
		}
	}
}

// TestMHFlags: mh_fallback and mh_port become the service's scheduler
// flags; with another scheduler they are an error at their key.
func TestMHFlags(t *testing.T) {
	src := func(sched string) string {
		return fmt.Sprintf("[[virtual_server]]\naddress = \"192.0.2.10:80\"\nscheduler = %q\nmh_fallback = true\nmh_port = true\n[[virtual_server.real_server]]\naddress = \"10.0.0.1:80\"\n", sched)
	}
	cfg, _, err := Parse("t.toml", []byte(src("mh")))
	if err != nil {
		t.Fatal(err)
	}
	if f := cfg.Services[0].IPVS.SchedFlags; f != lvs.MHFallback|lvs.MHPort {
		t.Errorf("scheduler flags %#x, want mh-fallback|mh-port", f)
	}
	_, _, err = Parse("t.toml", []byte(src("sh")))
	if err == nil || !strings.Contains(err.Error(), "virtual_server[0].mh_fallback: needs scheduler") {
		t.Errorf("mh flags with sh: %v, want an error at mh_fallback", err)
	}
}
