// Package hcproc runs lvsha's health checks in a child process of the same
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
// newline-delimited JSON over a socket pair.
package hcproc

import (
	"fmt"
	"net/netip"
	"regexp"
	"time"

	"github.com/lvsha/lvsha/healthcheck"
)

// Target is a health check target with the group its statistics are
// summed under (the daemon uses the virtual service).
type Target struct {
	healthcheck.Target
	Group string
}

// request goes from the parent to the child.
type request struct {
	ID      uint64       `json:"id"`
	Op      string       `json:"op"` // update, snapshot, stats, ping
	Targets []wireTarget `json:"targets,omitempty"`
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

type wireTarget struct {
	ID     string         `json:"id"`
	Group  string         `json:"group,omitempty"`
	Addr   netip.AddrPort `json:"addr"`
	Spec   wireSpec       `json:"spec"`
	Resume *bool          `json:"resume,omitempty"`
}

// wireSpec is healthcheck.Spec with its regular expression as text.
type wireSpec struct {
	Type          string                    `json:"type"`
	Path          string                    `json:"path,omitempty"`
	Method        string                    `json:"method,omitempty"`
	Host          string                    `json:"host,omitempty"`
	Status        []healthcheck.StatusRange `json:"status,omitempty"`
	BodyRegex     *string                   `json:"body_regex,omitempty"`
	MaxBody       int64                     `json:"max_body,omitempty"`
	TLSServerName string                    `json:"tls_server_name,omitempty"`
	TLSSkipVerify bool                      `json:"tls_skip_verify,omitempty"`
	TLSCAFile     string                    `json:"tls_ca_file,omitempty"`
	Port          uint16                    `json:"port,omitempty"`
	Argv          []string                  `json:"argv,omitempty"`
	Interval      time.Duration             `json:"interval"`
	Timeout       time.Duration             `json:"timeout"`
	Rise          int                       `json:"rise"`
	Fall          int                       `json:"fall"`
	InitialUp     bool                      `json:"initial_up"`
}

func toWire(t Target, resume *bool) wireTarget {
	s := t.Spec
	ws := wireSpec{
		Type: s.Type, Path: s.Path, Method: s.Method, Host: s.Host, Status: s.Status, MaxBody: s.MaxBody,
		TLSServerName: s.TLSServerName, TLSSkipVerify: s.TLSSkipVerify, TLSCAFile: s.TLSCAFile, Port: s.Port,
		Argv: s.Argv, Interval: s.Interval, Timeout: s.Timeout, Rise: s.Rise, Fall: s.Fall, InitialUp: s.InitialUp,
	}
	if s.BodyRegex != nil {
		re := s.BodyRegex.String()
		ws.BodyRegex = &re
	}
	return wireTarget{ID: t.ID, Group: t.Group, Addr: t.Addr, Spec: ws, Resume: resume}
}

func fromWire(w wireTarget) (Target, error) {
	s := w.Spec
	spec := healthcheck.Spec{
		Type: s.Type, Path: s.Path, Method: s.Method, Host: s.Host, Status: s.Status, MaxBody: s.MaxBody,
		TLSServerName: s.TLSServerName, TLSSkipVerify: s.TLSSkipVerify, TLSCAFile: s.TLSCAFile, Port: s.Port,
		Argv: s.Argv, Interval: s.Interval, Timeout: s.Timeout, Rise: s.Rise, Fall: s.Fall, InitialUp: s.InitialUp,
	}
	if s.BodyRegex != nil {
		re, err := regexp.Compile(*s.BodyRegex)
		if err != nil {
			return Target{}, fmt.Errorf("target %s: body regex: %w", w.ID, err)
		}
		spec.BodyRegex = re
	}
	return Target{Target: healthcheck.Target{ID: w.ID, Addr: w.Addr, Spec: spec, Resume: w.Resume}, Group: w.Group}, nil
}

// Buckets are the upper bounds, in seconds, of the check duration
// histograms.
var Buckets = []float64{.001, .0025, .005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10}

// Stats are the child's check statistics since it started.
type Stats struct {
	// Durations has one histogram per group.
	Durations map[string]*Histogram `json:"durations"`
	// Failures counts failed checks by target and reason.
	Failures []Failure `json:"failures,omitempty"`
}

// Histogram counts durations in Buckets; Counts[i] is the number of checks
// that took at most Buckets[i] (cumulative, as Prometheus wants them).
type Histogram struct {
	Counts []uint64 `json:"counts"`
	Sum    float64  `json:"sum"`
	Count  uint64   `json:"count"`
}

// Failure is a count of failed checks of one target for one reason.
type Failure struct {
	ID     string `json:"id"`
	Reason string `json:"reason"`
	N      uint64 `json:"n"`
}
