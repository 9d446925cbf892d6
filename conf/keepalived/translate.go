package keepalived

import (
	"fmt"
	"math"
	"net/netip"
	"path/filepath"
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

type track struct {
	name   string
	weight int
}

func (t *translator) instance(in *Node) {
	s := &section{header: "[[vrrp_instance]]", comment: in.Pos() + ": vrrp_instance " + strings.Join(in.Args, " ")}
	name := ""
	if len(in.Args) > 0 {
		name = in.Args[0]
	}
	var (
		iface, src, auth string
		vrid             int
		prio             = kaPriority
		advert           = kaAdvertInterval
		advertNode       *Node
		version          = t.version
		preempt          = true
		preemptDelay     time.Duration
		vips, peers      []string
		tracks           []track
		scripts, files   []string
		notify           []string
		garpRepeat       = t.garpRepeat
		garpDelay        = t.garpDelay
		garpRefresh      = t.garpRefresh
		refreshRep       = t.refreshRep
		refreshNode      *Node
		authNode         *Node
		vipNodes         []*Node
		srcNode          *Node
		peerNodes        []*Node
	)
	for _, n := range in.Children {
		switch n.Name {
		case "interface":
			iface, _ = t.arg(n)
		case "virtual_router_id":
			vrid, _ = t.intArg(n, 1, 255)
		case "priority":
			if v, ok := t.intArg(n, 1, 255); ok {
				prio = v
			}
		case "advert_int":
			d, ok := t.timer(n)
			switch {
			case !ok:
			case d < 10*time.Millisecond || d > 255*time.Second:
				t.warn(n, "advert_int %s is outside 0.01-255 s: keepalived ignores it, and so does the import", n.Args[0])
			default:
				advert, advertNode = d, n
			}
		case "version":
			if v, ok := t.intArg(n, 2, 3); ok {
				version = v
			}
		case "nopreempt":
			preempt = false
		case "preempt":
			preempt = true
		case "preempt_delay":
			d, ok := t.timer(n)
			switch {
			case !ok:
			case d > 1000*time.Second: // TIMER_MAX_SEC
				t.warn(n, "preempt_delay %s is above 1000 s: keepalived sets 0, and so does the import", n.Args[0])
				preemptDelay = 0
			default:
				preemptDelay = d
			}
		case "state":
			if len(n.Args) > 0 && n.Args[0] == "MASTER" {
				t.warn(n, "state MASTER: lvsha starts every instance as BACKUP and the election decides (the higher priority wins within Master_Down_Interval)")
			}
		case "virtual_ipaddress":
			vipNodes = append(vipNodes, n)
		case "unicast_src_ip":
			if a, ok := t.arg(n); ok {
				if t.ipAddr(n, a) {
					src, srcNode = a, n
				}
			}
		case "unicast_peer":
			for _, p := range n.Children {
				if len(p.Args) > 0 {
					t.warn(p, "unicast_peer %s: options %q left out", p.Name, strings.Join(p.Args, " "))
				}
				if t.ipAddr(p, p.Name) {
					peers, peerNodes = append(peers, p.Name), append(peerNodes, p)
				}
			}
		case "authentication":
			authNode = n
			for _, a := range n.Children {
				switch a.Name {
				case "auth_type":
					if v, ok := t.arg(a); ok && v != "PASS" {
						t.warn(a, "auth_type %s: only PASS has an lvsha equivalent: authentication left out", v)
						authNode = nil
					}
				case "auth_pass":
					if v, ok := t.arg(a); ok {
						if len(v) > kaMaxAuthPass {
							t.warn(a, "auth_pass: keepalived uses only its first %d characters, and so does the output", kaMaxAuthPass)
							v = v[:kaMaxAuthPass]
						}
						auth = v
					}
				default:
					t.dropped(a, "authentication")
				}
			}
		case "track_interface":
			for _, ti := range n.Children {
				if tr, ok := t.trackInterface(ti); ok {
					if tr.weight != 0 && t.synced[name] {
						t.warn(ti, "track_interface %s: keepalived ignores the weight of an instance in a sync group (FAULT while down), and so does the import", tr.name)
						tr.weight = 0
					}
					tracks = append(tracks, tr)
				}
			}
		case "track_script":
			scripts = append(scripts, t.trackRefs(name, n)...)
		case "track_file":
			files = append(files, t.trackRefs(name, n)...)
		case "notify":
			argv, user, err := scriptArgv(n)
			if err != nil {
				t.warn(n, "notify: %v: left out", err)
				continue
			}
			if user != "" {
				t.warn(n, "notify: runs as user %q in keepalived; lvsha runs it as its own user", user)
			}
			if !filepath.IsAbs(argv[0]) {
				t.warn(n, "notify: %q is not an absolute path (lvsha runs it without a PATH search): left out", argv[0])
				continue
			}
			// keepalived appends "INSTANCE", the name, the state and the
			// priority; lvsha appends the last three.
			notify = append(argv, "INSTANCE")
		case "garp_master_repeat":
			if v, ok := t.intArg(n, 0, 100); ok {
				garpRepeat = max(v, 1)
			}
		case "garp_master_delay":
			if v, ok := t.intArg(n, 0, math.MaxInt32); ok {
				garpDelay = time.Duration(v) * time.Second
			}
		case "garp_master_refresh":
			if v, ok := t.intArg(n, 0, math.MaxInt32); ok {
				garpRefresh, refreshNode = time.Duration(v)*time.Second, n
			}
		case "garp_master_refresh_repeat":
			if v, ok := t.intArg(n, 1, math.MaxInt32); ok {
				refreshRep = v
			}
		default:
			t.dropped(n, "vrrp_instance "+name+":")
		}
	}
	var vipFrom []*Node
	for _, n := range vipNodes {
		vs, from := t.vips(n, iface)
		vips, vipFrom = append(vips, vs...), append(vipFrom, from...)
	}
	vips = t.oneFamily("virtual_ipaddress", vips, vipFrom)
	if len(vips) == 0 {
		t.warn(in, "vrrp_instance %s has no virtual address lvsha can hold: instance left out", name)
		return
	}
	v6 := strings.Contains(vips[0], ":")
	if src != "" && strings.Contains(src, ":") != v6 {
		t.warn(srcNode, "unicast_src_ip %s: not of the instance's address family: left out", src)
		src = ""
	}
	if len(peers) > 0 {
		// The VIPs' family first, so that it decides.
		withVIP := append([]string{vips[0]}, peers...)
		peers = t.oneFamily("unicast_peer", withVIP, append([]*Node{nil}, peerNodes...))[1:]
	}
	if v6 && version == 2 {
		t.warn(in, "vrrp_instance %s: VRRPv2 cannot carry IPv6: keepalived runs it as version 3, and so does the import", name)
		version = 3
	}
	if authNode != nil && auth != "" && version == 3 {
		t.warn(authNode, "authentication: VRRPv3 has none (keepalived ignores it with version 3): left out")
		auth = ""
	}
	switch version {
	case 2:
		if r := advert.Round(time.Second); r != advert || r < time.Second || r > 255*time.Second {
			r = min(max(r, time.Second), 255*time.Second)
			t.warn(advertNode, "advert_int %s: VRRPv2 carries whole seconds: %s", advert, r)
			advert = r
		}
	case 3:
		if r := advert.Round(10 * time.Millisecond); r != advert || r < 10*time.Millisecond || r > 40950*time.Millisecond {
			r = min(max(r, 10*time.Millisecond), 40950*time.Millisecond)
			t.warn(advertNode, "advert_int %s: VRRPv3 carries centiseconds up to 40.95s: %s", advert, r)
			advert = r
		}
	}
	if garpRefresh > 0 && refreshRep != garpRepeat {
		at := refreshNode
		if at == nil {
			at = in
		}
		t.warn(at, "garp_master_refresh: keepalived sends %d gratuitous ARP(s) per VIP at each refresh (garp_master_refresh_repeat), lvsha a burst of garp_master_repeat = %d", refreshRep, garpRepeat)
	}
	if src != "" && len(peers) == 0 {
		t.warn(in, "unicast_src_ip without unicast_peer: left out (adverts go to multicast)")
		src = ""
	}
	s.str("name", name)
	s.str("interface", iface)
	s.num("virtual_router_id", vrid)
	s.num("priority", prio)
	s.dur("advert_interval", advert)
	s.num("version", version)
	if version == 3 {
		s.str("checksum", "keepalived")
	}
	s.flag("preempt", preempt)
	if preemptDelay > 0 && !preempt {
		t.warn(in, "preempt_delay with nopreempt: keepalived resets it, and so does the import")
		preemptDelay = 0
	}
	if preemptDelay > 0 {
		s.dur("preempt_delay", preemptDelay)
	}
	s.strs("virtual_ipaddress", vips)
	if src != "" {
		s.str("unicast_src_ip", src)
	}
	if len(peers) > 0 {
		s.strs("unicast_peer", peers)
	}
	if auth != "" {
		s.str("auth_pass", auth)
	}
	s.num("garp_master_repeat", garpRepeat)
	s.dur("garp_master_delay", garpDelay)
	s.dur("garp_master_refresh", garpRefresh)
	s.dur("garp_interval", t.garpIntvl)
	if len(tracks) > 0 {
		q := make([]string, len(tracks))
		for i, tr := range tracks {
			q[i] = fmt.Sprintf("{name = %s, weight = %d}", tomlString(tr.name), tr.weight)
		}
		s.set("track_interface", "["+strings.Join(q, ", ")+"]")
	}
	if len(files) > 0 {
		s.strs("track_file", files)
	}
	if len(scripts) > 0 {
		s.strs("track_script", scripts)
	}
	if len(notify) > 0 {
		s.strs("notify", notify)
	}
	t.secs = append(t.secs, s)
}

// trackInterface reads "IF [weight W]"; a "reverse" weight has no lvsha
// equivalent and leaves the whole line out, since ignoring only the
// reverse would turn the adjustment around.
func (t *translator) trackInterface(n *Node) (track, bool) {
	tr := track{name: n.Name}
	for i := 0; i < len(n.Args); i++ {
		switch {
		case n.Args[i] == "weight" && i+1 < len(n.Args):
			w, err := strconv.Atoi(n.Args[i+1])
			if err != nil || w < -253 || w > 253 {
				t.warn(n, "track_interface %s: weight %q is not in -253..253: left out", n.Name, n.Args[i+1])
				return tr, false
			}
			tr.weight = w
			i++
		default:
			t.warn(n, "track_interface %s: %q has no lvsha equivalent: interface not tracked", n.Name, strings.Join(n.Args[i:], " "))
			return tr, false
		}
	}
	return tr, true
}

// vips translates a virtual_ipaddress block; from is each address's node.
func (t *translator) vips(block *Node, iface string) (out []string, from []*Node) {
	for _, v := range block.Children {
		p, err := netip.ParsePrefix(v.Name)
		if a, aerr := netip.ParseAddr(v.Name); aerr == nil {
			p, err = netip.PrefixFrom(a, a.BitLen()), nil // keepalived's default: a host prefix
		}
		if err != nil || p.Addr().Zone() != "" || p.Addr().Is4In6() {
			t.warn(v, "virtual_ipaddress %s: not an address lvsha can hold: left out", v.Name)
			continue
		}
		keep := true
		for i := 0; i < len(v.Args); i++ {
			opt := v.Args[i]
			val := ""
			if i+1 < len(v.Args) && (opt == "dev" || opt == "label" || opt == "brd" || opt == "scope" || opt == "broadcast" || opt == "peer") {
				val = v.Args[i+1]
				i++
			}
			switch {
			case opt == "dev" && val == iface:
			case opt == "dev":
				t.warn(v, "virtual_ipaddress %s: dev %s: lvsha puts every VIP on the instance's interface %s: address left out", v.Name, val, iface)
				keep = false
			case opt == "label":
				t.warn(v, "virtual_ipaddress %s: label %s: lvsha adds VIPs without a label", v.Name, val)
			case val != "":
				t.warn(v, "virtual_ipaddress %s: %s %s: no lvsha equivalent: left out", v.Name, opt, val)
			default:
				t.warn(v, "virtual_ipaddress %s: %s: no lvsha equivalent: left out", v.Name, opt)
			}
		}
		if keep {
			out, from = append(out, p.String()), append(from, v)
		}
	}
	return out, from
}

func (t *translator) ipAddr(n *Node, s string) bool {
	a, err := netip.ParseAddr(s)
	if err != nil || a.Zone() != "" || a.Is4In6() {
		t.warn(n, "%s: %q is not an IP address lvsha takes: left out", n.Name, s)
		return false
	}
	return true
}

// oneFamily keeps the addresses of the first one's family, as keepalived
// does ("address family must match VRRP instance - ignoring"); nodes are
// where each address came from, for the warning.
func (t *translator) oneFamily(what string, addrs []string, nodes []*Node) []string {
	if len(addrs) == 0 {
		return addrs
	}
	v6 := strings.Contains(addrs[0], ":")
	var out []string
	for i, a := range addrs {
		if strings.Contains(a, ":") != v6 {
			t.warn(nodes[i], "%s %s: not of the instance's address family: keepalived ignores it, and so does the import", what, a)
			continue
		}
		out = append(out, a)
	}
	return out
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
