// Package checker runs lvsha's health checks in a child process of the same
// binary, as keepalived runs its checkers apart from VRRP.
//
// The director's own process runs VRRP at real-time priority. Health checks
// are the bulk of its work (thousands of TCP connections a second), and at
// real-time priority they cost more CPU, while sharing Go's scheduler with
// VRRP makes adverts late under load. The child runs them at normal priority
// with one P; the parent keeps VRRP, IPVS and the control socket.
//
// Client (parent side) starts the child, restarts it if it dies or stops
// answering, and carries the targets to it, and transitions, state and
// statistics back. Serve (child side) runs a healthcheck.Manager. They speak
// JSON over a socket pair, each message framed by its length (frame.go).
package checker

import (
	"fmt"
	"net/netip"
	"time"

	"github.com/lvsha/lvsha/healthcheck"
)

// Target is a health check target with the group its statistics are
// summed under (the daemon uses the virtual service). Targets with the
// same check share one Spec, which nobody changes once handed over.
type Target struct {
	ID    string
	Addr  netip.AddrPort
	Spec  *healthcheck.Spec
	Group string
	Via   healthcheck.Via // zero: the real server is checked directly
}

// request goes from the parent to the child.
type request struct {
	ID uint64 `json:"id"`
	Op string `json:"op"` // update, snapshot, stats, ping
	// update: each distinct spec and group once, the targets refer to
	// them by index.
	Specs   []*healthcheck.Spec `json:"specs,omitempty"`
	Groups  []string            `json:"groups,omitempty"`
	Targets []wireTarget        `json:"targets,omitempty"`
}

// message goes from the child to the parent: a reply to request Reply, or
// (Reply 0) a transition.
type message struct {
	Reply      uint64                    `json:"reply,omitempty"`
	Err        string                    `json:"err,omitempty"`
	Snapshot   []healthcheck.TargetState `json:"snapshot,omitempty"`
	Stats      *Stats                    `json:"stats,omitempty"`
	Transition *healthcheck.Transition   `json:"transition,omitempty"`
}

type wireResume struct {
	Up    bool      `json:"up"`
	Since time.Time `json:"since,omitzero"`
}

type wireTarget struct {
	ID     string          `json:"id"`
	Group  int             `json:"group"` // index in request.Groups
	Addr   netip.AddrPort  `json:"addr"`
	Spec   int             `json:"spec"` // index in request.Specs
	Via    healthcheck.Via `json:"via,omitzero"`
	Resume *wireResume     `json:"resume,omitempty"`
}

// encodeUpdate builds an update request, each distinct Spec sent once;
// resume, if not nil, gives each target's starting state.
func encodeUpdate(targets []Target, resume func(id string) healthcheck.Resume) request {
	req := request{Op: "update", Targets: make([]wireTarget, len(targets))}
	index := map[*healthcheck.Spec]int{}
	groups := map[string]int{}
	for i, t := range targets {
		si, ok := index[t.Spec]
		if !ok {
			si = len(req.Specs)
			index[t.Spec] = si
			req.Specs = append(req.Specs, t.Spec)
		}
		gi, ok := groups[t.Group]
		if !ok {
			gi = len(req.Groups)
			groups[t.Group] = gi
			req.Groups = append(req.Groups, t.Group)
		}
		req.Targets[i] = wireTarget{ID: t.ID, Group: gi, Addr: t.Addr, Spec: si, Via: t.Via}
		if resume != nil {
			r := resume(t.ID)
			req.Targets[i].Resume = &wireResume{Up: r.Up, Since: r.Since}
		}
	}
	return req
}

// decodeUpdate turns an update request back into Manager targets and
// their groups by ID.
func decodeUpdate(req request) ([]healthcheck.Target, map[string]string, error) {
	specs := req.Specs
	ts := make([]healthcheck.Target, len(req.Targets))
	group := make(map[string]string, len(req.Targets))
	for i, wt := range req.Targets {
		if wt.Spec < 0 || wt.Spec >= len(specs) || specs[wt.Spec] == nil {
			return nil, nil, fmt.Errorf("target %s: spec %d of %d", wt.ID, wt.Spec, len(specs))
		}
		if wt.Group < 0 || wt.Group >= len(req.Groups) {
			return nil, nil, fmt.Errorf("target %s: group %d of %d", wt.ID, wt.Group, len(req.Groups))
		}
		ts[i] = healthcheck.Target{ID: wt.ID, Addr: wt.Addr, Spec: *specs[wt.Spec], Via: wt.Via}
		if r := wt.Resume; r != nil {
			ts[i].Resume = &healthcheck.Resume{Up: r.Up, Since: r.Since}
		}
		group[wt.ID] = req.Groups[wt.Group]
	}
	return ts, group, nil
}

// Buckets are the upper bounds, in seconds, of the check duration
// histograms.
var Buckets = []float64{.001, .0025, .005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10}

// Stats are the child's check statistics since it started.
type Stats struct {
	// Durations has one histogram per group.
	Durations map[string]*Histogram `json:"durations"`
	// Failures counts failed checks by target and failure class
	// (healthcheck.FailureClass: a fixed set, unlike the reason's text).
	Failures []Failure `json:"failures,omitempty"`
}

// Histogram counts durations in Buckets; Counts[i] is the number of checks
// that took at most Buckets[i] (cumulative, as Prometheus wants them).
type Histogram struct {
	Counts []uint64 `json:"counts"`
	Sum    float64  `json:"sum"`
	Count  uint64   `json:"count"`
}

// Failure is a count of failed checks of one target for one failure class.
type Failure struct {
	ID     string `json:"id"`
	Reason string `json:"reason"` // the class
	N      uint64 `json:"n"`
}
