package conf

import (
	"fmt"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/lvsha/lvsha/healthcheck"
	"github.com/lvsha/lvsha/lvs"
	"github.com/lvsha/lvsha/vrrp"
)

type validator struct {
	cfg   *Config
	diags []Diag
}

func (v *validator) errf(path, format string, args ...any) {
	v.diags = append(v.diags, Diag{Path: path, Msg: fmt.Sprintf(format, args...)})
}

func (v *validator) warnf(path, format string, args ...any) {
	v.diags = append(v.diags, Diag{Path: path, Msg: fmt.Sprintf(format, args...), Warning: true})
}

func (v *validator) run() {
	v.global()
	type ifVRID struct {
		ifname string
		vrid   int
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
		k := ifVRID{in.Interface, in.VRID}
		if in.Interface != "" && in.VRID != 0 {
			if prev, ok := seenVRID[k]; ok {
				v.errf(p+".virtual_router_id", "VRID %d on %s is already used by %s", in.VRID, in.Interface, prev)
			} else {
				seenVRID[k] = p
			}
		}
	}
	seenSvc := map[string]string{}
	for i := range v.cfg.Services {
		p := fmt.Sprintf("virtual_server[%d]", i)
		vs := &v.cfg.Services[i]
		v.service(p, vs)
		if vs.ID == "" {
			continue
		}
		if prev, ok := seenSvc[vs.ID]; ok {
			v.errf(p+keyField(vs), "service %s is already declared by %s", vs.ID, prev)
		} else {
			seenSvc[vs.ID] = p
		}
	}
	if rs := v.cfg.Realserver; rs != nil {
		v.realserver("realserver", rs)
	}
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
}

func (v *validator) vrrp(p string, in *VRRPInstance) {
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
	iv := in.AdvertInterval.D()
	switch in.Version {
	case 3:
		if iv < 10*time.Millisecond || iv > 40950*time.Millisecond {
			v.errf(p+".advert_interval", "%s is outside 10ms-40.95s (VRRPv3)", iv)
		} else if iv%(10*time.Millisecond) != 0 {
			v.errf(p+".advert_interval", "%s is not a multiple of 10ms (VRRPv3 counts in centiseconds)", iv)
		}
		if in.AuthPass != "" {
			v.errf(p+".auth_pass", "authentication exists only in VRRPv2 (set version = 2 or remove auth_pass)")
		}
		if m, ok := checksumModes.lookup(in.Checksum); ok {
			rt.ChecksumMode = m
		} else {
			v.errf(p+".checksum", "%q is not one of %s", in.Checksum, checksumModes.names())
		}
	case 2:
		if iv < time.Second || iv > 255*time.Second || iv%time.Second != 0 {
			v.errf(p+".advert_interval", "%s is not a whole number of seconds from 1s to 255s (VRRPv2)", iv)
		}
		if len(in.AuthPass) > 8 {
			v.errf(p+".auth_pass", "password is %d characters; VRRPv2 carries at most 8", len(in.AuthPass))
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
		rt.VIPs = append(rt.VIPs, pfx)
	}
	if in.UnicastSrc != "" {
		a, err := parseAddr4(in.UnicastSrc)
		if err != nil {
			v.errf(p+".unicast_src_ip", "%v", err)
		}
		rt.UnicastSrc = a
	}
	for j, s := range in.UnicastPeers {
		a, err := parseAddr4(s)
		if err != nil {
			v.errf(fmt.Sprintf("%s.unicast_peer[%d]", p, j), "%v", err)
			continue
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
	if len(in.Notify) > 0 && !filepath.IsAbs(in.Notify[0]) {
		v.errf(p+".notify[0]", "%q is not an absolute path (notify runs without a shell or PATH search)", in.Notify[0])
	}
	if in.Priority == 255 && len(rt.VIPs) > 0 {
		// The owner is expected to hold the addresses for real; say so, as
		// keepalived's docs do, since it changes failover behaviour.
		v.warnf(p+".priority", "priority 255 makes this node the address owner: it takes over at once whenever it is up")
	}
}

func (v *validator) service(p string, vs *VirtualServer) {
	svc := &vs.IPVS
	*svc = lvs.Service{Scheduler: vs.Scheduler, Persistence: vs.Persistence.D(), Quorum: vs.Quorum}
	vs.ID = ""
	proto, protoOK := protocols.lookup(vs.Protocol)
	if !protoOK {
		v.errf(p+".protocol", "%q is not one of %s", vs.Protocol, protocols.names())
	}
	switch {
	case vs.Address != "" && vs.FWMark != 0:
		v.errf(p, "set either address or fwmark, not both")
	case vs.Address == "" && vs.FWMark == 0:
		v.errf(p+".address", "required but missing (VIP:port, or set fwmark)")
	case vs.Address != "":
		ap, err := parseAddrPort4(vs.Address)
		if err != nil {
			v.errf(p+".address", "%v", err)
		} else if protoOK {
			svc.Key = lvs.Key{Proto: proto, Addr: ap}
			vs.ID = serviceID(svc.Key)
		}
	case vs.FWMark < 0:
		v.errf(p+".fwmark", "%d is negative", vs.FWMark)
	default:
		svc.Key = lvs.Key{FWMark: uint32(vs.FWMark)}
		vs.ID = serviceID(svc.Key)
	}
	if !slices.Contains(lvs.Schedulers, vs.Scheduler) {
		v.errf(p+".scheduler", "unknown scheduler %q (one of %s)", vs.Scheduler, strings.Join(lvs.Schedulers, " "))
	} else if vs.Scheduler == "twos" {
		v.warnf(p+".scheduler", "twos needs Linux 6.7 or later (Debian bookworm's 6.1 refuses the service)")
	}
	if f, ok := forwardings.lookup(vs.Forwarding); ok {
		svc.Forwarding = f
	} else {
		v.errf(p+".forwarding", "unknown forwarding method %q (one of %s)", vs.Forwarding, forwardings.names())
	}
	if vs.Persistence < 0 || vs.Persistence.D()%time.Second != 0 {
		v.errf(p+".persistence_timeout", "%s is not a whole, non-negative number of seconds", vs.Persistence)
	}
	if vs.Quorum < 0 {
		v.errf(p+".quorum", "%d is negative", vs.Quorum)
	}
	if vs.SorryServer != "" {
		ap, err := parseAddrPort4(vs.SorryServer)
		if err != nil {
			v.errf(p+".sorry_server", "%v", err)
		}
		svc.Sorry = ap
	}
	if f, ok := onFailures.lookup(vs.OnFailure); ok {
		svc.OnFailure = f
	} else {
		v.errf(p+".on_failure", "%q is not one of %s", vs.OnFailure, onFailures.names())
	}
	var spec *healthcheck.Spec
	if vs.Check != nil {
		spec = v.check(p+".check", vs.Check)
	}
	if len(vs.Reals) == 0 {
		v.warnf(p+".real_server", "none declared: the service will have no destination")
	}
	svc.Reals = make([]lvs.Real, len(vs.Reals))
	seen := map[netip.AddrPort]string{}
	for j := range vs.Reals {
		rp := fmt.Sprintf("%s.real_server[%d]", p, j)
		rs := &vs.Reals[j]
		var addr netip.AddrPort
		if rs.Address == "" {
			v.errf(rp+".address", "required but missing")
		} else if ap, err := parseAddrPort4(rs.Address); err != nil {
			v.errf(rp+".address", "%v", err)
		} else {
			addr = ap
			if prev, ok := seen[ap]; ok {
				v.errf(rp+".address", "real server %s is already listed as %s", ap, prev)
			}
			seen[ap] = rp
			if svc.Forwarding == lvs.DR && svc.Key.Addr.IsValid() && ap.Port() != svc.Key.Addr.Port() {
				v.warnf(rp+".address", "port %d differs from the service's %d: direct routing cannot change ports, packets arrive on %d",
					ap.Port(), svc.Key.Addr.Port(), svc.Key.Addr.Port())
			}
		}
		rs.ID = RealServerID(vs.ID, addr.String())
		if rs.Weight < 0 || rs.Weight > 65535 {
			v.errf(rp+".weight", "%d is outside 0-65535", rs.Weight)
		}
		svc.Reals[j] = lvs.Real{Addr: addr, Weight: rs.Weight}
		// A check that is only inherited was validated with the service; an
		// override reports only the problems it brings.
		rs.Spec = spec
		if rs.CheckOverride != nil && rs.check != nil {
			rs.Spec = v.overrideCheck(p+".check", rp+".check", vs.Check, rs.check)
		}
	}
}

// overrideCheck validates a real server's own check c and returns its spec;
// of its problems, those the inherited check has too were reported already.
func (v *validator) overrideCheck(base, p string, inherited, c *Check) *healthcheck.Spec {
	had := map[string]bool{}
	if inherited != nil {
		bv := validator{cfg: v.cfg}
		bv.check(base, inherited)
		for _, d := range bv.diags {
			had[strings.TrimPrefix(d.Path, base)+"\x00"+d.Msg] = true
		}
	}
	ov := validator{cfg: v.cfg}
	spec := ov.check(p, c)
	for _, d := range ov.diags {
		if !had[strings.TrimPrefix(d.Path, p)+"\x00"+d.Msg] {
			v.diags = append(v.diags, d)
		}
	}
	return spec
}

// check validates c and returns it as the healthcheck package takes it.
func (v *validator) check(p string, c *Check) *healthcheck.Spec {
	s := &healthcheck.Spec{
		Path: c.Path, Method: c.Method, Host: c.Host, Status: c.Status, MaxBody: int64(c.MaxBody),
		TLSServerName: c.TLSServerName, TLSSkipVerify: c.TLSSkipVerify, TLSCAFile: c.TLSCAFile,
		Port: uint16(c.Port), Argv: c.Argv, Interval: c.Interval.D(), Timeout: c.Timeout.D(), Rise: c.Rise, Fall: c.Fall,
	}
	if c.Type == "" {
		v.errf(p+".type", "required but missing (http, https, tcp or exec)")
	} else if t, err := healthcheck.ParseCheckType(c.Type); err != nil {
		v.errf(p+".type", "%v", err)
	} else {
		s.Type = t
	}
	web := s.Type == healthcheck.TypeHTTP || s.Type == healthcheck.TypeHTTPS
	if web {
		if !strings.HasPrefix(c.Path, "/") {
			v.errf(p+".path", "%q does not start with /", c.Path)
		} else if strings.ContainsAny(c.Path, " \t\r\n") {
			v.errf(p+".path", "%q contains a space or line break (write it URL-encoded)", c.Path)
		}
		if strings.ContainsAny(c.Host, " \t\r\n") {
			v.errf(p+".host", "%q contains a space or line break", c.Host)
		}
		if c.Method != "GET" && c.Method != "HEAD" {
			v.errf(p+".method", "%q is not GET or HEAD", c.Method)
		}
		if len(c.Status) == 0 {
			v.errf(p+".status", "empty: at least one status code or range")
		}
		if c.BodyRegex != "" {
			re, err := regexp.Compile(c.BodyRegex)
			if err != nil {
				v.errf(p+".body_regex", "%v", err)
			}
			s.BodyRegex = re
			if c.Method == "HEAD" {
				v.errf(p+".body_regex", "a HEAD response has no body to match")
			}
		}
		if c.MaxBody < 1 || c.MaxBody > 16<<20 {
			v.errf(p+".max_body", "%d is outside 1-16777216 bytes", c.MaxBody)
		}
	}
	if s.Type != healthcheck.TypeHTTPS {
		if c.TLSServerName != "" {
			v.errf(p+".tls_server_name", "applies only to type = \"https\"")
		}
		if c.TLSSkipVerify {
			v.errf(p+".tls_skip_verify", "applies only to type = \"https\"")
		}
		if c.TLSCAFile != "" {
			v.errf(p+".tls_ca_file", "applies only to type = \"https\"")
		}
	} else if c.TLSCAFile != "" {
		if _, err := os.Stat(c.TLSCAFile); err != nil {
			// A warning: the file may exist only on the director that runs it.
			v.warnf(p+".tls_ca_file", "%v (the daemon will refuse to start without it)", err)
		}
		if c.TLSSkipVerify {
			v.errf(p+".tls_skip_verify", "skipping verification makes tls_ca_file pointless; set one or the other")
		}
	}
	if s.Type == healthcheck.TypeExec {
		if len(c.Argv) == 0 {
			v.errf(p+".argv", "required for type = \"exec\"")
		} else if !filepath.IsAbs(c.Argv[0]) {
			v.errf(p+".argv[0]", "%q is not an absolute path (exec runs without a shell or PATH search)", c.Argv[0])
		}
	} else if len(c.Argv) > 0 {
		v.errf(p+".argv", "applies only to type = \"exec\"")
	}
	if c.Port < 0 || c.Port > 65535 {
		v.errf(p+".port", "%d is outside 0-65535 (0 = the real server's port)", c.Port)
	}
	if c.Interval.D() < 100*time.Millisecond {
		v.errf(p+".interval", "%s is too short (at least 100ms)", c.Interval)
	}
	if c.Timeout <= 0 {
		v.errf(p+".timeout", "%s must be positive", c.Timeout)
	} else if c.Timeout >= c.Interval {
		v.errf(p+".timeout", "%s is not shorter than the interval %s", c.Timeout, c.Interval)
	}
	if c.Rise < 1 || c.Rise > 100 {
		v.errf(p+".rise", "%d is outside 1-100", c.Rise)
	}
	if c.Fall < 1 || c.Fall > 100 {
		v.errf(p+".fall", "%d is outside 1-100", c.Fall)
	}
	if up, ok := initialStates.lookup(c.InitialState); ok {
		s.InitialUp = up
	} else {
		v.errf(p+".initial_state", "%q is not up or down", c.InitialState)
	}
	return s
}

func (v *validator) realserver(p string, rs *Realserver) {
	if rs.Interface == "" {
		v.errf(p+".interface", "required but missing (the interface facing the clients)")
	}
	if len(rs.VIPs) == 0 {
		v.errf(p+".vips", "required but missing (at least one VIP)")
	}
	rs.VIPAddrs = nil
	for j, s := range rs.VIPs {
		a, err := parseAddr4(strings.TrimSuffix(s, "/32"))
		if err != nil {
			v.errf(fmt.Sprintf("%s.vips[%d]", p, j), "%v", err)
			continue
		}
		rs.VIPAddrs = append(rs.VIPAddrs, a)
	}
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
		for _, a := range rs.VIPAddrs {
			held[a] = true
		}
	}
	for i, vs := range v.cfg.Services {
		if a := vs.IPVS.Key.Addr; a.IsValid() && !held[a.Addr()] {
			v.warnf(fmt.Sprintf("virtual_server[%d].address", i), "VIP %s is not held by any vrrp_instance or realserver section", a.Addr())
		}
	}
}

func parseAddr4(s string) (netip.Addr, error) {
	a, err := netip.ParseAddr(s)
	if err != nil {
		return netip.Addr{}, fmt.Errorf("%q is not an IP address", s)
	}
	if !a.Is4() {
		return netip.Addr{}, fmt.Errorf("%q is not an IPv4 address (lvsha handles IPv4 only for now)", s)
	}
	return a, nil
}

// parseVIP accepts "10.0.0.1/24" or a bare address, taken as /32 as keepalived does.
func parseVIP(s string) (netip.Prefix, error) {
	if !strings.Contains(s, "/") {
		a, err := parseAddr4(s)
		if err != nil {
			return netip.Prefix{}, err
		}
		return netip.PrefixFrom(a, 32), nil
	}
	p, err := netip.ParsePrefix(s)
	if err != nil {
		return netip.Prefix{}, fmt.Errorf("%q is not an address/prefix like 192.168.94.200/24", s)
	}
	if !p.Addr().Is4() {
		return netip.Prefix{}, fmt.Errorf("%q is not an IPv4 address (lvsha handles IPv4 only for now)", s)
	}
	return p, nil
}

func parseAddrPort4(s string) (netip.AddrPort, error) {
	host, port, err := net.SplitHostPort(s)
	if err != nil {
		return netip.AddrPort{}, fmt.Errorf("%q is not address:port", s)
	}
	a, err := parseAddr4(host)
	if err != nil {
		return netip.AddrPort{}, err
	}
	n, err := strconv.Atoi(port)
	if err != nil || n < 1 || n > 65535 {
		return netip.AddrPort{}, fmt.Errorf("port %q in %q is not 1-65535", port, s)
	}
	return netip.AddrPortFrom(a, uint16(n)), nil
}

// keyField is the key that identifies a service in its table.
func keyField(vs *VirtualServer) string {
	if vs.FWMark != 0 {
		return ".fwmark"
	}
	return ".address"
}
