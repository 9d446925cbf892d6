package director

import (
	"cmp"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"slices"
	"strings"

	"github.com/lvsha/lvsha/conf"
	"github.com/lvsha/lvsha/healthcheck"
	"github.com/lvsha/lvsha/lvs"
)

// via_vip checks (README, "Checks through the VIP"): each checked real
// server gets a firewall mark and an IPVS fwmark service whose one
// destination is that server (DR), so that the checker's marked connection
// to VIP:port reaches it by direct routing, as clients' connections do.

// assignMarks gives every via_vip real server of cfg a mark of
// global.via_vip_marks. A real server keeps the mark prev gave it while the
// range still holds it: a new mark would restart its check and replace its
// IPVS service. conf has checked that the range is large enough.
func assignMarks(prev map[string]uint32, cfg *conf.Config) map[string]uint32 {
	first, count := cfg.Global.ViaVIPMarkFirst, cfg.Global.ViaVIPMarkCount
	in := func(m uint32) bool { return m >= first && m-first < count }
	out := map[string]uint32{}
	used := map[uint32]bool{}
	var fresh []string
	for i := range cfg.Services {
		for _, rs := range cfg.Services[i].Reals {
			if !rs.ViaVIP {
				continue
			}
			if m, ok := prev[rs.ID]; ok && in(m) && !used[m] {
				out[rs.ID], used[m] = m, true
			} else {
				fresh = append(fresh, rs.ID)
			}
		}
	}
	next := first
	for _, id := range fresh {
		for used[next] && next-first < count {
			next++
		}
		out[id], used[next] = next, true
	}
	return out
}

// viaServices are the fwmark services of the marks, sorted by mark.
func viaServices(cfg *conf.Config, marks map[string]uint32) []lvs.Service {
	var out []lvs.Service
	for i := range cfg.Services {
		vs := &cfg.Services[i]
		for j, rs := range vs.Reals {
			m, ok := marks[rs.ID]
			if !ok {
				continue
			}
			addr := vs.IPVS.Reals[j].Addr
			out = append(out, lvs.Service{
				Key:       lvs.Key{FWMark: m, FWMark6: addr.Addr().Is6()},
				Scheduler: "rr", Forwarding: lvs.DR, OnFailure: lvs.Inhibit,
				// Always up with weight 1: this service exists to reach
				// the server whatever its verdict.
				Reals: []lvs.Real{{Addr: addr, Weight: 1, Up: true}},
			})
		}
	}
	slices.SortFunc(out, func(a, b lvs.Service) int { return cmp.Compare(a.Key.FWMark, b.Key.FWMark) })
	return out
}

// viaVia is the healthcheck.Via of real server j of vs, zero if it has no
// mark.
func viaVia(vs *conf.VirtualServer, j int, marks map[string]uint32) healthcheck.Via {
	m, ok := marks[vs.Reals[j].ID]
	if !ok {
		return healthcheck.Via{}
	}
	return healthcheck.Via{VIP: vs.IPVS.Key.Addr.Addr(), Mark: m}
}

// acceptLocal sets accept_local=1 on the interfaces that lead to via_vip
// real servers. On the master, which holds the VIP, a check's reply comes
// from the VIP, a local address: the kernel drops it as a martian source
// unless the interface accepts local sources. It is left set on stop:
// nothing else sends packets from the VIP to this host.
func acceptLocal(cfg *conf.Config, marks map[string]uint32, log *slog.Logger) {
	done := map[string]bool{}
	var errs []error
	for i := range cfg.Services {
		vs := &cfg.Services[i]
		for j, rs := range vs.Reals {
			if _, ok := marks[rs.ID]; !ok || !vs.IPVS.Key.Addr.Addr().Is4() {
				continue
			}
			ifname, err := interfaceToward(vs.IPVS.Reals[j].Addr.Addr().AsSlice())
			if err != nil {
				errs = append(errs, fmt.Errorf("%s: %w", rs.ID, err))
				continue
			}
			if done[ifname] {
				continue
			}
			done[ifname] = true
			p := filepath.Join("/proc/sys/net/ipv4/conf", ifname, "accept_local")
			if b, err := os.ReadFile(p); err == nil && strings.TrimSpace(string(b)) == "1" {
				continue
			}
			if err := os.WriteFile(p, []byte("1"), 0o644); err != nil {
				errs = append(errs, fmt.Errorf("via_vip: %w", err))
				continue
			}
			log.Info("via_vip: accepting replies from local addresses (the VIP)", "sysctl", "net.ipv4.conf."+ifname+".accept_local=1")
		}
	}
	if err := errors.Join(errs...); err != nil {
		log.Error("via_vip: checks from the master will fail", "err", err)
	}
}

// interfaceToward names the interface the route to ip leaves by: the
// source address the kernel picks (a connected UDP socket sends nothing)
// is on it.
func interfaceToward(ip net.IP) (string, error) {
	c, err := net.DialUDP("udp", nil, &net.UDPAddr{IP: ip, Port: 9})
	if err != nil {
		return "", fmt.Errorf("route to %s: %w", ip, err)
	}
	src := c.LocalAddr().(*net.UDPAddr).IP
	c.Close()
	ifs, err := net.Interfaces()
	if err != nil {
		return "", fmt.Errorf("interfaces: %w", err)
	}
	for _, ifi := range ifs {
		addrs, _ := ifi.Addrs()
		for _, a := range addrs {
			if n, ok := a.(*net.IPNet); ok && n.IP.Equal(src) {
				return ifi.Name, nil
			}
		}
	}
	return "", fmt.Errorf("route to %s: source %s is on no interface", ip, src)
}
