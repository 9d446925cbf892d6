package vrrp

import (
	"errors"
	"net/netip"
	"slices"
	"time"
)

// Packet is one VRRP message as read from the socket, with what the receive
// checks need from the IP header that carried it.
type Packet struct {
	Src, Dst netip.Addr
	TTL      int    // the IPv4 TTL, or the IPv6 hop limit
	Payload  []byte // the IP payload: the VRRP message
}

// Receive applies the receive checks of RFC 9568 7.1 (RFC 3768 7.1 for
// VRRPv2) to a packet read from the socket and, if it passes them, acts on
// the advert it carries. drop is "" when the advert was acted on, or else why
// it was refused, the reason counted in Status.Dropped: own, ttl, length,
// version, type, checksum, malformed, vrid, peer, auth, interval or
// vip_mismatch.
func (m *Machine) Receive(now time.Time, p Packet) (acts []Action, drop string) {
	a, drop := m.check(p)
	if drop != "" {
		return nil, drop
	}
	return m.advert(now, p.Src, a), ""
}

// check decodes a packet and applies the receive checks, in the order whose
// first failing rule names the drop.
func (m *Machine) check(p Packet) (*Advert, string) {
	// An advert from our own source address is ours, looped back.
	if p.Src == m.cfg.PrimaryIP {
		return nil, "own"
	}
	// Only a router on the link can send with TTL (hop limit) 255.
	if p.TTL != 255 {
		return nil, "ttl"
	}
	a, err := Unmarshal(p.Payload, p.Src, p.Dst)
	switch {
	case errors.Is(err, ErrTooShort), errors.Is(err, ErrLength), errors.Is(err, ErrAddrCount):
		return nil, "length"
	case errors.Is(err, ErrVersion):
		return nil, "version"
	case errors.Is(err, ErrType):
		return nil, "type"
	case errors.Is(err, ErrChecksum):
		return nil, "checksum"
	case err != nil:
		return nil, "malformed"
	}
	if a.VRID != m.cfg.VRID {
		return nil, "vrid"
	}
	if int(a.Version) != m.cfg.Version {
		return nil, "version"
	}
	if len(m.cfg.UnicastPeers) > 0 && !slices.Contains(m.cfg.UnicastPeers, p.Src) {
		return nil, "peer"
	}
	if a.Version == 2 {
		var want [8]byte
		copy(want[:], m.cfg.AuthPass)
		if m.cfg.AuthPass == "" && a.AuthType != AuthNone ||
			m.cfg.AuthPass != "" && (a.AuthType != AuthPassword || a.AuthData != want) {
			return nil, "auth"
		}
		// VRRPv2 routers do not learn the master's interval: they must
		// all be configured with the same one.
		if time.Duration(a.AdvertInterval)*time.Second != m.cfg.AdvertInterval {
			return nil, "interval"
		}
	}
	// An advert for our VRID with other addresses is another virtual
	// router's: a neighbour cluster that reused the VRID. Acting on it
	// would hand our VIPs to a router that does not serve them, so it is
	// refused whatever its priority (0 and 255 included) and our state,
	// as keepalived does (RFC 9568 7.1 lets a router check the list).
	if !sameAddrs(a.Addrs, m.cfg.VIPs) {
		return nil, "vip_mismatch"
	}
	return a, ""
}

// sameAddrs says whether an advert's address list holds the same
// addresses as ours, in any order: keepalived's rule (the same count, and
// each of ours present).
func sameAddrs(advert, ours []netip.Addr) bool {
	if len(advert) != len(ours) {
		return false
	}
	for _, a := range ours {
		if !slices.Contains(advert, a) {
			return false
		}
	}
	return true
}

// Advert returns the advert this router sends with priority prio.
func (m *Machine) Advert(prio uint8) *Advert {
	c := &m.cfg
	a := &Advert{Version: uint8(c.Version), Type: TypeAdvertisement, VRID: c.VRID, Priority: prio, Addrs: slices.Clone(c.VIPs)}
	if c.Version == 3 {
		a.MaxAdvertInterval = uint16(c.AdvertInterval / (10 * time.Millisecond))
	} else {
		a.AdvertInterval = uint8(c.AdvertInterval / time.Second)
		if c.AuthPass != "" {
			a.AuthType = AuthPassword
			copy(a.AuthData[:], c.AuthPass)
		}
	}
	return a
}
