package conf

import (
	"net/netip"
	"slices"
	"testing"
)

// TestIPv6Instance: an IPv6 instance is taken as written, a bare VIP as a
// /128, beside an IPv4 instance on the same interface with the same VRID
// (dual stack: a VRID is unique per address family).
func TestIPv6Instance(t *testing.T) {
	src := `
[[vrrp_instance]]
name = "VI_6"
interface = "eth0"
virtual_router_id = 52
virtual_ipaddress = ["2001:db8:94::200/64", "2001:db8:94::201"]
unicast_src_ip = "fe80::1"
unicast_peer = ["fe80::2"]

[[vrrp_instance]]
name = "VI_4"
interface = "eth0"
virtual_router_id = 52
virtual_ipaddress = ["192.168.94.200/24", "192.168.94.201"]
`
	cfg, warnings, err := Parse("t.toml", []byte(src))
	if err != nil || len(warnings) > 0 {
		t.Fatalf("err %v, warnings %v", err, warnings)
	}
	rt := cfg.VRRP[0].Runtime
	want := []netip.Prefix{netip.MustParsePrefix("2001:db8:94::200/64"), netip.MustParsePrefix("2001:db8:94::201/128")}
	if !slices.Equal(rt.VIPs, want) || rt.Version != 3 || rt.UnicastSrc != netip.MustParseAddr("fe80::1") ||
		!slices.Equal(rt.UnicastPeers, []netip.Addr{netip.MustParseAddr("fe80::2")}) {
		t.Errorf("runtime %+v", rt)
	}
	if got := cfg.VRRP[1].Runtime.VIPs[1]; got != netip.MustParsePrefix("192.168.94.201/32") {
		t.Errorf("bare IPv4 VIP: %s", got)
	}
}
