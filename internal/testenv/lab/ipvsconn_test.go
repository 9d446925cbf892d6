package lab

import (
	"net/netip"
	"testing"
)

func TestParseIPVSConns(t *testing.T) {
	const file = "Pro FromIP   FPrt ToIP     TPrt DestIP   DPrt State       Expires PEName PEData\n" +
		"TCP C0A85E0A A1B2 C0A85EC8 0050 C0A85E86 0050 ESTABLISHED     899\n" +
		"IP  C0A85E0A 0000 C0A85EC8 0050 C0A85E87 0050 NONE            299\n"
	got, err := parseIPVSConns(file)
	if err != nil {
		t.Fatal(err)
	}
	want := []IPVSConn{
		{Client: netip.MustParseAddrPort("192.168.94.10:41394"), Dest: netip.MustParseAddrPort("192.168.94.134:80"), State: "ESTABLISHED"},
		{Client: netip.MustParseAddrPort("192.168.94.10:0"), Dest: netip.MustParseAddrPort("192.168.94.135:80"), State: "NONE", Template: true},
	}
	if len(got) != 2 || got[0] != want[0] || got[1] != want[1] {
		t.Fatalf("got %+v, want %+v", got, want)
	}
	if _, err := parseIPVSConns("header\nTCP zz\n"); err == nil {
		t.Error("a malformed line parsed")
	}
}
