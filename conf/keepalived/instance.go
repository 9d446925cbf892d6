package keepalived

import (
	"fmt"
	"math"
	"net/netip"
	"path/filepath"
	"strconv"
	"strings"
	"time"
)

// A vrrp_instance block and what it holds: its addresses, tracked
// interfaces and unicast peers.

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
		s.set("track_file", "["+strings.Join(files, ", ")+"]")
	}
	if len(scripts) > 0 {
		s.set("track_script", "["+strings.Join(scripts, ", ")+"]")
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
