package vrrp

import (
	"bytes"
	"encoding/binary"
	"errors"
	"net"
	"net/netip"
	"path/filepath"
	"testing"

	"github.com/mdlayher/ndp"
)

// ipv6Frame is one IPv6 frame of a capture, split into what the tests
// check.
type ipv6Frame struct {
	ethSrc, ethDst net.HardwareAddr
	tclass         uint8
	hopLimit       uint8
	nextHeader     uint8
	src, dst       netip.Addr
	payload        []byte
}

// parseIPv6Frame splits an Ethernet frame carrying IPv6 without extension
// headers (what keepalived's VRRP and NA frames are).
func parseIPv6Frame(t testing.TB, f []byte) ipv6Frame {
	t.Helper()
	if len(f) < 14+40 || binary.BigEndian.Uint16(f[12:]) != 0x86dd {
		t.Fatalf("not an IPv6 frame: %x", f)
	}
	ip := f[14:]
	plen := int(binary.BigEndian.Uint16(ip[4:]))
	if len(ip) < 40+plen {
		t.Fatalf("truncated IPv6 frame: %x", f)
	}
	return ipv6Frame{
		ethDst: net.HardwareAddr(f[0:6]), ethSrc: net.HardwareAddr(f[6:12]),
		tclass:   uint8(binary.BigEndian.Uint16(ip[0:]) >> 4),
		hopLimit: ip[7], nextHeader: ip[6],
		src: netip.AddrFrom16([16]byte(ip[8:24])), dst: netip.AddrFrom16([16]byte(ip[24:40])),
		payload: ip[40 : 40+plen],
	}
}

// checkIPv6Frame checks an IPv6 frame of an interop capture: a VRRP advert
// (decoded, then re-encoded to the same bytes) or an unsolicited NA (in the
// form lvsha sends, byte for byte); it says which.
func checkIPv6Frame(t *testing.T, name string, f []byte) (vrrp, na bool) {
	t.Helper()
	fr := parseIPv6Frame(t, f)
	switch fr.nextHeader {
	case Protocol:
		a, err := Unmarshal(fr.payload, fr.src, fr.dst)
		if err != nil {
			t.Errorf("%s: %v", name, err)
			return false, false
		}
		b, err := a.Marshal(ChecksumMessage, fr.src, fr.dst) // the mode does not apply to IPv6
		if err != nil || !bytes.Equal(b, fr.payload) {
			t.Errorf("%s: re-encode %x, %v; want %x", name, b, err, fr.payload)
		}
		return true, false
	case 58:
		m, err := ndp.ParseMessage(fr.payload)
		if err != nil {
			t.Errorf("%s: %v", name, err)
			return false, false
		}
		got, ok := m.(*ndp.NeighborAdvertisement)
		if !ok {
			t.Errorf("%s: %T, not a neighbour advertisement", name, m)
			return false, false
		}
		// keepalived sends it from the VIP to all nodes, hop limit 255,
		// from the interface's MAC; ours, built for the same VIP and
		// MAC (no forwarding), must be the same bytes, checksum included.
		if fr.src != got.TargetAddress || fr.dst != allNodes || fr.hopLimit != 255 ||
			!bytes.Equal(fr.ethDst, net.HardwareAddr{0x33, 0x33, 0, 0, 0, 1}) {
			t.Errorf("%s: NA %s -> %s hop limit %d to %s", name, fr.src, fr.dst, fr.hopLimit, fr.ethDst)
		}
		ours, err := ndp.MarshalMessageChecksum(unsolicitedNA(got.TargetAddress, fr.ethSrc, false), fr.src, fr.dst)
		if err != nil || !bytes.Equal(ours, fr.payload) {
			t.Errorf("%s: our NA %x, %v; keepalived's %x", name, ours, err, fr.payload)
		}
		return false, true
	}
	t.Errorf("%s: next header %d", name, fr.nextHeader)
	return false, false
}

// TestGoldenVectorsIPv6 checks the IPv6 adverts keepalived 2.2.7 sent
// (testdata/interop/keepalived-2.2.7-v6*.pcap, from the .conf files
// beside them): VRRPv3 over IPv6 to ff02::12 from the link-local address,
// hop limit 255, traffic class 0xc0, the two VIPs, the checksum over the
// IPv6 pseudo-header; the unicast ones from unicast_src_ip to the peer.
func TestGoldenVectorsIPv6(t *testing.T) {
	vip1, vip2 := netip.MustParseAddr("2001:db8:94::200"), netip.MustParseAddr("2001:db8:94::201")
	for _, tc := range []struct {
		file      string
		src, dst  netip.Addr
		ethDst    net.HardwareAddr
		prio      uint8
		interval  uint16
		hopLimit  uint8
		nAdverts  int
		nAdverts0 int
	}{
		{"keepalived-2.2.7-v6.pcap", netip.MustParseAddr("fe80::ff:fe00:1"), Group6,
			net.HardwareAddr{0x33, 0x33, 0, 0, 0, 0x12}, 150, 100, 255, 2, 1},
		// keepalived 2.2.7 leaves the hop limit of IPv6 unicast adverts
		// to the kernel (64) unless unicast_ttl is set; lvsha requires
		// 255 (README).
		{"keepalived-2.2.7-v6uni.pcap", netip.MustParseAddr("2001:db8:94::1"), netip.MustParseAddr("2001:db8:94::2"),
			nil, 200, 50, 64, 6, 1},
	} {
		var n, n0 int
		for i, f := range pcapFrames(t, filepath.Join(interopDir, tc.file)) {
			fr := parseIPv6Frame(t, f)
			if fr.nextHeader != Protocol {
				continue
			}
			a, err := Unmarshal(fr.payload, fr.src, fr.dst)
			if err != nil {
				t.Fatalf("%s frame %d: %v", tc.file, i, err)
			}
			if fr.src != tc.src || fr.dst != tc.dst || fr.hopLimit != tc.hopLimit || fr.tclass != 0xc0 ||
				tc.ethDst != nil && !bytes.Equal(fr.ethDst, tc.ethDst) {
				t.Errorf("%s frame %d: %s -> %s (%s) hop limit %d tclass %#x", tc.file, i, fr.src, fr.dst, fr.ethDst, fr.hopLimit, fr.tclass)
			}
			if a.Version != 3 || a.VRID != 52 || a.MaxAdvertInterval != tc.interval || !a.PseudoHeader ||
				len(a.Addrs) != 2 || a.Addrs[0] != vip1 || a.Addrs[1] != vip2 {
				t.Errorf("%s frame %d: %+v", tc.file, i, a)
			}
			switch a.Priority {
			case tc.prio:
				n++
			case 0:
				n0++
			default:
				t.Errorf("%s frame %d: priority %d", tc.file, i, a.Priority)
			}
			// Re-encode from the fields alone.
			fresh := *a
			fresh.Checksum = 0
			b, err := fresh.Marshal(ChecksumPseudoHeader, fr.src, fr.dst)
			if err != nil || !bytes.Equal(b, fr.payload) {
				t.Errorf("%s frame %d: re-encoded %x, %v; want %x", tc.file, i, b, err, fr.payload)
			}
			// The checksum covers the pseudo-header: another source
			// breaks it.
			if _, err := Unmarshal(fr.payload, netip.MustParseAddr("fe80::1"), fr.dst); !errors.Is(err, ErrChecksum) {
				t.Errorf("%s frame %d: with another source: %v", tc.file, i, err)
			}
		}
		if n != tc.nAdverts || n0 != tc.nAdverts0 {
			t.Errorf("%s: %d adverts at priority %d and %d at 0, want %d and %d", tc.file, n, tc.prio, n0, tc.nAdverts, tc.nAdverts0)
		}
	}
}

func TestCodecIPv6(t *testing.T) {
	src, dst := netip.MustParseAddr("fe80::1"), Group6
	vips := []netip.Addr{netip.MustParseAddr("2001:db8::100"), netip.MustParseAddr("2001:db8::101")}
	a := &Advert{Version: 3, Type: 1, VRID: 7, Priority: 100, MaxAdvertInterval: 100, Addrs: vips}
	b, err := a.Marshal(ChecksumMessage, src, dst)
	if err != nil {
		t.Fatal(err)
	}
	if len(b) != 8+2*16 || a.Len() != len(b) {
		t.Fatalf("length %d (Len %d)", len(b), a.Len())
	}
	got, err := Unmarshal(b, src, dst)
	if err != nil {
		t.Fatal(err)
	}
	if !got.PseudoHeader || len(got.Addrs) != 2 || got.Addrs[0] != vips[0] || got.Addrs[1] != vips[1] {
		t.Errorf("decoded %+v", got)
	}
	// Either mode sends the same bytes: IPv6 has one checksum form.
	if b2, _ := a.Marshal(ChecksumPseudoHeader, src, dst); !bytes.Equal(b, b2) {
		t.Errorf("modes differ: %x / %x", b, b2)
	}
	// The message-only form (IPv4's RFC form) is not an IPv6 checksum.
	bad := bytes.Clone(b)
	binary.BigEndian.PutUint16(bad[6:], 0)
	binary.BigEndian.PutUint16(bad[6:], checksum(bad, 0))
	if _, err := Unmarshal(bad, src, dst); !errors.Is(err, ErrChecksum) {
		t.Errorf("message-only checksum over IPv6: %v", err)
	}
	for name, c := range map[string][2]netip.Addr{
		"other source":      {netip.MustParseAddr("fe80::2"), dst},
		"other destination": {src, netip.MustParseAddr("fe80::2")},
	} {
		if _, err := Unmarshal(b, c[0], c[1]); !errors.Is(err, ErrChecksum) {
			t.Errorf("%s: %v", name, err)
		}
	}
	b[2]++
	if _, err := Unmarshal(b, src, dst); !errors.Is(err, ErrChecksum) {
		t.Errorf("corrupted: %v", err)
	}

	// Errors: v2 cannot carry IPv6, families do not mix, an IPv6
	// checksum needs IPv6 addresses, an IPv4 advert's length is wrong
	// in an IPv6 packet.
	mixed := &Advert{Version: 3, Type: 1, VRID: 7, Addrs: []netip.Addr{vips[0], netip.MustParseAddr("10.0.0.1")}}
	if _, err := mixed.Marshal(ChecksumMessage, src, dst); !errors.Is(err, ErrAddrFamily) {
		t.Errorf("mixed families: %v", err)
	}
	v2 := &Advert{Version: 2, Type: 1, VRID: 7, AdvertInterval: 1, Addrs: vips}
	if _, err := v2.Marshal(ChecksumMessage, src, dst); !errors.Is(err, ErrAddrFamily) {
		t.Errorf("v2 with IPv6: %v", err)
	}
	if _, err := a.Marshal(ChecksumMessage, netip.MustParseAddr("10.0.0.1"), Group); !errors.Is(err, ErrAddrFamily) {
		t.Errorf("IPv6 advert in an IPv4 packet: %v", err)
	}
	v4 := &Advert{Version: 3, Type: 1, VRID: 7, MaxAdvertInterval: 100, Addrs: []netip.Addr{netip.MustParseAddr("10.0.0.100")}}
	b4, err := v4.Marshal(ChecksumMessage, netip.MustParseAddr("10.0.0.1"), Group)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := Unmarshal(b4, src, dst); !errors.Is(err, ErrLength) {
		t.Errorf("IPv4 advert in an IPv6 packet: %v", err)
	}
	v2b, err := (&Advert{Version: 2, Type: 1, VRID: 7, AdvertInterval: 1, Addrs: v4.Addrs}).Marshal(ChecksumMessage, netip.Addr{}, netip.Addr{})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := Unmarshal(v2b, src, dst); !errors.Is(err, ErrVersion) {
		t.Errorf("v2 in an IPv6 packet: %v", err)
	}
	if _, err := Unmarshal(b4, src, Group); !errors.Is(err, ErrAddrFamily) {
		t.Errorf("IPv6 source, IPv4 destination: %v", err)
	}
}

// TestUnsolicitedNA checks the advertisement lvsha sends for a VIP: the
// flags and option of RFC 4861 7.2.6, Router only when forwarding.
func TestUnsolicitedNA(t *testing.T) {
	vip := netip.MustParseAddr("2001:db8::100")
	hw := net.HardwareAddr{2, 0, 0, 0, 0, 1}
	for _, router := range []bool{false, true} {
		b, err := ndp.MarshalMessage(unsolicitedNA(vip, hw, router))
		if err != nil {
			t.Fatal(err)
		}
		// type 136, code 0, checksum, flags R|S|O, reserved, target, option 2 len 1 MAC
		want := append([]byte{136, 0, 0, 0, 0x20, 0, 0, 0}, vip.AsSlice()...)
		if router {
			want[4] |= 0x80
		}
		want = append(want, 2, 1, 2, 0, 0, 0, 0, 1)
		if !bytes.Equal(b, want) {
			t.Errorf("router=%v:\n got %x\nwant %x", router, b, want)
		}
	}
}
