package director

import (
	"fmt"
	"regexp"
	"time"

	"github.com/lvsha/lvsha/conf"
	"github.com/lvsha/lvsha/healthcheck"
	"github.com/lvsha/lvsha/internal/director/checker"
	"github.com/lvsha/lvsha/vrrp"
)

// vrrpConfig maps a validated config instance onto the vrrp package's.
func vrrpConfig(in conf.VRRPInstance) vrrp.Config {
	c := vrrp.Config{
		Name:           in.Name,
		Interface:      in.Interface,
		VRID:           uint8(in.VRID),
		Priority:       uint8(in.Priority),
		AdvertInterval: in.AdvertInterval.D(),
		Version:        in.Version,
		Preempt:        in.Preempt,
		PreemptDelay:   in.PreemptDelay.D(),
		VIPs:           in.VIPPrefixes,
		UnicastSrc:     in.UnicastSrcAddr,
		UnicastPeers:   in.PeerAddrs,
		AuthPass:       in.AuthPass,
		ChecksumMode:   vrrp.ChecksumPseudoHeader,
		GARPRepeat:     in.GARPRepeat,
		GARPDelay:      in.GARPDelay.D(),
		GARPRefresh:    in.GARPRefresh.D(),
		GARPInterval:   in.GARPInterval.D(),
		Notify:         in.Notify,
	}
	if in.Checksum == "rfc" {
		c.ChecksumMode = vrrp.ChecksumMessage
	}
	for _, t := range in.Track {
		c.Track = append(c.Track, vrrp.TrackInterface{Name: t.Name, Weight: t.Weight})
	}
	return c
}

// realID names a real server of a service, stable across reloads.
func realID(vs *conf.VirtualServer, rs *conf.RealServer) string {
	return vs.Key() + realIDSep + rs.Addr.String()
}

// realIDSep separates the service from the real server in a realID.
const realIDSep = " -> "

// healthSpec maps a config check onto the healthcheck package's.
func healthSpec(c *conf.Check) (healthcheck.Spec, error) {
	s := healthcheck.Spec{
		Type:          c.Type,
		Path:          c.Path,
		Method:        c.Method,
		Host:          c.Host,
		MaxBody:       int64(c.MaxBody),
		TLSServerName: c.TLSServerName,
		TLSSkipVerify: c.TLSSkipVerify,
		TLSCAFile:     c.TLSCAFile,
		Port:          uint16(c.Port),
		Argv:          c.Argv,
		Interval:      c.Interval.D(),
		Timeout:       c.Timeout.D(),
		Rise:          c.Rise,
		Fall:          c.Fall,
		InitialUp:     c.InitialState != "down",
	}
	for _, r := range c.Status {
		s.Status = append(s.Status, healthcheck.StatusRange{Lo: r.Lo, Hi: r.Hi})
	}
	if c.BodyRegex != "" {
		re, err := regexp.Compile(c.BodyRegex)
		if err != nil {
			return s, fmt.Errorf("body_regex: %w", err)
		}
		s.BodyRegex = re
	}
	return s, nil
}

// healthTargets lists every real server that has a check.
// Real servers sharing a config check share its Spec.
func healthTargets(cfg *conf.Config) ([]checker.Target, error) {
	var out []checker.Target
	specs := map[*conf.Check]*healthcheck.Spec{}
	for i := range cfg.Services {
		vs := &cfg.Services[i]
		group := vs.Key()
		for j := range vs.Reals {
			rs := &vs.Reals[j]
			if rs.Check == nil {
				continue
			}
			spec := specs[rs.Check]
			if spec == nil {
				s, err := healthSpec(rs.Check)
				if err != nil {
					return nil, fmt.Errorf("%s: %w", realID(vs, rs), err)
				}
				spec = &s
				specs[rs.Check] = spec
			}
			out = append(out, checker.Target{ID: realID(vs, rs), Addr: rs.Addr, Spec: spec, Group: group})
		}
	}
	return out, nil
}

// backoff is the pause before restarting a part that failed, growing to a cap
// so a persistent failure neither spins nor goes silent.
func backoff(failures int) time.Duration {
	d := time.Second << min(failures, 5)
	return min(d, 30*time.Second)
}
