package conf

import (
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"time"

	"github.com/lvsha/lvsha/healthcheck"
	"github.com/lvsha/lvsha/lvs"
)

// Virtual services and their checks: validated, and turned into the IPVS
// service templates and health-check specs the director hands on.

func (v *validator) service(p string, vs *VirtualServer) {
	svc := &vs.IPVS
	*svc = lvs.Service{Scheduler: vs.Scheduler, Persistence: vs.Persistence.D(), Quorum: vs.Quorum}
	vs.ID = ""
	if vs.MHFallback {
		svc.SchedFlags |= lvs.MHFallback
	}
	if vs.MHPort {
		svc.SchedFlags |= lvs.MHPort
	}
	if svc.SchedFlags != 0 && vs.Scheduler != "mh" {
		// Other schedulers read the same bits with other meanings (sh's
		// sh-fallback, sh-port): refuse rather than guess.
		key := ".mh_fallback"
		if !vs.MHFallback {
			key = ".mh_port"
		}
		v.errf(p+key, "needs scheduler = \"mh\" (the scheduler is %q)", vs.Scheduler)
	}
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
		ap, err := parseAddrPort(vs.Address)
		if err != nil {
			v.errf(p+".address", "%v", err)
		} else if protoOK {
			svc.Key = lvs.Key{Proto: proto, Addr: ap}
			vs.ID = serviceID(svc.Key)
		}
	case vs.FWMark < 0:
		v.errf(p+".fwmark", "%d is negative", vs.FWMark)
	default:
		// The kernel keeps a fwmark service per family; its real servers
		// (or sorry server) say which one this is.
		svc.Key = lvs.Key{FWMark: uint32(vs.FWMark), FWMark6: fwmarkIPv6(vs)}
		vs.ID = serviceID(svc.Key)
		if g := &v.cfg.Global; uint32(vs.FWMark) >= g.ViaVIPMarkFirst && uint32(vs.FWMark)-g.ViaVIPMarkFirst < g.ViaVIPMarkCount {
			v.errf(p+".fwmark", "%d (%#x) is in global.via_vip_marks %s, which via_vip checks use", vs.FWMark, vs.FWMark, g.ViaVIPMarks)
		}
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
		ap, err := parseAddrPort(vs.SorryServer)
		if err != nil {
			v.errf(p+".sorry_server", "%v", err)
		} else if vs.ID != "" && ap.Addr().Is6() != svc.Key.IPv6() {
			v.errf(p+".sorry_server", "%s is %s but the service is %s: a service and its servers share one address family", ap, familyName(ap.Addr().Is6()), familyName(svc.Key.IPv6()))
		}
		svc.Sorry = ap
	}
	if f, ok := onFailures.lookup(vs.OnFailure); ok {
		svc.OnFailure = f
		if f == lvs.Remove && vs.Scheduler == "mh" {
			// ip_vs_mh.c rebuilds its table from the destination list: a
			// removal moves flows of the servers still up too, and a
			// server removed on one director only splits the directors.
			v.warnf(p+".on_failure", `"remove" with scheduler mh reshuffles the flows of every real server on each failure; "inhibit" keeps their Maglev slots`)
		}
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
	viaReported := map[string]bool{} // an inherited check is judged once
	for j := range vs.Reals {
		rp := fmt.Sprintf("%s.real_server[%d]", p, j)
		rs := &vs.Reals[j]
		var addr netip.AddrPort
		if rs.Address == "" {
			v.errf(rp+".address", "required but missing")
		} else if ap, err := parseAddrPort(rs.Address); err != nil {
			v.errf(rp+".address", "%v", err)
		} else {
			addr = ap
			if prev, ok := seen[ap]; ok {
				v.errf(rp+".address", "real server %s is already listed as %s", ap, prev)
			}
			seen[ap] = rp
			if vs.ID != "" && ap.Addr().Is6() != svc.Key.IPv6() {
				v.errf(rp+".address", "%s is %s but the service is %s: a service and its real servers share one address family (the kernel mixes them only for tunnels, the sync daemon never)",
					ap, familyName(ap.Addr().Is6()), familyName(svc.Key.IPv6()))
			}
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
		cp := p + ".check"
		if rs.CheckOverride != nil && rs.check != nil {
			rs.Spec = v.overrideCheck(p+".check", rp+".check", vs.Check, rs.check)
			cp = rp + ".check"
		}
		rs.ViaVIP = rs.Spec != nil && rs.check != nil && rs.check.ViaVIP
		if rs.ViaVIP && !viaReported[cp] {
			viaReported[cp] = true
			v.viaVIP(cp, vs)
		}
	}
}

// viaVIP checks that the service of a via_vip check (on path p) can carry
// it.
func (v *validator) viaVIP(p string, vs *VirtualServer) {
	switch {
	case vs.Address == "":
		v.errf(p+".via_vip", "needs the service's address (VIP:port) to connect to; a fwmark service has none")
	case vs.IPVS.Forwarding != lvs.DR:
		v.errf(p+".via_vip", "needs forwarding = \"dr\": the check rides the director's direct routing")
	}
}

// fwmarkIPv6 says whether a fwmark service is the IPv6 one: its first real
// server with a valid address decides, else its sorry server; IPv4 if none.
func fwmarkIPv6(vs *VirtualServer) bool {
	for _, rs := range vs.Reals {
		if ap, err := parseAddrPort(rs.Address); err == nil {
			return ap.Addr().Is6()
		}
	}
	if ap, err := parseAddrPort(vs.SorryServer); err == nil {
		return ap.Addr().Is6()
	}
	return false
}

func familyName(v6 bool) string {
	if v6 {
		return "IPv6"
	}
	return "IPv4"
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
	s := &healthcheck.Spec{}
	defer v.library(p, len(v.diags), s.Validate)
	*s = healthcheck.Spec{
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
		if c.ViaVIP {
			v.errf(p+".via_vip", "an exec check makes its own connections; via_vip applies to http, https and tcp")
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

// keyField is the key that identifies a service in its table.
func keyField(vs *VirtualServer) string {
	if vs.FWMark != 0 {
		return ".fwmark"
	}
	return ".address"
}
