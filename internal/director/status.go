package director

import (
	"context"
	"encoding/json"
	"net/http"
	"net/http/pprof"
	"strings"
	"time"

	"github.com/lvsha/lvsha/conf"
	"github.com/lvsha/lvsha/healthcheck"
	"github.com/lvsha/lvsha/internal/director/control"
	"github.com/lvsha/lvsha/lvs"
)

// checkerAnswerTimeout bounds what status and metrics wait for the
// checker process; it answers in milliseconds unless it is wedged.
const checkerAnswerTimeout = 2 * time.Second

func (d *Daemon) status(ctx context.Context) control.Status {
	d.mu.Lock()
	cfg, started, marks := d.cfg, d.started, d.marks
	d.mu.Unlock()
	st := control.Status{Version: d.opts.Version, Config: cfg.File, Started: started, VRRP: []control.VRRPStatus{}, Services: []control.ServiceStatus{}}
	for _, in := range cfg.VRRP {
		d.mu.Lock()
		r := d.vrrp[in.Name]
		d.mu.Unlock()
		if r != nil {
			st.VRRP = append(st.VRRP, r.status())
		}
	}
	hs := map[string]healthcheck.TargetState{}
	if !d.hc.Idle() {
		st.Checker = &control.CheckerStatus{Pid: d.hc.Pid(), Restarts: d.hc.Restarts()}
		// A wedged checker is replaced within seconds; status must not
		// hang on it meanwhile.
		sctx, cancel := context.WithTimeout(ctx, checkerAnswerTimeout)
		snap, err := d.hc.Snapshot(sctx)
		cancel()
		if err != nil {
			st.HealthError = err.Error()
		}
		for _, t := range snap {
			hs[t.ID] = t
		}
	}
	st.Sync = d.syncp.status()
	if d.bgpp != nil {
		st.BGP = d.bgpp.status(ctx)
	}
	st.Tracks, st.SyncGroups = d.trackStatus(cfg)
	st.ARPLeaks = arpLeakStatus(d.arp.snapshot(), cfg)
	health, failed := d.verdicts(cfg)
	var snap lvs.Snapshot
	ipvsOK := false
	snap, st.IPVSError, ipvsOK = d.ipvs.snapshot(ctx)
	for i := range cfg.Services {
		vs := &cfg.Services[i]
		ss := control.ServiceStatus{Key: vs.ID, Scheduler: vs.Scheduler, Forwarding: vs.Forwarding, Reals: []control.RealStatus{}}
		ks, inKernel := snap.Find(vs.IPVS.Key)
		ss.InKernel = ipvsOK && inKernel
		ss.QuorumLost = inKernel && ks.QuorumLost
		ss.Error = d.ipvs.serviceError(vs.IPVS.Key)
		for j := range vs.Reals {
			rs := &vs.Reals[j]
			addr := vs.IPVS.Reals[j].Addr
			r := control.RealStatus{Address: addr.String(), Weight: rs.Weight, KernelWeight: -1, Health: "unchecked",
				ViaMark: marks[rs.ID], FailedBy: failed[rs.ID]}
			if kd, ok := ks.Dest(addr); ok {
				r.KernelWeight, r.ActiveConns, r.InactiveConns = kd.Weight, kd.ActiveConns, kd.InactConns
			}
			// Health is the verdict IPVS follows (the checker client's,
			// down for an ARP leak under arp_leak = "fail": FailedBy); the
			// checker process adds the details.
			if up, ok := health[rs.ID]; ok {
				r.Health = "down"
				if up {
					r.Health = "up"
				}
			}
			if h, ok := hs[rs.ID]; ok {
				r.LastError, r.LastTransition, r.LastCheck, r.Checks = h.LastError, h.LastChange, h.LastCheck, h.Checks
				switch {
				case h.LastCheck.IsZero():
				case h.LastOK:
					r.LastResult = "ok"
				default:
					r.LastResult = h.LastError
				}
			}
			ss.Reals = append(ss.Reals, r)
		}
		st.Services = append(st.Services, ss)
	}
	return st
}

func (d *Daemon) controlHandler() http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("GET "+control.StatusPath, func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "application/json")
		enc := json.NewEncoder(w)
		enc.SetIndent("", "  ")
		_ = enc.Encode(d.status(r.Context()))
	})
	// Go's profiles, for diagnosing CPU or memory on a live director:
	// curl --unix-socket /run/lvsha/lvsha.sock http://lvsha/debug/pprof/heap
	// Only on the control socket, which only root can open.
	mux.HandleFunc("GET /debug/pprof/", pprof.Index)
	mux.HandleFunc("GET /debug/pprof/profile", pprof.Profile)
	return mux
}

// trackStatus reports the tracked files and scripts and the sync groups of
// cfg with their current values.
func (d *Daemon) trackStatus(cfg *conf.Config) ([]control.TrackStatus, []control.SyncGroupStatus) {
	files, scripts := d.tracks.snapshot()
	var ts []control.TrackStatus
	for _, f := range cfg.TrackFiles {
		ts = append(ts, control.TrackStatus{Kind: "file", Name: f.Name, What: f.Path, Value: files[f.Name], Weight: f.Weight})
	}
	for _, s := range cfg.TrackScripts {
		state := "unknown"
		if ok, known := scripts[s.Name]; known && ok {
			state = "succeeding"
		} else if known {
			state = "failing"
		}
		ts = append(ts, control.TrackStatus{Kind: "script", Name: s.Name, What: strings.Join(s.Argv, " "), State: state, Weight: s.Weight})
	}
	states := d.groups.snapshot()
	var gs []control.SyncGroupStatus
	for _, g := range cfg.SyncGroups {
		gs = append(gs, control.SyncGroupStatus{Name: g.Name, Instances: g.Instances, State: states[g.Name]})
	}
	return ts, gs
}
