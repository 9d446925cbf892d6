// Package conf is lvsha's configuration: the TOML schema with its defaults,
// loading with every problem reported at once by file, line, column and key
// path, the semantic validation behind `lvsha -t`, and the difference between
// two configs that a reload applies.
package conf

import (
	"fmt"
	"net/netip"
	"reflect"
)

// Config is one lvsha.toml. The toml-tagged fields are what the file says
// (after defaults); the `toml:"-"` fields are filled by validation with the
// parsed forms, so users of a valid Config never parse strings again.
type Config struct {
	Global     Global          `toml:"global"`
	VRRP       []VRRPInstance  `toml:"vrrp_instance"`
	Services   []VirtualServer `toml:"virtual_server"`
	Realserver *Realserver     `toml:"realserver"`

	// File is the path the config was loaded from.
	File string `toml:"-"`
}

// Global holds daemon-wide settings.
type Global struct {
	RouterID      string `toml:"router_id"`      // a name for logs, like keepalived's router_id
	LogLevel      string `toml:"log_level"`      // debug, info, warn, error
	LogFormat     string `toml:"log_format"`     // text or json
	ControlSocket string `toml:"control_socket"` // unix socket that `lvsha status` asks
	MetricsListen string `toml:"metrics_listen"` // host:port for Prometheus; empty = off
	// IPVSRepairInterval is how often the kernel's IPVS table is re-read
	// and drift (someone ran ipvsadm -C) repaired.
	IPVSRepairInterval Duration `toml:"ipvs_repair_interval"`
	// RealtimePriority runs the daemon under SCHED_RR at this priority
	// (1-99; 0 = normal scheduling), like keepalived's vrrp_rt_priority: a
	// busy director otherwise wakes late for its adverts, and at short
	// intervals that is a false failover.
	RealtimePriority int `toml:"realtime_priority"`
}

// VRRPInstance is one virtual router.
type VRRPInstance struct {
	Name           string   `toml:"name"`
	Interface      string   `toml:"interface"`
	VRID           int      `toml:"virtual_router_id"`
	Priority       int      `toml:"priority"`
	AdvertInterval Duration `toml:"advert_interval"`
	Version        int      `toml:"version"`
	Preempt        bool     `toml:"preempt"`
	PreemptDelay   Duration `toml:"preempt_delay"`
	VIPs           []string `toml:"virtual_ipaddress"`
	UnicastSrc     string   `toml:"unicast_src_ip"`
	UnicastPeers   []string `toml:"unicast_peer"`
	AuthPass       string   `toml:"auth_pass"`
	// Checksum is the VRRPv3 checksum form sent: "keepalived" (over an IPv4
	// pseudo-header, what keepalived sends and expects by default) or "rfc"
	// (RFC 9568: the VRRP message only). Both are accepted on receive.
	Checksum     string           `toml:"checksum"`
	GARPRepeat   int              `toml:"garp_master_repeat"`
	GARPDelay    Duration         `toml:"garp_master_delay"`
	GARPRefresh  Duration         `toml:"garp_master_refresh"`
	GARPInterval Duration         `toml:"garp_interval"`
	Track        []TrackInterface `toml:"track_interface"`
	Notify       []string         `toml:"notify"`

	VIPPrefixes    []netip.Prefix `toml:"-"`
	UnicastSrcAddr netip.Addr     `toml:"-"`
	PeerAddrs      []netip.Addr   `toml:"-"`
}

// TrackInterface lowers (or raises) the priority by Weight while the
// interface is down; weight 0 puts the instance into FAULT instead.
type TrackInterface struct {
	Name   string `toml:"name"`
	Weight int    `toml:"weight"`
}

// VirtualServer is one IPVS virtual service and its real servers.
type VirtualServer struct {
	Address     string   `toml:"address"` // VIP:port; or set FWMark
	FWMark      int      `toml:"fwmark"`
	Protocol    string   `toml:"protocol"`
	Scheduler   string   `toml:"scheduler"`
	Forwarding  string   `toml:"forwarding"`
	Persistence Duration `toml:"persistence_timeout"`
	Quorum      int      `toml:"quorum"`
	SorryServer string   `toml:"sorry_server"`
	// OnFailure is what happens to a real server whose check fails:
	// "inhibit" sets its weight to 0 (established connections drain) or
	// "remove" deletes it from IPVS.
	OnFailure string       `toml:"on_failure"`
	Check     *Check       `toml:"check"`
	Reals     []RealServer `toml:"real_server"`

	Addr      netip.AddrPort `toml:"-"` // zero for a fwmark service
	SorryAddr netip.AddrPort `toml:"-"` // zero when none
}

// RealServer is one backend of a virtual service.
type RealServer struct {
	Address string `toml:"address"`
	Weight  int    `toml:"weight"`
	// CheckOverride holds the keys of this real server's [check] table; they
	// override the service's check key by key.
	CheckOverride *rawTable `toml:"check"`

	Addr netip.AddrPort `toml:"-"`
	// Check is the effective check (service check + override), nil = none:
	// the real server is always up, as in keepalived without a checker.
	// Without an override it is the service's own Check, shared: read-only.
	Check *Check `toml:"-"`
}

// Check is a health check.
type Check struct {
	Type          string        `toml:"type"` // http, https, tcp, exec
	Path          string        `toml:"path"`
	Method        string        `toml:"method"`
	Host          string        `toml:"host"`
	Status        []StatusRange `toml:"status"`
	BodyRegex     string        `toml:"body_regex"`
	MaxBody       int           `toml:"max_body"`
	TLSServerName string        `toml:"tls_server_name"`
	TLSSkipVerify bool          `toml:"tls_skip_verify"`
	TLSCAFile     string        `toml:"tls_ca_file"`
	Port          int           `toml:"port"`
	Argv          []string      `toml:"argv"`
	Interval      Duration      `toml:"interval"`
	Timeout       Duration      `toml:"timeout"`
	Rise          int           `toml:"rise"`
	Fall          int           `toml:"fall"`
	InitialState  string        `toml:"initial_state"` // up (keepalived's default) or down (keepalived's alpha)
}

// Realserver is the setup of an LVS-DR real server (`lvsha realserver`).
type Realserver struct {
	Interface string   `toml:"interface"`
	VIPs      []string `toml:"vips"`

	VIPAddrs []netip.Addr `toml:"-"`
}

// rawTable keeps a TOML table undecoded until its base is known.
type rawTable struct{ m map[string]any }

func (r *rawTable) decodeTOML(v any) error {
	m, ok := v.(map[string]any)
	if !ok {
		return fmt.Errorf("want a table, got %s", tomlType(v))
	}
	r.m = m
	return nil
}

// Defaults. Where they differ from keepalived's the reason is given.
const (
	DefaultConfigFile    = "/etc/lvsha/lvsha.toml"
	DefaultControlSocket = "/run/lvsha/lvsha.sock"
)

func defaultGlobal() Global {
	return Global{
		LogLevel:           "info",
		LogFormat:          "text",
		ControlSocket:      DefaultControlSocket,
		IPVSRepairInterval: Duration(10e9),
		// On by default, unlike keepalived: without it a busy director
		// fails over falsely at short advert intervals (see
		// internal/scenarios/benchfailover/RESULTS.md).
		RealtimePriority: 10,
	}
}

func defaultVRRP() VRRPInstance {
	return VRRPInstance{
		Priority:       100, // keepalived's default
		AdvertInterval: Duration(1e9),
		// keepalived defaults to v2; v3 is the current RFC and needs no
		// authentication field that RFC 5798 dropped anyway.
		Version:    3,
		Preempt:    true,
		Checksum:   "keepalived",
		GARPRepeat: 5,             // keepalived's garp_master_repeat
		GARPDelay:  Duration(5e9), // keepalived's garp_master_delay: a second burst 5 s after takeover
	}
}

func defaultService() VirtualServer {
	return VirtualServer{
		Protocol:  "tcp",
		Scheduler: "wlc", // ipvsadm's and keepalived's default
		// keepalived defaults to NAT; lvsha is built for direct routing,
		// which is also ipvsadm's default (-g).
		Forwarding: "dr",
		Quorum:     1,
		// keepalived removes a failed real server unless inhibit_on_failure;
		// inhibiting lets persistent and established connections drain.
		OnFailure: "inhibit",
	}
}

func defaultReal() RealServer { return RealServer{Weight: 1} }

func defaultCheck() Check {
	return Check{
		Method:  "GET",
		Path:    "/",
		Status:  []StatusRange{{200, 299}},
		MaxBody: 64 << 10,
		// keepalived's delay_loop defaults to 60 s, which leaves a dead server
		// in rotation for a minute; 5 s is what most keepalived configs set.
		Interval: Duration(5e9),
		// keepalived's connect_timeout is 5 s; a check must end before the
		// next one is due.
		Timeout: Duration(3e9),
		Rise:    1,
		// keepalived retries a failed check once (retry 1) before it marks
		// the server down: two failures in a row.
		Fall:         2,
		InitialState: "up",
	}
}

// elemDefaults seeds each new element of an array of tables before decoding.
var elemDefaults = map[reflect.Type]func(reflect.Value){
	reflect.TypeFor[VRRPInstance]():  func(v reflect.Value) { v.Set(reflect.ValueOf(defaultVRRP())) },
	reflect.TypeFor[VirtualServer](): func(v reflect.Value) { v.Set(reflect.ValueOf(defaultService())) },
	reflect.TypeFor[RealServer]():    func(v reflect.Value) { v.Set(reflect.ValueOf(defaultReal())) },
	reflect.TypeFor[Check]():         func(v reflect.Value) { v.Set(reflect.ValueOf(defaultCheck())) },
}
