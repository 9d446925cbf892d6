package conf

import (
	"net/netip"

	"github.com/lvsha/lvsha/lvs"
)

// Limits of the sync daemon's keys (include/uapi/linux/ip_vs.h,
// net/netfilter/ipvs/ip_vs_sync.c).
const (
	// maxSyncIfName is IP_VS_IFNAME_MAXLEN less the NUL.
	maxSyncIfName = 15
	// The kernel clamps a backup's maxlen to at least 1024 and every
	// maxlen to at most 65535 less the IPv4 and UDP headers; lvsha refuses
	// what the kernel would silently change.
	minSyncMaxLen = 1024
	maxSyncMaxLen = 65535 - 20 - 8
)

// sync validates [sync] and fills its Runtime. That the interface exists
// is a runtime matter (the daemon says so in status): it may come later.
func (v *validator) sync(p string, sy *Sync) {
	rt := &sy.Runtime
	*rt = lvs.SyncDaemon{Interface: sy.Interface}
	var in *VRRPInstance
	for i := range v.cfg.VRRP {
		if v.cfg.VRRP[i].Name == sy.Instance {
			in = &v.cfg.VRRP[i]
		}
	}
	switch {
	case sy.Instance == "" && v.cfg.BGP == nil:
		v.errf(p+".instance", "required but missing (the vrrp_instance whose MASTER state runs the master daemon; only directors with [bgp] run it without one)")
	case sy.Instance == "":
		// Active-active: the master daemon runs all the time, and there
		// is no instance to take the interface from.
		if sy.Interface == "" {
			v.errf(p+".interface", "required when [sync] follows no vrrp_instance")
		}
	case in == nil:
		v.errf(p+".instance", "no vrrp_instance is named %q", sy.Instance)
	default:
		if rt.Interface == "" {
			rt.Interface = in.Interface
		}
	}
	if sy.Interface != "" && len(sy.Interface) > maxSyncIfName {
		v.errf(p+".interface", "%q is longer than %d bytes", sy.Interface, maxSyncIfName)
	}
	switch {
	case sy.SyncID != nil && (*sy.SyncID < 0 || *sy.SyncID > 255):
		v.errf(p+".sync_id", "%d is outside 0-255", *sy.SyncID)
	case sy.SyncID != nil:
		rt.SyncID = uint8(*sy.SyncID)
	case in != nil:
		rt.SyncID = uint8(in.VRID)
	}
	if sy.MaxLen != 0 && (sy.MaxLen < minSyncMaxLen || sy.MaxLen > maxSyncMaxLen) {
		v.errf(p+".maxlen", "%d is outside %d-%d (or 0 for the kernel's: the MTU less headers)", sy.MaxLen, minSyncMaxLen, maxSyncMaxLen)
	} else {
		rt.MaxLen = uint16(sy.MaxLen)
	}
	if g, err := netip.ParseAddr(sy.Group); err != nil || !g.IsMulticast() || g.Zone() != "" {
		v.errf(p+".group", "%q is not an IPv4 or IPv6 multicast address", sy.Group)
	} else {
		rt.Group = g
	}
	if sy.Port < 1 || sy.Port > 65535 {
		v.errf(p+".port", "%d is outside 1-65535", sy.Port)
	} else {
		rt.Port = uint16(sy.Port)
	}
	if sy.TTL < 1 || sy.TTL > 255 {
		v.errf(p+".ttl", "%d is outside 1-255", sy.TTL)
	} else {
		rt.TTL = uint8(sy.TTL)
	}
}
