package vrrp

import (
	"bufio"
	"bytes"
	"encoding/binary"
	"encoding/hex"
	"errors"
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// interopDir holds packets captured from keepalived 2.2.7 (a copy of the
// team's shared/interop, so that a clone tests on its own).
var interopDir = filepath.Join("testdata", "interop")

// vector is one "vrrp" line of keepalived-2.2.7-vectors.txt.
type vector struct {
	capture  string
	src, dst netip.Addr
	ttl      string
	tos      string
	payload  []byte
}

func loadVectors(t testing.TB) []vector {
	t.Helper()
	f, err := os.Open(filepath.Join(interopDir, "keepalived-2.2.7-vectors.txt"))
	if err != nil {
		t.Fatalf("golden vectors: %v", err)
	}
	defer f.Close()
	var out []vector
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		line := sc.Text()
		if strings.HasPrefix(line, "#") || strings.TrimSpace(line) == "" {
			continue
		}
		fields := strings.Fields(line)
		if len(fields) < 2 || fields[1] != "vrrp" {
			continue
		}
		v := vector{capture: fields[0]}
		for _, kv := range fields[2:] {
			k, val, _ := strings.Cut(kv, "=")
			switch k {
			case "src":
				v.src = netip.MustParseAddr(val)
			case "dst":
				v.dst = netip.MustParseAddr(val)
			case "ttl":
				v.ttl = val
			case "tos":
				v.tos = val
			case "payload":
				v.payload, err = hex.DecodeString(val)
				if err != nil {
					t.Fatalf("bad payload in %q: %v", line, err)
				}
			}
		}
		out = append(out, v)
	}
	if err := sc.Err(); err != nil {
		t.Fatal(err)
	}
	if len(out) == 0 {
		t.Fatal("no vrrp vectors found")
	}
	return out
}

func TestGoldenVectors(t *testing.T) {
	vip1, vip2 := netip.MustParseAddr("10.99.0.100"), netip.MustParseAddr("10.99.0.101")
	for i, v := range loadVectors(t) {
		a, err := Unmarshal(v.payload, v.src, v.dst)
		if err != nil {
			t.Fatalf("vector %d (%s): %v", i, v.capture, err)
		}
		if v.ttl != "255" || v.tos != "0xc0" {
			t.Errorf("vector %d: keepalived sent ttl=%s tos=%s, we assume 255/0xc0", i, v.ttl, v.tos)
		}
		if a.VRID != 51 || len(a.Addrs) != 2 || a.Addrs[0] != vip1 || a.Addrs[1] != vip2 {
			t.Errorf("vector %d (%s): vrid %d addrs %v", i, v.capture, a.VRID, a.Addrs)
		}
		switch v.capture {
		case "v2", "v2auth":
			if a.Version != 2 || a.AdvertInterval != 1 {
				t.Errorf("vector %d: version %d interval %d", i, a.Version, a.AdvertInterval)
			}
		case "v3":
			if a.Version != 3 || a.MaxAdvertInterval != 100 || !a.PseudoHeader {
				t.Errorf("vector %d: version %d interval %d pseudo %v", i, a.Version, a.MaxAdvertInterval, a.PseudoHeader)
			}
		case "v3uni":
			if a.Version != 3 || a.MaxAdvertInterval != 50 || !a.PseudoHeader {
				t.Errorf("vector %d: version %d interval %d pseudo %v", i, a.Version, a.MaxAdvertInterval, a.PseudoHeader)
			}
		}
		if v.capture == "v2auth" {
			if a.AuthType != AuthPassword || string(a.AuthData[:]) != "secret12" {
				t.Errorf("vector %d: auth %d %q", i, a.AuthType, a.AuthData)
			}
		}
		// Re-encode from the fields alone (checksum recomputed).
		mode := ChecksumMessage
		if a.PseudoHeader {
			mode = ChecksumPseudoHeader
		}
		fresh := *a
		fresh.Checksum = 0
		b, err := fresh.Marshal(mode, v.src, v.dst)
		if err != nil {
			t.Fatalf("vector %d: marshal: %v", i, err)
		}
		if !bytes.Equal(b, v.payload) {
			t.Errorf("vector %d (%s): re-encoded\n got %x\nwant %x", i, v.capture, b, v.payload)
		}
	}
}

// TestChecksumForms checks that both v3 checksum forms are accepted and that
// a corrupted one is refused.
func TestChecksumForms(t *testing.T) {
	src, dst := netip.MustParseAddr("10.0.0.1"), Group
	a := &Advert{Version: 3, Type: 1, VRID: 7, Priority: 100, MaxAdvertInterval: 100,
		Addrs: []netip.Addr{netip.MustParseAddr("10.0.0.100")}}
	for _, mode := range []ChecksumMode{ChecksumMessage, ChecksumPseudoHeader} {
		b, err := a.Marshal(mode, src, dst)
		if err != nil {
			t.Fatal(err)
		}
		got, err := Unmarshal(b, src, dst)
		if err != nil {
			t.Fatalf("%v: %v", mode, err)
		}
		if got.PseudoHeader != (mode == ChecksumPseudoHeader) {
			t.Errorf("%v: PseudoHeader = %v", mode, got.PseudoHeader)
		}
		// The pseudo-header form depends on the addresses: a different
		// source must break it.
		if mode == ChecksumPseudoHeader {
			if _, err := Unmarshal(b, netip.MustParseAddr("10.0.0.2"), dst); !errors.Is(err, ErrChecksum) {
				t.Errorf("pseudo-header checksum with wrong source: err = %v", err)
			}
		}
		b[2]++
		if _, err := Unmarshal(b, src, dst); !errors.Is(err, ErrChecksum) {
			t.Errorf("%v corrupted: err = %v, want ErrChecksum", mode, err)
		}
	}
}

func TestUnmarshalErrors(t *testing.T) {
	src, dst := netip.MustParseAddr("10.0.0.1"), Group
	good := &Advert{Version: 3, Type: 1, VRID: 7, Priority: 100, MaxAdvertInterval: 100,
		Addrs: []netip.Addr{netip.MustParseAddr("10.0.0.100")}}
	base, err := good.Marshal(ChecksumMessage, src, dst)
	if err != nil {
		t.Fatal(err)
	}
	mod := func(f func(b []byte) []byte) []byte {
		b := f(bytes.Clone(base))
		return b
	}
	tests := []struct {
		name string
		b    []byte
		want error
	}{
		{"empty", nil, ErrTooShort},
		{"7 bytes", base[:7], ErrTooShort},
		{"version 4", mod(func(b []byte) []byte { b[0] = 0x41; return b }), ErrVersion},
		{"version 1", mod(func(b []byte) []byte { b[0] = 0x11; return b }), ErrVersion},
		{"type 2", mod(func(b []byte) []byte { b[0] = 0x32; return b }), ErrType},
		{"count 0", mod(func(b []byte) []byte { b[3] = 0; return b }), ErrAddrCount},
		{"count 2", mod(func(b []byte) []byte { b[3] = 2; return b }), ErrLength},
		{"truncated", base[:len(base)-1], ErrLength},
		{"trailing", append(bytes.Clone(base), 0), ErrLength},
		{"checksum", mod(func(b []byte) []byte { b[7] ^= 1; return b }), ErrChecksum},
	}
	for _, tt := range tests {
		if _, err := Unmarshal(tt.b, src, dst); !errors.Is(err, tt.want) {
			t.Errorf("%s: err = %v, want %v", tt.name, err, tt.want)
		}
	}
}

func TestMarshalErrors(t *testing.T) {
	src := netip.MustParseAddr("10.0.0.1")
	v4 := []netip.Addr{netip.MustParseAddr("10.0.0.100")}
	tests := []struct {
		name string
		a    Advert
		want error
	}{
		{"version", Advert{Version: 4, Type: 1, Addrs: v4}, ErrVersion},
		{"type", Advert{Version: 3, Type: 0, Addrs: v4}, ErrType},
		{"no addrs", Advert{Version: 3, Type: 1}, ErrAddrCount},
		{"ipv6", Advert{Version: 3, Type: 1, Addrs: []netip.Addr{netip.MustParseAddr("::1")}}, ErrAddrFamily},
		{"interval", Advert{Version: 3, Type: 1, MaxAdvertInterval: 4096, Addrs: v4}, ErrInterval},
	}
	for _, tt := range tests {
		if _, err := tt.a.Marshal(ChecksumPseudoHeader, src, Group); !errors.Is(err, tt.want) {
			t.Errorf("%s: err = %v, want %v", tt.name, err, tt.want)
		}
	}
}

// pcapFrames reads a classic libpcap file (either byte order, Ethernet link
// type) and returns its frames.
func pcapFrames(t testing.TB, path string) [][]byte {
	t.Helper()
	data, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	if len(data) < 24 {
		t.Fatalf("%s: too short for a pcap header", path)
	}
	var bo binary.ByteOrder
	switch binary.LittleEndian.Uint32(data) {
	case 0xa1b2c3d4, 0xa1b23c4d:
		bo = binary.LittleEndian
	case 0xd4c3b2a1, 0x4d3cb2a1:
		bo = binary.BigEndian
	default:
		t.Fatalf("%s: not a pcap file", path)
	}
	if lt := bo.Uint32(data[20:]); lt != 1 {
		t.Fatalf("%s: link type %d, want 1 (Ethernet)", path, lt)
	}
	var frames [][]byte
	for off := 24; off < len(data); {
		if off+16 > len(data) {
			t.Fatalf("%s: truncated record header at %d", path, off)
		}
		n := int(bo.Uint32(data[off+8:]))
		off += 16
		if off+n > len(data) {
			t.Fatalf("%s: truncated record at %d", path, off)
		}
		frames = append(frames, data[off:off+n])
		off += n
	}
	return frames
}

func TestPcapFrames(t *testing.T) {
	files, err := filepath.Glob(filepath.Join(interopDir, "*.pcap"))
	if err != nil || len(files) == 0 {
		t.Fatalf("no pcap files in %s: %v", interopDir, err)
	}
	for _, path := range files {
		var nvrrp, narp int
		for i, f := range pcapFrames(t, path) {
			if len(f) < 14 {
				t.Fatalf("%s frame %d: short", path, i)
			}
			switch binary.BigEndian.Uint16(f[12:]) {
			case 0x0806: // gratuitous ARP: request, sender IP == target IP, broadcast
				arp := f[14:]
				if !bytes.Equal(f[0:6], bytes.Repeat([]byte{0xff}, 6)) || binary.BigEndian.Uint16(arp[6:]) != 1 ||
					!bytes.Equal(arp[14:18], arp[24:28]) || !bytes.Equal(arp[8:14], f[6:12]) {
					t.Errorf("%s frame %d: not a keepalived-style GARP: %x", path, i, f)
				}
				narp++
			case 0x0800:
				ip := f[14:]
				ihl := int(ip[0]&0x0f) * 4
				total := int(binary.BigEndian.Uint16(ip[2:]))
				if ip[9] != Protocol {
					t.Errorf("%s frame %d: IP protocol %d", path, i, ip[9])
					continue
				}
				if ip[8] != 255 || ip[1] != 0xc0 {
					t.Errorf("%s frame %d: ttl %d tos %#x", path, i, ip[8], ip[1])
				}
				src := netip.AddrFrom4([4]byte(ip[12:16]))
				dst := netip.AddrFrom4([4]byte(ip[16:20]))
				payload := ip[ihl:total]
				a, err := Unmarshal(payload, src, dst)
				if err != nil {
					t.Errorf("%s frame %d: %v", path, i, err)
					continue
				}
				mode := ChecksumMessage
				if a.PseudoHeader {
					mode = ChecksumPseudoHeader
				}
				b, err := a.Marshal(mode, src, dst)
				if err != nil || !bytes.Equal(b, payload) {
					t.Errorf("%s frame %d: re-encode %x, %v; want %x", path, i, b, err, payload)
				}
				nvrrp++
			case 0x86dd: // IPv6: a VRRP advert or an unsolicited NA
				v, na := checkIPv6Frame(t, fmt.Sprintf("%s frame %d", path, i), f)
				if v {
					nvrrp++
				}
				if na {
					narp++
				}
			default:
				t.Errorf("%s frame %d: ethertype %#x", path, i, binary.BigEndian.Uint16(f[12:]))
			}
		}
		if nvrrp == 0 {
			t.Errorf("%s: no VRRP frames", path)
		}
		t.Logf("%s: %d VRRP, %d GARP/NA frames", filepath.Base(path), nvrrp, narp)
	}
}

func FuzzUnmarshal(f *testing.F) {
	for _, v := range loadVectors(f) {
		f.Add(v.payload, v.src.AsSlice(), v.dst.AsSlice())
	}
	// IPv6 adverts too: the family of the source picks the decoding.
	for _, file := range []string{"keepalived-2.2.7-v6.pcap", "keepalived-2.2.7-v6uni.pcap"} {
		for _, fr := range pcapFrames(f, filepath.Join(interopDir, file)) {
			if p := parseIPv6Frame(f, fr); p.nextHeader == Protocol {
				f.Add(p.payload, p.src.AsSlice(), p.dst.AsSlice())
			}
		}
	}
	f.Fuzz(func(t *testing.T, b, s, d []byte) {
		src, _ := netip.AddrFromSlice(s)
		dst, _ := netip.AddrFromSlice(d)
		a, err := Unmarshal(b, src, dst)
		if err != nil {
			return
		}
		// Whatever decodes must re-encode to the same bytes.
		mode := ChecksumMessage
		if a.PseudoHeader {
			mode = ChecksumPseudoHeader
		}
		out, err := a.Marshal(mode, src, dst)
		if err != nil {
			t.Fatalf("decoded %x but cannot re-encode: %v", b, err)
		}
		// The checksum may differ (0x0000 and 0xffff are the same one's
		// complement value) and v3's 4 reserved bits are dropped on decode.
		if a.Version == 3 {
			out[4] |= b[4] & 0xf0
		}
		if !bytes.Equal(out[:6], b[:6]) || !bytes.Equal(out[8:], b[8:]) {
			t.Fatalf("round trip changed bytes: %x -> %x", b, out)
		}
	})
}
