package daemon

import (
	"context"
	"encoding/json"
	"fmt"
	"maps"
	"net"
	"net/http"
	"net/http/pprof"
	"time"

	"github.com/lvsha/lvsha/healthcheck"
	"github.com/lvsha/lvsha/lvs"
)

// Status is what `lvsha status --json` prints: a stable document.
type Status struct {
	Version  string          `json:"version"`
	Config   string          `json:"config"`
	Started  time.Time       `json:"started"`
	VRRP     []VRRPStatus    `json:"vrrp"`
	Services []ServiceStatus `json:"services"`
	// IPVSError says why the IPVS table could not be read or programmed.
	IPVSError string `json:"ipvs_error,omitempty"`
	// HealthError says why the checker process gave no details.
	HealthError string `json:"health_error,omitempty"`
	// Checker is the health checker process; absent when there is
	// nothing to check, and so no such process.
	Checker *CheckerStatus `json:"checker,omitempty"`
}

// checkerAnswerTimeout bounds what status and metrics wait for the
// checker process; it answers in milliseconds unless it is wedged.
const checkerAnswerTimeout = 2 * time.Second

// CheckerStatus is the health checker process.
type CheckerStatus struct {
	Pid      int    `json:"pid"` // 0 while it is being restarted
	Restarts uint64 `json:"restarts"`
}

// VRRPStatus is one VRRP instance.
type VRRPStatus struct {
	Name        string            `json:"name"`
	Interface   string            `json:"interface"`
	VRID        int               `json:"vrid"`
	State       string            `json:"state"`
	Priority    int               `json:"priority"`
	Master      string            `json:"master,omitempty"`
	Since       time.Time         `json:"since"`
	LastCause   string            `json:"last_cause,omitempty"`
	VIPs        []string          `json:"vips"`
	AdvertsOut  uint64            `json:"adverts_sent"`
	AdvertsIn   uint64            `json:"adverts_received"`
	Transitions uint64            `json:"transitions"`
	Dropped     map[string]uint64 `json:"dropped,omitempty"`
}

// ServiceStatus is one virtual service, like a block of `ipvsadm -ln`.
type ServiceStatus struct {
	Key        string       `json:"key"`
	Scheduler  string       `json:"scheduler"`
	Forwarding string       `json:"forwarding"`
	InKernel   bool         `json:"in_kernel"`
	QuorumLost bool         `json:"quorum_lost,omitempty"`
	Reals      []RealStatus `json:"reals"`
}

// RealStatus is one real server of a service.
type RealStatus struct {
	Address        string    `json:"address"`
	Weight         int       `json:"weight"`
	KernelWeight   int       `json:"kernel_weight"`
	ActiveConns    int       `json:"active_conns"`
	InactiveConns  int       `json:"inactive_conns"`
	Health         string    `json:"health"` // up, down, unchecked
	LastError      string    `json:"last_error,omitempty"`
	Checks         uint64    `json:"checks"`
	LastResult     string    `json:"last_result,omitempty"` // "ok" or why the last check failed
	LastCheck      time.Time `json:"last_check,omitzero"`
	LastTransition time.Time `json:"last_transition,omitzero"`
}

func (d *Daemon) status(ctx context.Context) Status {
	cfg := d.config()
	st := Status{Version: d.opts.Version, Config: cfg.File, Started: d.started, VRRP: []VRRPStatus{}, Services: []ServiceStatus{}}
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
		st.Checker = &CheckerStatus{Pid: d.hc.Pid(), Restarts: d.hc.Restarts()}
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
	d.mu.Lock()
	health := maps.Clone(d.health)
	d.mu.Unlock()
	var snap lvs.Snapshot
	ipvsOK := false
	if d.ipvs != nil {
		snap, st.IPVSError, ipvsOK = d.ipvs.snapshot(ctx)
	}
	for i := range cfg.Services {
		vs := &cfg.Services[i]
		ss := ServiceStatus{Key: vs.Key(), Scheduler: vs.Scheduler, Forwarding: vs.Forwarding, Reals: []RealStatus{}}
		ks, inKernel := snap.Find(serviceKey(vs))
		ss.InKernel = ipvsOK && inKernel
		ss.QuorumLost = inKernel && ks.QuorumLost
		for j := range vs.Reals {
			rs := &vs.Reals[j]
			r := RealStatus{Address: rs.Addr.String(), Weight: rs.Weight, KernelWeight: -1, Health: "unchecked"}
			if kd, ok := ks.Dest(rs.Addr); ok {
				r.KernelWeight, r.ActiveConns, r.InactiveConns = kd.Weight, kd.ActiveConns, kd.InactConns
			}
			// Health is the daemon's verdict, the one IPVS follows; the
			// checker process adds the details.
			if up, ok := health[realID(vs, rs)]; ok {
				r.Health = "down"
				if up {
					r.Health = "up"
				}
			}
			if h, ok := hs[realID(vs, rs)]; ok {
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
	mux.HandleFunc("GET /v1/status", func(w http.ResponseWriter, r *http.Request) {
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

// ErrNotRunning says no daemon answers on the control socket.
type ErrNotRunning struct {
	Socket string
	Err    error
}

func (e *ErrNotRunning) Error() string {
	return fmt.Sprintf("lvsha is not running (no answer on %s: %v)", e.Socket, e.Err)
}

func (e *ErrNotRunning) Unwrap() error { return e.Err }

// QueryStatus asks the daemon behind socket for its status.
func QueryStatus(ctx context.Context, socket string) (*Status, error) {
	c := &http.Client{Transport: &http.Transport{
		DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
			var d net.Dialer
			return d.DialContext(ctx, "unix", socket)
		},
	}}
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, "http://lvsha/v1/status", nil)
	if err != nil {
		return nil, fmt.Errorf("status request: %w", err)
	}
	resp, err := c.Do(req)
	if err != nil {
		return nil, &ErrNotRunning{Socket: socket, Err: err}
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return nil, fmt.Errorf("status: daemon answered %s", resp.Status)
	}
	var st Status
	if err := json.NewDecoder(resp.Body).Decode(&st); err != nil {
		return nil, fmt.Errorf("status: decode answer: %w", err)
	}
	return &st, nil
}
