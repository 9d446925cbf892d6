package vrrp

import (
	"net/netip"
	"reflect"
	"testing"
	"time"
)

// TestReceiveChecks has one row per receive check (RFC 9568 7.1, RFC 3768
// 7.1 for VRRPv2): the packet, and the drop reason it must be counted under,
// or "" for an advert the machine acts on. Where two checks fail, the first
// in the order of Machine.check names the drop.
func TestReceiveChecks(t *testing.T) {
	peer, other := netip.MustParseAddr("10.0.0.2"), netip.MustParseAddr("10.0.0.7")
	vip := []netip.Addr{netip.MustParseAddr("10.0.0.100")}
	v3 := MachineConfig{VRID: 51, Priority: 100, Version: 3, AdvertInterval: time.Second, Preempt: true, PrimaryIP: ipA, VIPs: vip}
	v2 := v3
	v2.Version, v2.AuthPass = 2, "secret12"
	v2open := v2
	v2open.AuthPass = ""
	uni := v3
	uni.UnicastPeers = []netip.Addr{peer}
	two := v3
	two.VIPs = []netip.Addr{netip.MustParseAddr("10.0.0.100"), netip.MustParseAddr("10.0.0.101")}
	// addrs sets an advert's address list.
	addrs := func(list ...string) func(a *Advert) {
		return func(a *Advert) {
			a.Addrs = nil
			for _, s := range list {
				a.Addrs = append(a.Addrs, netip.MustParseAddr(s))
			}
		}
	}

	// advert is a valid advert for cfg from peer, changed by mod.
	advert := func(cfg MachineConfig, mod func(a *Advert)) *Advert {
		a := NewMachine(cfg).Advert(150)
		if mod != nil {
			mod(a)
		}
		return a
	}
	// packet carries a from src to the group with TTL 255, changed by mod.
	packet := func(a *Advert, src netip.Addr, mode ChecksumMode, mod func(p *Packet)) Packet {
		b, err := a.Marshal(mode, src, Group)
		if err != nil {
			t.Fatal(err)
		}
		p := Packet{Src: src, Dst: Group, TTL: 255, Payload: b}
		if mod != nil {
			mod(&p)
		}
		return p
	}
	ok3 := advert(v3, nil)
	ok2 := advert(v2, nil)
	tests := []struct {
		name string
		cfg  MachineConfig
		p    Packet
		drop string
	}{
		{"v3 accepted, keepalived checksum", v3, packet(ok3, peer, ChecksumPseudoHeader, nil), ""},
		{"v3 accepted, RFC checksum", v3, packet(ok3, peer, ChecksumMessage, nil), ""},
		{"v2 accepted with the password", v2, packet(ok2, peer, ChecksumMessage, nil), ""},
		{"v2 accepted without auth", v2open, packet(advert(v2open, nil), peer, ChecksumMessage, nil), ""},
		{"unicast from a listed peer", uni, packet(ok3, peer, ChecksumPseudoHeader, func(p *Packet) { p.Dst = ipA; p.Payload, _ = ok3.Marshal(ChecksumPseudoHeader, peer, ipA) }), ""},

		{"own source address", v3, packet(ok3, ipA, ChecksumPseudoHeader, nil), "own"},
		{"own before ttl", v3, packet(ok3, ipA, ChecksumPseudoHeader, func(p *Packet) { p.TTL = 64 }), "own"},
		{"ttl 64", v3, packet(ok3, peer, ChecksumPseudoHeader, func(p *Packet) { p.TTL = 64 }), "ttl"},
		{"ttl 254", v3, packet(ok3, peer, ChecksumPseudoHeader, func(p *Packet) { p.TTL = 254 }), "ttl"},
		{"ttl before decoding", v3, packet(ok3, peer, ChecksumPseudoHeader, func(p *Packet) { p.TTL, p.Payload = 1, p.Payload[:3] }), "ttl"},
		{"shorter than a header", v3, packet(ok3, peer, ChecksumPseudoHeader, func(p *Packet) { p.Payload = p.Payload[:7] }), "length"},
		{"length does not match the count", v3, packet(ok3, peer, ChecksumPseudoHeader, func(p *Packet) { p.Payload = p.Payload[:len(p.Payload)-2] }), "length"},
		{"address count 0", v3, packet(ok3, peer, ChecksumPseudoHeader, func(p *Packet) { p.Payload[3] = 0 }), "length"},
		{"version 4 on the wire", v3, packet(ok3, peer, ChecksumPseudoHeader, func(p *Packet) { p.Payload[0] = 0x41 }), "version"},
		{"type 2", v3, packet(ok3, peer, ChecksumPseudoHeader, func(p *Packet) { p.Payload[0] = 0x32 }), "type"},
		{"checksum", v3, packet(ok3, peer, ChecksumPseudoHeader, func(p *Packet) { p.Payload[6] ^= 0xff }), "checksum"},
		{"checksum over another destination", v3, packet(ok3, peer, ChecksumPseudoHeader, func(p *Packet) { p.Dst = other }), "checksum"},
		{"vrid", v3, packet(advert(v3, func(a *Advert) { a.VRID = 52 }), peer, ChecksumPseudoHeader, nil), "vrid"},
		{"vrid before version", v3, packet(advert(v2, func(a *Advert) { a.VRID = 52 }), peer, ChecksumMessage, nil), "vrid"},
		{"v2 advert to a v3 router", v3, packet(ok2, peer, ChecksumMessage, nil), "version"},
		{"v3 advert to a v2 router", v2, packet(ok3, peer, ChecksumPseudoHeader, nil), "version"},
		{"unicast from an unlisted source", uni, packet(ok3, other, ChecksumPseudoHeader, nil), "peer"},
		{"v2 wrong password", v2, packet(advert(v2, func(a *Advert) { copy(a.AuthData[:], "wrong\x00\x00\x00") }), peer, ChecksumMessage, nil), "auth"},
		{"v2 no auth to a router with a password", v2, packet(advert(v2open, nil), peer, ChecksumMessage, nil), "auth"},
		{"v2 password to a router without", v2open, packet(ok2, peer, ChecksumMessage, nil), "auth"},
		{"v2 unknown auth type", v2, packet(advert(v2, func(a *Advert) { a.AuthType = 2 }), peer, ChecksumMessage, nil), "auth"},
		{"v2 other interval", v2, packet(advert(v2, func(a *Advert) { a.AdvertInterval = 2 }), peer, ChecksumMessage, nil), "interval"},
		{"auth before interval", v2, packet(advert(v2, func(a *Advert) { a.AdvertInterval, a.AuthType = 2, 0 }), peer, ChecksumMessage, nil), "auth"},
		{"v3 other interval is learned, not dropped", v3, packet(advert(v3, func(a *Advert) { a.MaxAdvertInterval = 50 }), peer, ChecksumPseudoHeader, nil), ""},

		// A VRID collision: a neighbour's virtual router with the same
		// VRID and other addresses (keepalived: "ip address associated
		// with VRID 51 not present in MASTER advert").
		{"v3 other address list", v3, packet(advert(v3, addrs("10.0.0.200")), peer, ChecksumPseudoHeader, nil), "vip_mismatch"},
		{"v2 other address list", v2, packet(advert(v2, addrs("10.0.0.200")), peer, ChecksumMessage, nil), "vip_mismatch"},
		{"one address more", v3, packet(advert(v3, addrs("10.0.0.100", "10.0.0.101")), peer, ChecksumPseudoHeader, nil), "vip_mismatch"},
		{"one address fewer", two, packet(advert(two, addrs("10.0.0.101")), peer, ChecksumPseudoHeader, nil), "vip_mismatch"},
		{"same count, one of ours missing", two, packet(advert(two, addrs("10.0.0.100", "10.0.0.100")), peer, ChecksumPseudoHeader, nil), "vip_mismatch"},
		{"our addresses in another order", two, packet(advert(two, addrs("10.0.0.101", "10.0.0.100")), peer, ChecksumPseudoHeader, nil), ""},
		{"priority 0 with other addresses", v3, packet(advert(v3, func(a *Advert) { addrs("10.0.0.200")(a); a.Priority = 0 }), peer, ChecksumPseudoHeader, nil), "vip_mismatch"},
		{"priority 255 with other addresses", v3, packet(advert(v3, func(a *Advert) { addrs("10.0.0.200")(a); a.Priority = 255 }), peer, ChecksumPseudoHeader, nil), "vip_mismatch"},
		{"auth before vip_mismatch", v2, packet(advert(v2, func(a *Advert) { addrs("10.0.0.200")(a); a.AuthType = 0 }), peer, ChecksumMessage, nil), "auth"},
		{"vrid before vip_mismatch", v3, packet(advert(v3, func(a *Advert) { addrs("10.0.0.200")(a); a.VRID = 52 }), peer, ChecksumPseudoHeader, nil), "vrid"},
	}
	for _, tt := range tests {
		m := NewMachine(tt.cfg)
		m.Step(t0, Start{LinkUp: true})
		acts, drop := m.Receive(t0.Add(time.Second), tt.p)
		if drop != tt.drop {
			t.Errorf("%s: drop %q, want %q", tt.name, drop, tt.drop)
			continue
		}
		// A backup re-arms its master-down timer for an accepted advert
		// of a higher priority and follows its sender; a dropped one
		// changes nothing.
		if tt.drop == "" {
			if len(acts) != 1 || m.Master() != tt.p.Src {
				t.Errorf("%s: accepted but acts %v, master %v", tt.name, acts, m.Master())
			}
		} else if acts != nil || m.Master().IsValid() {
			t.Errorf("%s: dropped but acts %v, master %v", tt.name, acts, m.Master())
		}
	}
}

// TestAdvert checks the advert a machine sends for each version.
func TestAdvert(t *testing.T) {
	vips := []netip.Addr{netip.MustParseAddr("10.0.0.100"), netip.MustParseAddr("10.0.0.101")}
	c := MachineConfig{VRID: 51, Priority: 100, Version: 3, AdvertInterval: 250 * time.Millisecond, PrimaryIP: ipA, VIPs: vips}
	want := &Advert{Version: 3, Type: 1, VRID: 51, Priority: 7, MaxAdvertInterval: 25, Addrs: vips}
	if got := NewMachine(c).Advert(7); !reflect.DeepEqual(got, want) {
		t.Errorf("v3: %+v, want %+v", got, want)
	}
	c.Version, c.AdvertInterval, c.AuthPass = 2, 3*time.Second, "pw"
	want = &Advert{Version: 2, Type: 1, VRID: 51, Priority: 0, AdvertInterval: 3, AuthType: AuthPassword, AuthData: [8]byte{'p', 'w'}, Addrs: vips}
	if got := NewMachine(c).Advert(0); !reflect.DeepEqual(got, want) {
		t.Errorf("v2: %+v, want %+v", got, want)
	}
	c.AuthPass = ""
	want.AuthType, want.AuthData = AuthNone, [8]byte{}
	if got := NewMachine(c).Advert(0); !reflect.DeepEqual(got, want) {
		t.Errorf("v2 without auth: %+v, want %+v", got, want)
	}
}
