package conf

import (
	"fmt"
	"net"
	"net/netip"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"golang.org/x/sys/unix"

	"github.com/lvsha/lvsha/lvs/realserver"
	"github.com/lvsha/lvsha/vrrp"
)

type validator struct {
	cfg   *Config
	diags []Diag
}

func (v *validator) errf(path, format string, args ...any) {
	v.diags = append(v.diags, Diag{Path: path, Msg: fmt.Sprintf(format, args...)})
}

// library reports, on path, what a library would refuse of a runtime value
// that passed every rule here (diags had n entries before they ran): a
// valid config must never fail at start or reload. Its rules should all be
// here with their keys; this catches the one that is not.
func (v *validator) library(path string, n int, validate func() error) {
	for _, d := range v.diags[n:] {
		if !d.Warning {
			return
		}
	}
	if err := validate(); err != nil {
		v.errf(path, "%v", err)
	}
}

func (v *validator) warnf(path, format string, args ...any) {
	v.diags = append(v.diags, Diag{Path: path, Msg: fmt.Sprintf(format, args...), Warning: true})
}

func (v *validator) run() {
	v.global()
	v.tracks() // before the instances, which name them
	// A VRID is unique per interface and address family (RFC 9568: IPv4
	// and IPv6 virtual routers are separate, with their own adverts).
	type ifVRID struct {
		ifname string
		vrid   int
		family string
	}
	seenName := map[string]string{}
	seenVRID := map[ifVRID]string{}
	for i := range v.cfg.VRRP {
		p := fmt.Sprintf("vrrp_instance[%d]", i)
		in := &v.cfg.VRRP[i]
		v.vrrp(p, in)
		if in.Name != "" {
			if prev, ok := seenName[in.Name]; ok {
				v.errf(p+".name", "instance name %q is already used by %s", in.Name, prev)
			} else {
				seenName[in.Name] = p
			}
		}
		var family string
		if len(in.Runtime.VIPs) > 0 {
			family = vrrp.Family(in.Runtime.VIPs[0].Addr())
		}
		k := ifVRID{in.Interface, in.VRID, family}
		if in.Interface != "" && in.VRID != 0 {
			if prev, ok := seenVRID[k]; ok {
				v.errf(p+".virtual_router_id", "VRID %d on %s is already used by %s", in.VRID, in.Interface, prev)
			} else {
				seenVRID[k] = p
			}
		}
	}
	seenSvc := map[string]string{}
	viaChecks := 0
	for i := range v.cfg.Services {
		p := fmt.Sprintf("virtual_server[%d]", i)
		vs := &v.cfg.Services[i]
		v.service(p, vs)
		for _, rs := range vs.Reals {
			if rs.ViaVIP {
				viaChecks++
			}
		}
		if vs.ID == "" {
			continue
		}
		if prev, ok := seenSvc[vs.ID]; ok {
			v.errf(p+keyField(vs), "service %s is already declared by %s", vs.ID, prev)
		} else {
			seenSvc[vs.ID] = p
		}
	}
	if g := &v.cfg.Global; g.ViaVIPMarkCount > 0 && uint64(viaChecks) > uint64(g.ViaVIPMarkCount) {
		v.errf("global.via_vip_marks", "%s has %d marks for %d via_vip checks", g.ViaVIPMarks, g.ViaVIPMarkCount, viaChecks)
	}
	if rs := v.cfg.Realserver; rs != nil {
		v.realserver("realserver", rs)
	}
	if sy := v.cfg.Sync; sy != nil {
		v.sync("sync", sy)
	}
	if b := v.cfg.BGP; b != nil {
		v.bgp("bgp", b)
	}
	v.syncGroups()
	v.vipsHeld()
}

func (v *validator) global() {
	g := &v.cfg.Global
	switch g.LogLevel {
	case "debug", "info", "warn", "error":
	default:
		v.errf("global.log_level", "%q is not one of debug, info, warn, error", g.LogLevel)
	}
	switch g.LogFormat {
	case "text", "json":
	default:
		v.errf("global.log_format", "%q is not one of text, json", g.LogFormat)
	}
	if !filepath.IsAbs(g.ControlSocket) {
		v.errf("global.control_socket", "%q is not an absolute path", g.ControlSocket)
	}
	if !filepath.IsAbs(g.StateDir) {
		v.errf("global.state_dir", "%q is not an absolute path", g.StateDir)
	}
	if g.MetricsListen != "" {
		if _, port, err := net.SplitHostPort(g.MetricsListen); err != nil {
			v.errf("global.metrics_listen", "%q is not host:port (%v)", g.MetricsListen, err)
		} else if n, err := strconv.Atoi(port); err != nil || n < 1 || n > 65535 {
			v.errf("global.metrics_listen", "port %q is not 1-65535", port)
		}
	}
	if g.RealtimePriority < 0 || g.RealtimePriority > 99 {
		v.errf("global.realtime_priority", "%d is outside 0-99 (0 = normal scheduling)", g.RealtimePriority)
	}
	if g.IPVSRepairInterval.D() < time.Second {
		v.errf("global.ipvs_repair_interval", "%s is too short (at least 1s)", g.IPVSRepairInterval)
	}
	g.NotifyCaps = 0
	for _, name := range g.NotifyCapabilities {
		c, ok := notifyCapabilities[name]
		if !ok {
			v.errf("global.notify_capabilities", "%q is not one of CAP_NET_ADMIN, CAP_NET_RAW", name)
			continue
		}
		g.NotifyCaps |= 1 << c
	}
	g.ViaVIPMarkFirst, g.ViaVIPMarkCount = 0, 0
	if first, count, err := parseMarkRange(g.ViaVIPMarks); err != nil {
		v.errf("global.via_vip_marks", "%v", err)
	} else {
		g.ViaVIPMarkFirst, g.ViaVIPMarkCount = first, count
	}
	fails, ok := arpLeakModes.lookup(g.ARPLeak)
	if !ok {
		v.errf("global.arp_leak", "%q is not one of %s", g.ARPLeak, arpLeakModes.names())
	}
	g.ARPLeakFails = fails
}

// parseMarkRange reads "BASE/BITS" (BASE in decimal or 0x hex): the marks
// whose top BITS bits are BASE's, less mark 0 (no mark).
func parseMarkRange(s string) (first, count uint32, err error) {
	base, bits, ok := strings.Cut(s, "/")
	b, err1 := strconv.ParseUint(strings.TrimSpace(base), 0, 32)
	n, err2 := strconv.Atoi(strings.TrimSpace(bits))
	if !ok || err1 != nil || err2 != nil {
		return 0, 0, fmt.Errorf("%q is not BASE/BITS, e.g. \"0x4c560000/16\"", s)
	}
	if n < 1 || n > 31 {
		return 0, 0, fmt.Errorf("%q: BITS %d is outside 1-31", s, n)
	}
	size := uint64(1) << (32 - n)
	if b%size != 0 {
		return 0, 0, fmt.Errorf("%q: BASE %#x has bits set below the top %d", s, b, n)
	}
	first, count = uint32(b), uint32(size-1)
	if b == 0 {
		first++ // mark 0 is no mark
	} else {
		count++
	}
	return first, count, nil
}

// notifyCapabilities are the capabilities a notify command may keep: the
// daemon's own, less CAP_SETPCAP, which only serves to take them away.
var notifyCapabilities = map[string]uint{"CAP_NET_ADMIN": unix.CAP_NET_ADMIN, "CAP_NET_RAW": unix.CAP_NET_RAW}

func (v *validator) vrrp(p string, in *VRRPInstance) {
	defer v.library(p, len(v.diags), in.Runtime.Validate)
	rt := &in.Runtime
	*rt = vrrp.Config{
		Name: in.Name, Interface: in.Interface, VRID: uint8(in.VRID), Priority: uint8(in.Priority),
		AdvertInterval: in.AdvertInterval.D(), Version: in.Version, Preempt: in.Preempt, PreemptDelay: in.PreemptDelay.D(),
		AuthPass: in.AuthPass, GARPRepeat: in.GARPRepeat, GARPDelay: in.GARPDelay.D(), GARPRefresh: in.GARPRefresh.D(),
		GARPInterval: in.GARPInterval.D(), Notify: in.Notify, NotifyTimeout: notifyTimeout,
	}
	if in.Name == "" {
		v.errf(p+".name", "required but missing")
	}
	if in.Interface == "" {
		v.errf(p+".interface", "required but missing")
	}
	if in.VRID < 1 || in.VRID > 255 {
		v.errf(p+".virtual_router_id", "%d is outside 1-255", in.VRID)
	}
	if in.Priority < 1 || in.Priority > 255 {
		v.errf(p+".priority", "%d is outside 1-255 (255 = address owner; 0 is reserved for a master that resigns)", in.Priority)
	}
	if in.Version == 2 || in.Version == 3 {
		if err := vrrp.CheckAdvertInterval(in.Version, in.AdvertInterval.D()); err != nil {
			v.errf(p+".advert_interval", "%v", err)
		}
	}
	switch in.Version {
	case 3:
		if in.AuthPass != "" {
			v.errf(p+".auth_pass", "authentication exists only in VRRPv2 (set version = 2 or remove auth_pass)")
		}
		if m, ok := checksumModes.lookup(in.Checksum); ok {
			rt.ChecksumMode = m
		} else {
			v.errf(p+".checksum", "%q is not one of %s", in.Checksum, checksumModes.names())
		}
	case 2:
		if len(in.AuthPass) > vrrp.MaxAuthPass {
			v.errf(p+".auth_pass", "password is %d characters; VRRPv2 carries at most %d", len(in.AuthPass), vrrp.MaxAuthPass)
		}
		if in.Checksum != "keepalived" {
			v.errf(p+".checksum", "checksum form applies only to VRRPv3")
		}
	default:
		v.errf(p+".version", "%d is not 2 or 3", in.Version)
	}
	if d := in.PreemptDelay.D(); d < 0 || d > 1000*time.Second {
		v.errf(p+".preempt_delay", "%s is outside 0-1000s", d)
	}
	if len(in.VIPs) == 0 {
		v.errf(p+".virtual_ipaddress", "required but missing (at least one VIP)")
	}
	if len(in.VIPs) > vrrp.MaxVIPs {
		v.errf(p+".virtual_ipaddress", "%d VIPs; an advert carries at most %d", len(in.VIPs), vrrp.MaxVIPs)
	}
	// One instance is one address family: that of its first VIP. An
	// advert carries addresses of one family, in a packet of that family.
	var fam, first string
	seen := map[netip.Addr]bool{}
	for j, s := range in.VIPs {
		pp := fmt.Sprintf("%s.virtual_ipaddress[%d]", p, j)
		pfx, err := parseVIP(s)
		if err != nil {
			v.errf(pp, "%v", err)
			continue
		}
		if seen[pfx.Addr()] {
			v.errf(pp, "VIP %s is listed twice", pfx.Addr())
		}
		seen[pfx.Addr()] = true
		if f := vrrp.Family(pfx.Addr()); fam == "" {
			fam, first = f, fmt.Sprintf("virtual_ipaddress[%d] (%s)", j, pfx.Addr())
		} else if f != fam {
			v.errf(pp, "%s is %s but %s is %s: one vrrp_instance is one address family (put the %s VIPs in an instance of their own)",
				pfx.Addr(), f, first, fam, f)
		}
		rt.VIPs = append(rt.VIPs, pfx)
	}
	if fam == "IPv6" {
		if in.Version == 2 {
			v.errf(p+".version", "VRRPv2 carries IPv4 only and %s is IPv6 (use version = 3, RFC 9568)", first)
		}
		if in.Checksum == "rfc" {
			v.errf(p+".checksum", "the checksum form applies only to IPv4: over IPv6 it always covers the IPv6 pseudo-header")
		}
	}
	if in.UnicastSrc != "" {
		a, err := parseAddr(in.UnicastSrc)
		if err != nil {
			v.errf(p+".unicast_src_ip", "%v", err)
		} else if f := vrrp.Family(a); fam != "" && f != fam {
			v.errf(p+".unicast_src_ip", "%s is %s but the instance is %s, like %s", a, f, fam, first)
		}
		rt.UnicastSrc = a
	}
	for j, s := range in.UnicastPeers {
		pp := fmt.Sprintf("%s.unicast_peer[%d]", p, j)
		a, err := parseAddr(s)
		if err != nil {
			v.errf(pp, "%v", err)
			continue
		}
		if f := vrrp.Family(a); fam != "" && f != fam {
			v.errf(pp, "%s is %s but the instance is %s, like %s", a, f, fam, first)
		}
		rt.UnicastPeers = append(rt.UnicastPeers, a)
	}
	if in.UnicastSrc != "" && len(in.UnicastPeers) == 0 {
		v.errf(p+".unicast_src_ip", "unicast_src_ip without unicast_peer: adverts would still go to multicast")
	}
	// keepalived refuses 0 too (and sends 1): a takeover must announce the
	// VIPs' new MAC.
	if in.GARPRepeat < 1 || in.GARPRepeat > 100 {
		v.errf(p+".garp_master_repeat", "%d is outside 1-100", in.GARPRepeat)
	}
	for _, d := range []struct {
		key string
		val Duration
	}{{"garp_master_delay", in.GARPDelay}, {"garp_master_refresh", in.GARPRefresh}, {"garp_interval", in.GARPInterval}} {
		if d.val < 0 {
			v.errf(p+"."+d.key, "%s is negative", d.val)
		}
	}
	if in.GARPRefresh > 0 && in.GARPRefresh.D() < time.Second {
		v.errf(p+".garp_master_refresh", "%s is too short (at least 1s, or 0 for off)", in.GARPRefresh)
	}
	for j, t := range in.Track {
		tp := fmt.Sprintf("%s.track_interface[%d]", p, j)
		if t.Name == "" {
			v.errf(tp+".name", "required but missing")
		}
		if t.Weight < -254 || t.Weight > 254 {
			v.errf(tp+".weight", "%d is outside -254..254 (0 = FAULT while down)", t.Weight)
		}
		rt.Track = append(rt.Track, vrrp.TrackInterface{Name: t.Name, Weight: t.Weight})
	}
	v.instanceTracks(p, in)
	if len(in.Notify) > 0 && !filepath.IsAbs(in.Notify[0]) {
		v.errf(p+".notify[0]", "%q is not an absolute path (notify runs without a shell or PATH search)", in.Notify[0])
	}
	if in.Priority == 255 && len(rt.VIPs) > 0 {
		// The owner is expected to hold the addresses for real; say so, as
		// keepalived's docs do, since it changes failover behaviour.
		v.warnf(p+".priority", "priority 255 makes this node the address owner: it takes over at once whenever it is up")
	}
}

func (v *validator) realserver(p string, rs *Realserver) {
	if rs.Interface == "" {
		v.errf(p+".interface", "required but missing (the interface facing the clients)")
	}
	if len(rs.VIPs) == 0 {
		v.errf(p+".vips", "required but missing (at least one VIP)")
	}
	rs.Runtime = realserver.Config{Interface: rs.Interface}
	ok := rs.Interface != "" && len(rs.VIPs) > 0
	for j, s := range rs.VIPs {
		a, err := ParseRealserverVIP(s)
		if err != nil {
			v.errf(fmt.Sprintf("%s.vips[%d]", p, j), "%v", err)
			ok = false
			continue
		}
		rs.Runtime.VIPs = append(rs.Runtime.VIPs, a)
	}
	// The rest (which interface, which addresses) is realserver's rule,
	// so that -t and `lvsha realserver up` never disagree.
	if ok {
		if err := rs.Runtime.Validate(); err != nil {
			v.errf(p, "%v", err)
		}
	}
}

// ParseRealserverVIP accepts a bare address of either family, or one with
// its host prefix length (/32, /128): on lo a VIP is only ever that.
func ParseRealserverVIP(s string) (netip.Addr, error) {
	if p, err := netip.ParsePrefix(s); err == nil {
		if p.Bits() != p.Addr().BitLen() {
			return netip.Addr{}, fmt.Errorf("%q: a real server's VIP is a single address (/%d or no length)", s, p.Addr().BitLen())
		}
		s = p.Addr().String()
	}
	return parseAddr(s)
}

// vipsHeld warns about a service whose address no VRRP instance or
// realserver section holds: nothing would ever answer on it.
func (v *validator) vipsHeld() {
	held := map[netip.Addr]bool{}
	for _, in := range v.cfg.VRRP {
		for _, p := range in.Runtime.VIPs {
			held[p.Addr()] = true
		}
	}
	if rs := v.cfg.Realserver; rs != nil {
		for _, a := range rs.Runtime.VIPs {
			held[a] = true
		}
	}
	if b := v.cfg.BGP; b != nil {
		for _, p := range b.VIPs {
			held[p.Addr()] = true
		}
	}
	for i, vs := range v.cfg.Services {
		if a := vs.IPVS.Key.Addr; a.IsValid() && !held[a.Addr()] {
			v.warnf(fmt.Sprintf("virtual_server[%d].address", i), "VIP %s is not held by any vrrp_instance or realserver section", a.Addr())
		}
	}
}

// parseAddr accepts an IPv4 or IPv6 address, without a zone (a VRRP
// instance's interface is the zone of a link-local one) and not
// IPv4-mapped: every address of the file goes through it.
func parseAddr(s string) (netip.Addr, error) {
	a, err := netip.ParseAddr(s)
	switch {
	case err != nil:
		return netip.Addr{}, fmt.Errorf("%q is not an IP address", s)
	case a.Zone() != "":
		return netip.Addr{}, fmt.Errorf("%q has a zone: leave it out (a VRRP instance takes its interface as the zone)", s)
	case vrrp.Family(a) == "invalid":
		return netip.Addr{}, fmt.Errorf("%q is an IPv4-mapped IPv6 address: write the IPv4 address", s)
	}
	return a, nil
}

// parseVIP accepts "10.0.0.1/24", "2001:db8::200/64" or a bare address,
// taken as /32 (/128 for IPv6) as keepalived does.
func parseVIP(s string) (netip.Prefix, error) {
	if !strings.Contains(s, "/") {
		a, err := parseAddr(s)
		if err != nil {
			return netip.Prefix{}, err
		}
		return netip.PrefixFrom(a, a.BitLen()), nil
	}
	p, err := netip.ParsePrefix(s)
	if err != nil {
		return netip.Prefix{}, fmt.Errorf("%q is not an address/prefix like 192.168.94.200/24 or 2001:db8::200/64", s)
	}
	if vrrp.Family(p.Addr()) == "invalid" {
		return netip.Prefix{}, fmt.Errorf("%q is an IPv4-mapped IPv6 address: write the IPv4 address", s)
	}
	return p, nil
}

// parseAddrPort accepts "192.0.2.1:80" and "[2001:db8::1]:80": the
// addresses of services, real servers and sorry servers, of either family.
func parseAddrPort(s string) (netip.AddrPort, error) {
	host, port, err := net.SplitHostPort(s)
	if err != nil {
		return netip.AddrPort{}, fmt.Errorf("%q is not address:port (IPv6: [address]:port)", s)
	}
	a, err := parseAddr(host)
	if err != nil {
		return netip.AddrPort{}, err
	}
	n, err := strconv.Atoi(port)
	if err != nil || n < 1 || n > 65535 {
		return netip.AddrPort{}, fmt.Errorf("port %q in %q is not 1-65535", port, s)
	}
	return netip.AddrPortFrom(a, uint16(n)), nil
}
