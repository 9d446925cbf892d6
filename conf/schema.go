// Package conf is lvsha's configuration: the TOML schema with its defaults,
// loading with every problem reported at once by file, line, column and key
// path, and the semantic validation behind `lvsha -t`. It is the one step
// that turns the file into the values the libraries take (vrrp.Config,
// healthcheck.Spec, lvs.Service): they apply no defaults and check no
// config rules of their own.
package conf

import (
	"fmt"
	"net/netip"
	"reflect"
	"strings"
	"time"

	"github.com/lvsha/lvsha/healthcheck"
	"github.com/lvsha/lvsha/lvs"
	"github.com/lvsha/lvsha/lvs/realserver"
	"github.com/lvsha/lvsha/vrrp"
)

// Config is one lvsha.toml. The toml-tagged fields are what the file says
// (after defaults); the `toml:"-"` fields are filled by validation with the
// parsed forms and the runtime values, so users of a valid Config never
// parse strings again.
type Config struct {
	Global     Global          `toml:"global"`
	VRRP       []VRRPInstance  `toml:"vrrp_instance"`
	Services   []VirtualServer `toml:"virtual_server"`
	Realserver *Realserver     `toml:"realserver"`
	// Sync runs the kernel's IPVS connection sync daemons; nil = off.
	Sync *Sync `toml:"sync"`
	// BGP announces VIPs to routers (active-active directors); nil = off.
	BGP *BGP `toml:"bgp"`
	// TrackFiles and TrackScripts are what instances may follow besides
	// interfaces (vrrp_instance.track_file, .track_script name them).
	TrackFiles   []TrackFile   `toml:"track_file"`
	TrackScripts []TrackScript `toml:"track_script"`
	// SyncGroups are instances that fail over together.
	SyncGroups []SyncGroup `toml:"sync_group"`

	// File is the path the config was loaded from.
	File string `toml:"-"`
}

// Global holds daemon-wide settings.
type Global struct {
	RouterID      string `toml:"router_id"`      // a name for logs, like keepalived's router_id
	LogLevel      string `toml:"log_level"`      // debug, info, warn, error
	LogFormat     string `toml:"log_format"`     // text or json
	ControlSocket string `toml:"control_socket"` // unix socket that `lvsha status` asks
	// StateDir keeps what must outlive the process, even a crash and a
	// `systemctl restart` (which empties the RuntimeDirectory): the IPVS
	// services the daemon owns and the VIPs its instances hold.
	StateDir      string `toml:"state_dir"`
	MetricsListen string `toml:"metrics_listen"` // host:port for Prometheus; empty = off
	// IPVSRepairInterval is how often the kernel's IPVS table is re-read
	// and drift (someone ran ipvsadm -C) repaired.
	IPVSRepairInterval Duration `toml:"ipvs_repair_interval"`
	// RealtimePriority runs the daemon under SCHED_RR at this priority
	// (1-99; 0 = normal scheduling), like keepalived's vrrp_rt_priority: a
	// busy director otherwise wakes late for its adverts, and at short
	// intervals that is a false failover.
	RealtimePriority int `toml:"realtime_priority"`
	// NotifyCapabilities are the capabilities notify commands keep (of
	// CAP_NET_ADMIN and CAP_NET_RAW; none by default): a notify script
	// that changes routes needs CAP_NET_ADMIN. Exec checks keep none.
	NotifyCapabilities []string `toml:"notify_capabilities"`
	// NotifyCaps is NotifyCapabilities as a set, bit n for capability n.
	NotifyCaps uint64 `toml:"-"`
	// ViaVIPMarks is the firewall marks via_vip checks use, one per
	// checked real server: "BASE/BITS", the marks whose top BITS bits are
	// BASE's. No fwmark service of the file may use one.
	ViaVIPMarks string `toml:"via_vip_marks"`
	// ViaVIPMarkFirst and ViaVIPMarkCount are ViaVIPMarks as a range.
	ViaVIPMarkFirst uint32 `toml:"-"`
	ViaVIPMarkCount uint32 `toml:"-"`
	// ARPLeak is what the master does with a real server that answers ARP
	// (or neighbour solicitations) for a VIP it holds: "report" it, or
	// also "fail" it in every service, as a failed check would.
	ARPLeak string `toml:"arp_leak"`
	// ARPLeakFails is ARPLeak == "fail".
	ARPLeakFails bool `toml:"-"`
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
	// IPv4 only: an IPv6 advert's checksum always covers the IPv6
	// pseudo-header.
	Checksum     string           `toml:"checksum"`
	GARPRepeat   int              `toml:"garp_master_repeat"`
	GARPDelay    Duration         `toml:"garp_master_delay"`
	GARPRefresh  Duration         `toml:"garp_master_refresh"`
	GARPInterval Duration         `toml:"garp_interval"`
	Track        []TrackInterface `toml:"track_interface"`
	// TrackFile and TrackScript name [[track_file]] and [[track_script]]
	// entries whose weights move this instance's priority.
	TrackFile   []TrackRef `toml:"track_file"`
	TrackScript []TrackRef `toml:"track_script"`
	Notify      []string   `toml:"notify"`

	// Runtime is the instance as vrrp.New takes it.
	Runtime vrrp.Config `toml:"-"`
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
	OnFailure string `toml:"on_failure"`
	// MHFallback and MHPort are the mh scheduler's flags: a flow whose
	// real server has weight 0 goes to the next one, and the source port
	// is hashed too (ipvsadm's mh-fallback, mh-port).
	MHFallback bool         `toml:"mh_fallback"`
	MHPort     bool         `toml:"mh_port"`
	Check      *Check       `toml:"check"`
	Reals      []RealServer `toml:"real_server"`

	// ID names the service in status, metrics, logs and the checker's
	// statistics, the way ipvsadm does: "TCP 10.0.0.1:80" or "FWM 5".
	ID string `toml:"-"`
	// IPVS is the service as the IPVS reconciler takes it, Reals[i] being
	// Reals[i] of the file with its configured weight; the daemon sets
	// each one's Up from its health verdict.
	IPVS lvs.Service `toml:"-"`
}

// RealServer is one backend of a virtual service.
type RealServer struct {
	Address string `toml:"address"`
	Weight  int    `toml:"weight"`
	// CheckOverride holds the keys of this real server's [check] table; they
	// override the service's check key by key.
	CheckOverride *rawTable `toml:"check"`

	// ID names the real server of its service: RealServerID(service ID,
	// address), stable across reloads. Its parsed address and weight are
	// the service's IPVS.Reals entry of the same index.
	ID string `toml:"-"`
	// Spec is the effective check (service check + override), nil = none:
	// the real server is always up, as in keepalived without a checker.
	// Without an override it is the service's Spec, shared (10,000 copies
	// would cost megabytes): read-only.
	Spec *healthcheck.Spec `toml:"-"`
	// ViaVIP says Spec runs through the service's VIP (the check's via_vip).
	ViaVIP bool `toml:"-"`

	check *Check // the effective check as the file says it
}

// RealServerID names a real server of a service: "TCP 10.0.0.1:80 ->
// 10.0.1.1:80". Health transitions, status and metrics use it.
func RealServerID(serviceID, realAddr string) string { return serviceID + " -> " + realAddr }

// serviceID is VirtualServer.ID for a service key.
func serviceID(k lvs.Key) string {
	if k.FWMark != 0 {
		return fmt.Sprintf("FWM %d", k.FWMark)
	}
	return strings.ToUpper(k.Proto.String()) + " " + k.Addr.String()
}

// Check is a health check.
type Check struct {
	Type          string                    `toml:"type"` // http, https, tcp, exec
	Path          string                    `toml:"path"`
	Method        string                    `toml:"method"`
	Host          string                    `toml:"host"`
	Status        []healthcheck.StatusRange `toml:"status"`
	BodyRegex     string                    `toml:"body_regex"`
	MaxBody       int                       `toml:"max_body"`
	TLSServerName string                    `toml:"tls_server_name"`
	TLSSkipVerify bool                      `toml:"tls_skip_verify"`
	TLSCAFile     string                    `toml:"tls_ca_file"`
	Port          int                       `toml:"port"`
	Argv          []string                  `toml:"argv"`
	Interval      Duration                  `toml:"interval"`
	Timeout       Duration                  `toml:"timeout"`
	Rise          int                       `toml:"rise"`
	Fall          int                       `toml:"fall"`
	InitialState  string                    `toml:"initial_state"` // up (keepalived's default) or down (keepalived's alpha)
	// ViaVIP checks through the VIP with the director's own DR forwarding
	// (a firewall-mark IPVS service per real server), not the real
	// server's own address.
	ViaVIP bool `toml:"via_vip"`
}

// Realserver is the setup of an LVS-DR real server (`lvsha realserver`).
type Realserver struct {
	Interface string   `toml:"interface"`
	VIPs      []string `toml:"vips"`

	// Runtime is what `lvsha realserver` takes, checked by its own
	// Validate (the same rules as its --vip/--interface flags).
	Runtime realserver.Config `toml:"-"`
}

// Sync is IPVS connection synchronisation. One per director, not per VRRP
// instance: the kernel runs one master and one backup daemon per network
// namespace, whatever the number of instances.
type Sync struct {
	// Instance is the VRRP instance whose state the master daemon follows.
	Instance  string `toml:"instance"`
	Interface string `toml:"interface"` // default: the instance's
	SyncID    *int   `toml:"sync_id"`   // default: the instance's VRID
	MaxLen    int    `toml:"maxlen"`    // 0 = the kernel's (MTU less headers)
	Group     string `toml:"group"`
	Port      int    `toml:"port"`
	TTL       int    `toml:"ttl"`

	// Runtime is what both daemons are started with; the director sets
	// its State.
	Runtime lvs.SyncDaemon `toml:"-"`
}

// BGP is the announcement of VIPs over BGP: each VIP of Announce is held
// on Interface and announced as a /32 (/128) with next-hop self while the
// director can serve it.
type BGP struct {
	ASN      int64  `toml:"asn"`
	RouterID string `toml:"router_id"`
	// ListenPort is where routers may connect to us; 0 = connect out only.
	ListenPort int      `toml:"listen_port"`
	Announce   []string `toml:"announce"`  // VIPs, each an address of a virtual_server
	Interface  string   `toml:"interface"` // where the VIPs are held
	// DrainTime is how long a stopping director keeps serving after its
	// withdrawals went out, so the routers move the flows first.
	DrainTime Duration `toml:"drain_time"`
	// SloppyTCP sets net.ipv4.vs.sloppy_tcp=1 at start: IPVS then
	// schedules a TCP flow from any packet, not only a SYN, so a flow
	// that ECMP moves to this director is served instead of reset.
	SloppyTCP bool          `toml:"sloppy_tcp"`
	Neighbors []BGPNeighbor `toml:"neighbor"`

	// The parsed forms.
	RouterIDAddr netip.Addr     `toml:"-"`
	VIPs         []netip.Prefix `toml:"-"` // Announce as /32 and /128
}

// BGPNeighbor is one router the director peers with.
type BGPNeighbor struct {
	Address  string `toml:"address"`
	ASN      int64  `toml:"asn"`
	Password string `toml:"password"` // TCP MD5 (RFC 2385); empty = none
	// HoldTime is proposed in the OPEN; the session uses the smaller of
	// both sides'. Keepalives go every third of it.
	HoldTime     Duration `toml:"hold_time"`
	ConnectRetry Duration `toml:"connect_retry"`
	Port         int      `toml:"port"`

	Addr netip.Addr `toml:"-"`
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
	// DefaultStateDir is the packaged unit's StateDirectory=lvsha.
	DefaultStateDir = "/var/lib/lvsha"
	// notifyTimeout bounds a notify command; it is not a key of the file.
	notifyTimeout = 10 * time.Second
)

func defaultGlobal() Global {
	return Global{
		LogLevel:           "info",
		LogFormat:          "text",
		ControlSocket:      DefaultControlSocket,
		StateDir:           DefaultStateDir,
		IPVSRepairInterval: Duration(10e9),
		// On by default, unlike keepalived: without it a busy director
		// fails over falsely at short advert intervals (see
		// internal/scenarios/benchfailover/RESULTS.md).
		RealtimePriority: 10,
		// "LV" in the top half: far from the small marks people give
		// their own fwmark services and iptables rules.
		ViaVIPMarks: "0x4c560000/16",
		// Report only: taking a server out does not undo the leak (the
		// hosts that cached its MAC keep going to it), and a wrong match
		// would take a healthy server out (README, ARP-leak detection).
		ARPLeak: "report",
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

// The kernel's own defaults (ip_vs_sync.c), written out so that status
// shows them and the comparison with a running daemon is exact.
func defaultSync() Sync {
	return Sync{Group: "224.0.0.81", Port: 8848, TTL: 1}
}

func defaultBGP() BGP {
	return BGP{
		ListenPort: 179,
		Interface:  "lo",
		// Long enough for the routers to install the withdrawal and for
		// requests in flight to finish; short next to systemd's 90 s stop.
		DrainTime: Duration(5e9),
		SloppyTCP: true,
	}
}

func defaultBGPNeighbor() BGPNeighbor {
	return BGPNeighbor{
		// RFC 4271 suggests 90 s, which leaves a crashed director's route
		// in place for a minute and a half; 9 s (keepalive 3 s) is the
		// usual data-centre setting (FRR's "datacenter" profile).
		HoldTime: Duration(9e9),
		// GoBGP's and FRR's 120 s would keep a director out for two
		// minutes after a router restart.
		ConnectRetry: Duration(5e9),
		Port:         179,
	}
}

func defaultReal() RealServer { return RealServer{Weight: 1} }

func defaultCheck() Check {
	return Check{
		Method:  "GET",
		Path:    "/",
		Status:  []healthcheck.StatusRange{{Lo: 200, Hi: 299}},
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
	reflect.TypeFor[Sync]():          func(v reflect.Value) { v.Set(reflect.ValueOf(defaultSync())) },
	reflect.TypeFor[BGP]():           func(v reflect.Value) { v.Set(reflect.ValueOf(defaultBGP())) },
	reflect.TypeFor[BGPNeighbor]():   func(v reflect.Value) { v.Set(reflect.ValueOf(defaultBGPNeighbor())) },
	reflect.TypeFor[TrackFile]():     func(v reflect.Value) { v.Set(reflect.ValueOf(defaultTrackFile())) },
	reflect.TypeFor[TrackScript]():   func(v reflect.Value) { v.Set(reflect.ValueOf(defaultTrackScript())) },
}

// choice is a key whose value is one of a few names, each standing for a
// runtime value.
type choice[T any] []struct {
	name string
	val  T
}

func (c choice[T]) lookup(s string) (T, bool) {
	for _, e := range c {
		if e.name == s {
			return e.val, true
		}
	}
	var zero T
	return zero, false
}

// names lists the accepted names for a message: "tcp, udp".
func (c choice[T]) names() string {
	n := make([]string, len(c))
	for i, e := range c {
		n[i] = e.name
	}
	return strings.Join(n, ", ")
}

var (
	protocols     = choice[lvs.Proto]{{"tcp", lvs.TCP}, {"udp", lvs.UDP}}
	forwardings   = choice[lvs.Forwarding]{{"dr", lvs.DR}, {"nat", lvs.NAT}, {"tun", lvs.Tunnel}}
	onFailures    = choice[lvs.OnFailure]{{"inhibit", lvs.Inhibit}, {"remove", lvs.Remove}}
	checksumModes = choice[vrrp.ChecksumMode]{{"keepalived", vrrp.ChecksumPseudoHeader}, {"rfc", vrrp.ChecksumMessage}}
	initialStates = choice[bool]{{"up", true}, {"down", false}}
	arpLeakModes  = choice[bool]{{"report", false}, {"fail", true}}
)
