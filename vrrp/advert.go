package vrrp

import (
	"encoding/binary"
	"errors"
	"fmt"
	"net/netip"
)

// Protocol is the IP protocol number of VRRP.
const Protocol = 112

// Group is the IPv4 multicast group VRRP adverts are sent to.
var Group = netip.AddrFrom4([4]byte{224, 0, 0, 18})

// Group6 is the IPv6 multicast group VRRP adverts are sent to (RFC 9568
// 5.1.2.2); its MAC is 33:33:00:00:00:12.
var Group6 = netip.MustParseAddr("ff02::12")

// GroupFor is the multicast group of the address family of ip.
func GroupFor(ip netip.Addr) netip.Addr {
	if ip.Is6() {
		return Group6
	}
	return Group
}

// TypeAdvertisement is the only VRRP message type.
const TypeAdvertisement = 1

// VRRPv2 authentication types (RFC 2338/3768). Only none and simple text
// password are supported (AH was removed from the protocol by RFC 3768).
const (
	AuthNone     = 0
	AuthPassword = 1
)

// Sentinel errors returned by Unmarshal and Marshal; test with errors.Is.
var (
	ErrTooShort   = errors.New("vrrp: message too short")
	ErrVersion    = errors.New("vrrp: unsupported version")
	ErrType       = errors.New("vrrp: unknown message type")
	ErrAddrCount  = errors.New("vrrp: bad address count")
	ErrLength     = errors.New("vrrp: length does not match address count")
	ErrChecksum   = errors.New("vrrp: bad checksum")
	ErrAddrFamily = errors.New("vrrp: address of the wrong family")
	ErrInterval   = errors.New("vrrp: advert interval out of range")
)

// ChecksumMode selects how the VRRPv3 checksum of an IPv4 advert is computed
// when sending. VRRPv2 always uses the message-only form, and an IPv6 advert
// always covers the IPv6 pseudo-header (RFC 9568 5.2.8), whatever the mode.
type ChecksumMode int

const (
	// ChecksumPseudoHeader also covers an IPv4 pseudo-header (source,
	// destination, zero, protocol 112, VRRP length). It is keepalived's
	// default and what keepalived 2.2.7 requires of its peers unless it is
	// configured otherwise, so it is lvsha's default.
	ChecksumPseudoHeader ChecksumMode = iota
	// ChecksumMessage covers the VRRP message only, as RFC 9568 clarifies.
	ChecksumMessage
)

func (m ChecksumMode) String() string {
	switch m {
	case ChecksumPseudoHeader:
		return "keepalived"
	case ChecksumMessage:
		return "rfc"
	}
	return fmt.Sprintf("ChecksumMode(%d)", int(m))
}

// Advert is one VRRP advertisement. Its addresses are all IPv4 or all IPv6
// (VRRPv3 only): one virtual router is one address family.
type Advert struct {
	Version  uint8 // 2 or 3
	Type     uint8 // TypeAdvertisement
	VRID     uint8
	Priority uint8
	// MaxAdvertInterval is the v3 advert interval in centiseconds (12 bits).
	MaxAdvertInterval uint16
	// AdvertInterval is the v2 advert interval in whole seconds.
	AdvertInterval uint8
	// AuthType and AuthData are v2 only.
	AuthType uint8
	AuthData [8]byte
	Addrs    []netip.Addr
	// Checksum is the checksum as found on the wire (Unmarshal) or as
	// computed (Marshal).
	Checksum uint16
	// PseudoHeader reports, after Unmarshal of a v3 advert, that the
	// checksum covered the pseudo-header: keepalived's form for IPv4, the
	// only form for IPv6.
	PseudoHeader bool
}

const headerLen = 8
const v2AuthLen = 8

// Len is the length of the encoded advert in bytes.
func (a *Advert) Len() int {
	n := headerLen + addrLen(a.is6())*len(a.Addrs)
	if a.Version == 2 {
		n += v2AuthLen
	}
	return n
}

// is6 says whether the advert is for IPv6: its first address is.
func (a *Advert) is6() bool { return len(a.Addrs) > 0 && a.Addrs[0].Is6() }

// addrLen is the size of one address of the family on the wire.
func addrLen(is6 bool) int {
	if is6 {
		return 16
	}
	return 4
}

// Marshal encodes the advert and sets a.Checksum. src and dst are the
// source and destination of the packet that will carry it: the v3 checksum
// covers them in ChecksumPseudoHeader mode, and always for IPv6.
func (a *Advert) Marshal(mode ChecksumMode, src, dst netip.Addr) ([]byte, error) {
	if a.Version != 2 && a.Version != 3 {
		return nil, fmt.Errorf("%w: %d", ErrVersion, a.Version)
	}
	if a.Type != TypeAdvertisement {
		return nil, fmt.Errorf("%w: %d", ErrType, a.Type)
	}
	if len(a.Addrs) == 0 || len(a.Addrs) > 255 {
		return nil, fmt.Errorf("%w: %d", ErrAddrCount, len(a.Addrs))
	}
	is6 := a.is6()
	if is6 && a.Version != 3 {
		return nil, fmt.Errorf("%w: VRRPv%d carries IPv4 only", ErrAddrFamily, a.Version)
	}
	if a.Version == 3 && a.MaxAdvertInterval > 0x0fff {
		return nil, fmt.Errorf("%w: %d centiseconds (max 4095)", ErrInterval, a.MaxAdvertInterval)
	}
	b := make([]byte, a.Len())
	b[0] = a.Version<<4 | a.Type
	b[1] = a.VRID
	b[2] = a.Priority
	b[3] = uint8(len(a.Addrs))
	if a.Version == 3 {
		binary.BigEndian.PutUint16(b[4:], a.MaxAdvertInterval&0x0fff)
	} else {
		b[4] = a.AuthType
		b[5] = a.AdvertInterval
	}
	off := headerLen
	for _, ip := range a.Addrs {
		switch {
		case is6 && ip.Is6(): // a mapped one too: the bytes as decoded
			v := ip.As16()
			copy(b[off:], v[:])
		case !is6 && ip.Is4():
			v := ip.As4()
			copy(b[off:], v[:])
		default:
			return nil, fmt.Errorf("%w: %s in an advert for %s", ErrAddrFamily, ip, a.Addrs[0])
		}
		off += addrLen(is6)
	}
	if a.Version == 2 {
		copy(b[off:], a.AuthData[:])
	}
	var sum uint16
	if is6 {
		if !src.Is6() || !dst.Is6() {
			return nil, fmt.Errorf("%w: IPv6 pseudo-header needs IPv6 source and destination, have %s -> %s", ErrAddrFamily, src, dst)
		}
		sum = checksum(b, pseudoSum6(src, dst, len(b)))
	} else if a.Version == 3 && mode == ChecksumPseudoHeader {
		if !src.Is4() || !dst.Is4() {
			return nil, fmt.Errorf("%w: pseudo-header needs IPv4 source and destination, have %s -> %s", ErrAddrFamily, src, dst)
		}
		sum = checksum(b, pseudoSum(src, dst, len(b)))
	} else {
		sum = checksum(b, 0)
	}
	binary.BigEndian.PutUint16(b[6:], sum)
	a.Checksum = sum
	return b, nil
}

// Unmarshal decodes and verifies one advert, the IP payload of a packet from
// src to dst. The family of src says that of the addresses: an IPv6 packet
// carries a VRRPv3 advert with IPv6 addresses, whose checksum must cover the
// IPv6 pseudo-header. A v3 IPv4 checksum is accepted in either form (message
// only, or with the IPv4 pseudo-header); Advert.PseudoHeader says which one
// matched.
func Unmarshal(b []byte, src, dst netip.Addr) (*Advert, error) {
	if len(b) < headerLen {
		return nil, fmt.Errorf("%w: %d bytes", ErrTooShort, len(b))
	}
	a := &Advert{
		Version:  b[0] >> 4,
		Type:     b[0] & 0x0f,
		VRID:     b[1],
		Priority: b[2],
		Checksum: binary.BigEndian.Uint16(b[6:]),
	}
	if a.Version != 2 && a.Version != 3 {
		return nil, fmt.Errorf("%w: %d", ErrVersion, a.Version)
	}
	if a.Type != TypeAdvertisement {
		return nil, fmt.Errorf("%w: %d", ErrType, a.Type)
	}
	is6 := src.Is6() && !src.Is4In6()
	if is6 && a.Version != 3 {
		return nil, fmt.Errorf("%w: %d over IPv6", ErrVersion, a.Version)
	}
	if is6 && !dst.Is6() {
		return nil, fmt.Errorf("%w: IPv6 source %s, destination %s", ErrAddrFamily, src, dst)
	}
	count := int(b[3])
	if count == 0 {
		return nil, fmt.Errorf("%w: 0", ErrAddrCount)
	}
	n := addrLen(is6)
	want := headerLen + n*count
	if a.Version == 2 {
		want += v2AuthLen
	}
	if len(b) != want {
		return nil, fmt.Errorf("%w: %d bytes for %d addresses (want %d)", ErrLength, len(b), count, want)
	}
	if a.Version == 3 {
		a.MaxAdvertInterval = binary.BigEndian.Uint16(b[4:]) & 0x0fff
	} else {
		a.AuthType = b[4]
		a.AdvertInterval = b[5]
	}
	a.Addrs = make([]netip.Addr, count)
	for i := range count {
		if is6 {
			a.Addrs[i] = netip.AddrFrom16([16]byte(b[headerLen+n*i:]))
		} else {
			a.Addrs[i] = netip.AddrFrom4([4]byte(b[headerLen+n*i:]))
		}
	}
	if a.Version == 2 {
		copy(a.AuthData[:], b[headerLen+n*count:])
	}
	if is6 {
		// RFC 9568 5.2.8: over the IPv6 pseudo-header, the only form.
		if checksum(b, pseudoSum6(src, dst, len(b))) != 0 {
			return nil, fmt.Errorf("%w: 0x%04x", ErrChecksum, a.Checksum)
		}
		a.PseudoHeader = true
		return a, nil
	}
	// A correct checksum makes the one's complement sum of the covered bytes
	// (checksum field included) 0xffff, so checksum() of them is zero.
	if checksum(b, 0) == 0 {
		return a, nil
	}
	if a.Version == 3 && src.Is4() && dst.Is4() && checksum(b, pseudoSum(src, dst, len(b))) == 0 {
		a.PseudoHeader = true
		return a, nil
	}
	return nil, fmt.Errorf("%w: 0x%04x", ErrChecksum, a.Checksum)
}

// pseudoSum is the unfolded one's complement sum of the IPv4 pseudo-header.
func pseudoSum(src, dst netip.Addr, length int) uint32 {
	s, d := src.As4(), dst.As4()
	var sum uint32
	sum += uint32(s[0])<<8 | uint32(s[1])
	sum += uint32(s[2])<<8 | uint32(s[3])
	sum += uint32(d[0])<<8 | uint32(d[1])
	sum += uint32(d[2])<<8 | uint32(d[3])
	sum += Protocol
	sum += uint32(length)
	return sum
}

// pseudoSum6 is the unfolded one's complement sum of the IPv6 pseudo-header
// (RFC 8200 8.1): source, destination, upper-layer length (32 bits), three
// zero bytes and next header 112.
func pseudoSum6(src, dst netip.Addr, length int) uint32 {
	s, d := src.As16(), dst.As16()
	var sum uint32
	for i := 0; i < 16; i += 2 {
		sum += uint32(s[i])<<8 | uint32(s[i+1])
		sum += uint32(d[i])<<8 | uint32(d[i+1])
	}
	sum += uint32(length) >> 16
	sum += uint32(length) & 0xffff
	sum += Protocol
	return sum
}

// checksum is the Internet checksum (RFC 1071) of b, starting from an
// initial partial sum.
func checksum(b []byte, initial uint32) uint16 {
	sum := initial
	for len(b) >= 2 {
		sum += uint32(b[0])<<8 | uint32(b[1])
		b = b[2:]
	}
	if len(b) == 1 {
		sum += uint32(b[0]) << 8
	}
	for sum>>16 != 0 {
		sum = sum&0xffff + sum>>16
	}
	return ^uint16(sum)
}
