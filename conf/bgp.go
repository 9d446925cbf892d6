package conf

import (
	"fmt"
	"net/netip"
	"time"
)

// The BGP limits (RFC 4271 4.2, RFC 6793): a hold time is 0 (no keepalives)
// or at least 3 s, in whole seconds that fit 16 bits; an ASN is 4 bytes
// and 0 is reserved (RFC 7607).
const (
	minHoldTime = 3 * time.Second
	maxHoldTime = 65535 * time.Second
	maxASN      = 1<<32 - 1
)

// bgp validates [bgp] and fills its parsed forms. That the interface
// exists and the routers answer are runtime matters (status says).
func (v *validator) bgp(p string, b *BGP) {
	checkASN := func(path string, asn int64) {
		if asn < 1 || asn > maxASN {
			v.errf(path, "%d is outside 1-%d", asn, int64(maxASN))
		}
	}
	checkASN(p+".asn", b.ASN)
	if a, err := netip.ParseAddr(b.RouterID); err != nil || !a.Is4() || a.IsUnspecified() {
		v.errf(p+".router_id", "%q is not a non-zero IPv4 address (a BGP identifier is one, even on an IPv6-only director)", b.RouterID)
	} else {
		b.RouterIDAddr = a
	}
	if b.ListenPort < 0 || b.ListenPort > 65535 {
		v.errf(p+".listen_port", "%d is outside 0-65535 (0 = do not listen)", b.ListenPort)
	}
	if b.Interface == "" {
		v.errf(p+".interface", "empty (where the VIPs are held: lo or a dummy interface)")
	}
	if b.DrainTime < 0 {
		v.errf(p+".drain_time", "%s is negative", b.DrainTime)
	}

	// A VIP announced must be one lvsha serves, and not one a VRRP
	// instance moves: the two would fight over the address.
	served := map[netip.Addr]bool{}
	for _, vs := range v.cfg.Services {
		if a := vs.IPVS.Key.Addr; a.IsValid() {
			served[a.Addr()] = true
		}
	}
	vrrpVIPs := map[netip.Addr]string{}
	for _, in := range v.cfg.VRRP {
		for _, vp := range in.Runtime.VIPs {
			vrrpVIPs[vp.Addr()] = in.Name
		}
	}
	if len(b.Announce) == 0 {
		v.errf(p+".announce", "empty (the VIPs to announce)")
	}
	seen := map[netip.Addr]bool{}
	b.VIPs = nil
	for i, s := range b.Announce {
		path := fmt.Sprintf("%s.announce[%d]", p, i)
		a, err := parseAddr(s)
		switch {
		case err != nil:
			v.errf(path, "%v", err)
			continue
		case seen[a]:
			v.errf(path, "%s is listed twice", a)
			continue
		case !served[a]:
			v.errf(path, "%s is not the address of any virtual_server", a)
		}
		if name, ok := vrrpVIPs[a]; ok {
			v.errf(path, "%s is a VIP of vrrp_instance %q: a VIP is either announced over BGP or moved by VRRP", a, name)
		}
		seen[a] = true
		b.VIPs = append(b.VIPs, netip.PrefixFrom(a, a.BitLen()))
	}

	if len(b.Neighbors) == 0 {
		v.errf(p+".neighbor", "no [[bgp.neighbor]] (the routers to announce to)")
	}
	peers := map[netip.Addr]string{}
	for i := range b.Neighbors {
		n := &b.Neighbors[i]
		np := fmt.Sprintf("%s.neighbor[%d]", p, i)
		if a, err := netip.ParseAddr(n.Address); err != nil || a.Zone() != "" || a.IsUnspecified() || a.IsMulticast() {
			v.errf(np+".address", "%q is not a unicast IP address", n.Address)
		} else if prev, ok := peers[a]; ok {
			v.errf(np+".address", "%s is already the neighbour of %s", a, prev)
		} else {
			n.Addr = a
			peers[a] = np
		}
		checkASN(np+".asn", n.ASN)
		if h := n.HoldTime.D(); h != 0 && (h < minHoldTime || h > maxHoldTime || h%time.Second != 0) {
			v.errf(np+".hold_time", "%s is not 0 or whole seconds in 3s-65535s (RFC 4271)", h)
		}
		if r := n.ConnectRetry.D(); r < time.Second || r%time.Second != 0 {
			v.errf(np+".connect_retry", "%s is not whole seconds, at least 1s", r)
		}
		if n.Port < 1 || n.Port > 65535 {
			v.errf(np+".port", "%d is outside 1-65535", n.Port)
		}
		if len(n.Password) > 80 {
			// TCP_MD5SIG_MAXKEYLEN in include/uapi/linux/tcp.h
			v.errf(np+".password", "is longer than 80 bytes, the kernel's TCP MD5 key limit")
		}
	}
}
