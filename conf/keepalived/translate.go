package keepalived

import (
	"fmt"
	"math"
	"sort"
	"strconv"
	"strings"
	"time"

	"github.com/lvsha/lvsha/conf"
)

// keepalived 2.2.7's defaults, written out in the output wherever lvsha's
// differ or might: each one from keepalived's source.
const (
	kaVersion        = 2               // global_data.c: vrrp_version
	kaPriority       = 100             // VRRP_PRIO_DFL
	kaAdvertInterval = time.Second     // VRRP_ADVER_DFL
	kaGARPRepeat     = 5               // VRRP_GARP_REP
	kaGARPDelay      = 5 * time.Second // VRRP_GARP_DELAY
	kaGARPRefreshRep = 1               // VRRP_GARP_REFRESH_REP
	kaScheduler      = "wlc"           // IPVS_DEF_SCHED
	kaProtocol       = "udp"           // check_data.c: "no protocol set - defaulting to UDP"
	kaForwarding     = "nat"           // check_data.c: "no forwarding method set, setting default NAT"
	kaDelayLoop      = 60 * time.Second
	kaConnectTimeout = 5 * time.Second
	kaRetry          = 1                 // checker default_retry; MISC_CHECK's is 0
	kaPersistence    = 360 * time.Second // IPVS_SVC_PERSISTENT_TIMEOUT: persistence_timeout without a value
	kaMaxAuthPass    = 8
)

// Result is a translated config.
type Result struct {
	TOML     []byte
	Warnings []Warning
	// Invalid lists what lvsha's own validation refuses in TOML: a config
	// keepalived refuses too (a VRID used twice on one interface), or a
	// bug of the translation.
	Invalid []string
}

// Translate turns a parsed keepalived config into lvsha's TOML. file names
// the input in the output's header.
func Translate(file string, root *Node) *Result {
	t := &translator{}
	t.run(root)
	head := fmt.Sprintf("# lvsha configuration translated by `lvsha import` from %s.\n"+
		"# keepalived's effective values are written out, its defaults included: several differ from lvsha's.\n", file)
	sortWarnings(root, t.warnings)
	out := render(head, t.secs)
	res := &Result{TOML: out, Warnings: t.warnings}
	if _, _, err := conf.Parse("import.toml", out); err != nil {
		res.Invalid = append(res.Invalid, err.Error())
	}
	return res
}

type translator struct {
	secs     []*section
	warnings []Warning
	global   *section
	// vrrp defaults of global_defs
	version     int
	garpRepeat  int
	garpDelay   time.Duration
	garpRefresh time.Duration
	garpIntvl   time.Duration
	refreshRep  int
	// [global]: the last value of each keyword wins, as in keepalived.
	routerID *string
	rtPrio   *int
	// synced are the instances of vrrp_sync_groups: keepalived ignores
	// their tracked interfaces' weights.
	synced map[string]bool
	// defs are the vrrp_scripts and track_files, by kind and name.
	defs map[string]*trackDef
}

func (t *translator) warn(n *Node, format string, args ...any) {
	t.warnings = append(t.warnings, Warning{File: n.File, Line: n.Line, Msg: fmt.Sprintf(format, args...)})
}

// dropped warns about a keyword that has no lvsha equivalent.
func (t *translator) dropped(n *Node, what string) {
	msg := "no lvsha equivalent: left out"
	if reason, ok := noEquivalent[n.Name]; ok {
		msg = reason
	}
	if what != "" {
		t.warn(n, "%s %s: %s", what, n.Name, msg)
	} else {
		t.warn(n, "%s: %s", n.Name, msg)
	}
}

// noEquivalent names, for the keywords the issue lists, what lvsha lacks.
var noEquivalent = map[string]string{
	"virtual_server_group":    "virtual server groups have no lvsha equivalent yet: left out",
	"static_ipaddress":        "static addresses are not lvsha's: left out",
	"static_routes":           "static routes have no lvsha equivalent: left out",
	"static_rules":            "static rules have no lvsha equivalent: left out",
	"virtual_routes":          "virtual routes have no lvsha equivalent: left out",
	"virtual_rules":           "virtual rules have no lvsha equivalent: left out",
	"use_vmac":                "VMAC interfaces have no lvsha equivalent: the VIPs stay on the interface with its own MAC",
	"vmac_xmit_base":          "VMAC interfaces have no lvsha equivalent: left out",
	"use_vmac_addr":           "VMAC interfaces have no lvsha equivalent: left out",
	"use_ipvlan":              "ipvlan interfaces have no lvsha equivalent: left out",
	"SMTP_CHECK":              "SMTP checks have no lvsha equivalent: left out (the real server is always up unless another check says otherwise)",
	"DNS_CHECK":               "DNS checks have no lvsha equivalent: left out",
	"UDP_CHECK":               "UDP checks have no lvsha equivalent: left out",
	"PING_CHECK":              "PING checks have no lvsha equivalent: left out",
	"FILE_CHECK":              "FILE checks have no lvsha equivalent: left out",
	"BFD_CHECK":               "BFD checks have no lvsha equivalent: left out",
	"digest":                  "digest checks have no lvsha equivalent: the body is not compared",
	"enable_snmp_vrrp":        "SNMP has no lvsha equivalent (lvsha exports Prometheus metrics: global.metrics_listen)",
	"enable_snmp_keepalived":  "SNMP has no lvsha equivalent (lvsha exports Prometheus metrics: global.metrics_listen)",
	"enable_snmp_checker":     "SNMP has no lvsha equivalent (lvsha exports Prometheus metrics: global.metrics_listen)",
	"enable_snmp_rfc":         "SNMP has no lvsha equivalent (lvsha exports Prometheus metrics: global.metrics_listen)",
	"enable_snmp_rfcv2":       "SNMP has no lvsha equivalent (lvsha exports Prometheus metrics: global.metrics_listen)",
	"enable_snmp_rfcv3":       "SNMP has no lvsha equivalent (lvsha exports Prometheus metrics: global.metrics_listen)",
	"snmp_socket":             "SNMP has no lvsha equivalent: left out",
	"snmp_name":               "SNMP has no lvsha equivalent: left out",
	"notify_fifo":             "notify fifos have no lvsha equivalent (use notify): left out",
	"notify_fifo_script":      "notify fifos have no lvsha equivalent (use notify): left out",
	"vrrp_notify_fifo":        "notify fifos have no lvsha equivalent (use notify): left out",
	"vrrp_notify_fifo_script": "notify fifos have no lvsha equivalent (use notify): left out",
	"lvs_notify_fifo":         "notify fifos have no lvsha equivalent: left out",
	"lvs_notify_fifo_script":  "notify fifos have no lvsha equivalent: left out",
	"notify_master":           "per-state notify scripts have no lvsha equivalent (notify runs one command on every change, with the new state as an argument): left out",
	"notify_backup":           "per-state notify scripts have no lvsha equivalent (notify runs one command on every change, with the new state as an argument): left out",
	"notify_fault":            "per-state notify scripts have no lvsha equivalent (notify runs one command on every change, with the new state as an argument): left out",
	"notify_stop":             "per-state notify scripts have no lvsha equivalent (notify runs one command on every change, with the new state as an argument): left out",
	"notify_deleted":          "per-state notify scripts have no lvsha equivalent: left out",
	"notify_up":               "real server notify scripts have no lvsha equivalent: left out",
	"notify_down":             "real server notify scripts have no lvsha equivalent: left out",
	"smtp_alert":              "SMTP alerts have no lvsha equivalent: left out",
	"delay_before_retry":      "lvsha retries a failed check after the check interval, not after a delay of its own: left out",
	"track_process":           "tracked processes have no lvsha equivalent yet: left out",
	"track_bfd":               "BFD has no lvsha equivalent: left out",
}

func (t *translator) run(root *Node) {
	t.version = kaVersion
	t.garpRepeat = kaGARPRepeat
	t.garpDelay = kaGARPDelay
	t.refreshRep = kaGARPRefreshRep
	t.global = &section{header: "[global]"}
	t.secs = append(t.secs, t.global)
	// global_defs applies to every instance wherever it stands.
	t.synced = map[string]bool{}
	for _, n := range root.Children {
		switch n.Name {
		case "global_defs":
			t.globalDefs(n)
		case "vrrp_sync_group":
			for _, g := range n.Children {
				if g.Name == "group" {
					for _, m := range g.Children {
						t.synced[m.Name] = true
					}
				}
			}
		}
	}
	t.scanTracks(root)
	for _, n := range root.Children {
		switch n.Name {
		case "global_defs":
		case "vrrp_instance":
			t.instance(n)
		case "vrrp_script":
			t.emitDef(n, "track_script")
		case "track_file", "vrrp_track_file":
			t.emitDef(n, "track_file")
		case "vrrp_sync_group":
			t.syncGroup(n)
		case "virtual_server":
			t.virtualServer(n)
		default:
			t.dropped(n, "")
		}
	}
	if t.routerID != nil {
		t.global.str("router_id", *t.routerID)
	}
	if t.rtPrio != nil {
		t.global.num("realtime_priority", *t.rtPrio)
	}
	if len(t.global.lines) == 0 {
		t.global.header = ""
	}
}

func (t *translator) globalDefs(g *Node) {
	if t.global.comment == "" {
		t.global.comment = g.Pos() + ": global_defs"
	}
	for _, n := range g.Children {
		switch n.Name {
		case "router_id":
			if s, ok := t.arg(n); ok {
				t.routerID = &s
			}
		case "vrrp_version":
			if v, ok := t.intArg(n, 2, 3); ok {
				t.version = v
			}
		case "vrrp_garp_master_repeat":
			if v, ok := t.intArg(n, 0, math.MaxInt32); ok {
				t.garpRepeat = max(v, 1) // keepalived sets 0 to 1
			}
		case "vrrp_garp_master_delay":
			if v, ok := t.intArg(n, 0, math.MaxInt32); ok {
				t.garpDelay = time.Duration(v) * time.Second
			}
		case "vrrp_garp_master_refresh":
			if v, ok := t.intArg(n, 0, math.MaxInt32); ok {
				t.garpRefresh = time.Duration(v) * time.Second
			}
		case "vrrp_garp_master_refresh_repeat":
			if v, ok := t.intArg(n, 1, math.MaxInt32); ok {
				t.refreshRep = v
			}
		case "vrrp_garp_interval":
			if d, ok := t.timer(n); ok {
				t.garpIntvl = d
			}
		case "vrrp_rt_priority":
			if v, ok := t.intArg(n, 1, 99); ok {
				t.rtPrio = &v
			}
		default:
			t.dropped(n, "global_defs")
		}
	}
}

// arg is a keyword's single argument.
func (t *translator) arg(n *Node) (string, bool) {
	if len(n.Args) == 0 {
		t.warn(n, "%s: missing its value: left out", n.Name)
		return "", false
	}
	if len(n.Args) > 1 {
		t.warn(n, "%s: extra words %q left out", n.Name, strings.Join(n.Args[1:], " "))
	}
	return n.Args[0], true
}

func (t *translator) intArg(n *Node, lo, hi int) (int, bool) {
	s, ok := t.arg(n)
	if !ok {
		return 0, false
	}
	v, err := strconv.Atoi(s)
	if err != nil || v < lo || v > hi {
		t.warn(n, "%s: %q is not a number in %d-%d: left out", n.Name, s, lo, hi)
		return 0, false
	}
	return v, true
}

// timer reads a keepalived TIMER: seconds with up to 6 decimals.
func (t *translator) timer(n *Node) (time.Duration, bool) {
	s, ok := t.arg(n)
	if !ok {
		return 0, false
	}
	d, err := parseTimer(s)
	if err != nil {
		t.warn(n, "%s: %v: left out", n.Name, err)
		return 0, false
	}
	return d, true
}

// parseTimer reads keepalived's TIMER form (read_timer): a non-negative
// decimal number of seconds, microseconds at most; more decimals are
// rounded as keepalived rounds them.
func parseTimer(s string) (time.Duration, error) {
	whole, frac, hasDot := strings.Cut(s, ".")
	if whole == "" && !hasDot || strings.HasPrefix(s, "-") || strings.HasPrefix(s, "+") {
		return 0, fmt.Errorf("%q is not a number of seconds", s)
	}
	for _, c := range whole + frac {
		if c < '0' || c > '9' {
			return 0, fmt.Errorf("%q is not a number of seconds", s)
		}
	}
	roundUp := false
	if len(frac) > 6 {
		roundUp = frac[6] >= '5'
		frac = frac[:6]
	}
	frac += strings.Repeat("0", 6-len(frac))
	us, err := strconv.ParseUint(whole+frac, 10, 63)
	if err != nil || us > math.MaxInt64/1000 {
		return 0, fmt.Errorf("%q is out of range", s)
	}
	if roundUp {
		us++
	}
	return time.Duration(us) * time.Microsecond, nil
}

// parseBool reads keepalived's BOOL (check_true_false).
func parseBool(s string) (bool, bool) {
	switch s {
	case "true", "on", "yes":
		return true, true
	case "false", "off", "no":
		return false, true
	}
	return false, false
}

// optBool is a flag keyword with an optional BOOL: "inhibit_on_failure" or
// "inhibit_on_failure false".
func (t *translator) optBool(n *Node) (bool, bool) {
	if len(n.Args) == 0 {
		return true, true
	}
	b, ok := parseBool(n.Args[0])
	if !ok {
		t.warn(n, "%s: %q is not one of true/on/yes, false/off/no: left out", n.Name, n.Args[0])
	}
	return b, ok
}

// scriptArgv reads a script keyword's command as keepalived does: the raw
// line re-split with quotes and escapes, its second word split again; a
// third word is the user (and group) to run it as.
func scriptArgv(n *Node) (argv []string, user string, err error) {
	w, err := quotedWords(n.Raw)
	if err != nil {
		return nil, "", err
	}
	if len(w) < 2 {
		return nil, "", fmt.Errorf("no command")
	}
	argv, err = quotedWords(w[1])
	if err != nil {
		return nil, "", err
	}
	if len(argv) == 0 {
		return nil, "", fmt.Errorf("no command")
	}
	return argv, strings.Join(w[2:], " "), nil
}

// sortWarnings puts warnings in the order of the input: by file, in the
// order the files were read, then by line.
func sortWarnings(root *Node, ws []Warning) {
	order := map[string]int{}
	var walk func(n *Node)
	walk = func(n *Node) {
		if _, ok := order[n.File]; !ok {
			order[n.File] = len(order)
		}
		for _, c := range n.Children {
			walk(c)
		}
	}
	walk(root)
	sort.SliceStable(ws, func(i, j int) bool {
		a, b := ws[i], ws[j]
		if order[a.File] != order[b.File] {
			return order[a.File] < order[b.File]
		}
		return a.Line < b.Line
	})
}
