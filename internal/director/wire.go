package director

import (
	"time"

	"github.com/lvsha/lvsha/conf"
	"github.com/lvsha/lvsha/internal/director/checker"
)

// healthTargets lists every real server that has a check, with the Spec
// conf built for it (shared by the real servers of a service without an
// override of their own), and for via_vip checks their mark.
func healthTargets(cfg *conf.Config, marks map[string]uint32) []checker.Target {
	var out []checker.Target
	for i := range cfg.Services {
		vs := &cfg.Services[i]
		for j := range vs.Reals {
			rs := &vs.Reals[j]
			if rs.Spec != nil {
				out = append(out, checker.Target{ID: rs.ID, Addr: vs.IPVS.Reals[j].Addr, Spec: rs.Spec, Group: vs.ID,
					Via: viaVia(vs, j, marks)})
			}
		}
	}
	return out
}

// backoff is the pause before restarting a part that failed, growing to a cap
// so a persistent failure neither spins nor goes silent.
func backoff(failures int) time.Duration {
	d := time.Second << min(failures, 5)
	return min(d, 30*time.Second)
}
