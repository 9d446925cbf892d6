package keepalived

import (
	"fmt"
	"net/netip"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"time"
)

// vsDefaults are the check settings a virtual_server (or a real_server)
// gives the checkers below it.
type vsDefaults struct {
	delayLoop, connectTimeout time.Duration
	retry                     int // -1 = the checker's own default
	alpha                     bool
	host                      string
}

// check is one translated checker, in lvsha's terms.
type check struct {
	node     *Node
	typ      string
	path     string
	host     string
	status   []string
	regex    string
	sni      bool
	port     int
	argv     []string
	interval time.Duration
	timeout  time.Duration
	fall     int
	alpha    bool
}

type realServer struct {
	node   *Node
	addr   string
	weight int
	// weightSet: the real server has its own weight; without one it
	// takes its service's (keepalived's vs weight, default 1).
	weightSet bool
	inhibit   *bool
	method    string
	check     *check
}

func (t *translator) virtualServer(vs *Node) {
	s := &section{header: "[[virtual_server]]", comment: vs.Pos() + ": virtual_server " + strings.Join(vs.Args, " ")}
	var addr string
	fwmark := 0
	switch {
	case len(vs.Args) >= 1 && vs.Args[0] == "group":
		t.warn(vs, "virtual_server group: virtual server groups have no lvsha equivalent yet: service left out")
		return
	case len(vs.Args) == 2 && vs.Args[0] == "fwmark":
		v, err := strconv.Atoi(vs.Args[1])
		if err != nil || v < 1 {
			t.warn(vs, "virtual_server fwmark %q is not a positive number: service left out", vs.Args[1])
			return
		}
		fwmark = v
	case len(vs.Args) == 2:
		a, err := netip.ParseAddr(vs.Args[0])
		port, perr := strconv.Atoi(vs.Args[1])
		if err != nil || a.Zone() != "" || a.Is4In6() {
			t.warn(vs, "virtual_server %s: not an address lvsha takes: service left out", vs.Args[0])
			return
		}
		if perr != nil || port < 1 || port > 65535 {
			t.warn(vs, "virtual_server %s %s: lvsha needs a port 1-65535: service left out", vs.Args[0], vs.Args[1])
			return
		}
		addr = netip.AddrPortFrom(a, uint16(port)).String()
	default:
		t.warn(vs, "virtual_server %s: want IP PORT or fwmark N: service left out", strings.Join(vs.Args, " "))
		return
	}
	def := vsDefaults{delayLoop: kaDelayLoop, connectTimeout: kaConnectTimeout, retry: -1}
	proto, sched, method := kaProtocol, kaScheduler, kaForwarding
	var persistence time.Duration
	quorum := 1
	sorry := ""
	var sorryNode *Node
	inhibit := false
	vsWeight := 1
	var reals []*realServer
	for _, n := range vs.Children {
		switch n.Name {
		case "lb_algo", "lvs_sched":
			if v, ok := t.arg(n); ok {
				sched = v
			}
		case "lb_kind", "lvs_method":
			if m, ok := t.method(n); ok {
				method = m
			}
		case "protocol":
			if v, ok := t.arg(n); ok {
				switch strings.ToLower(v) {
				case "tcp", "udp":
					proto = strings.ToLower(v)
				default:
					t.warn(n, "protocol %s: lvsha balances TCP and UDP only: service left out", v)
					return
				}
			}
		case "persistence_timeout":
			persistence = kaPersistence
			if len(n.Args) > 0 {
				if v, ok := t.intArg(n, 1, 1<<31-1); ok {
					persistence = time.Duration(v) * time.Second
				}
			}
		case "quorum":
			if v, ok := t.intArg(n, 1, 1<<31-1); ok {
				quorum = v
			}
		case "sorry_server":
			if len(n.Args) != 2 {
				t.warn(n, "sorry_server: want IP PORT: left out")
				continue
			}
			a, err := netip.ParseAddr(n.Args[0])
			port, perr := strconv.Atoi(n.Args[1])
			if err != nil || a.Zone() != "" || a.Is4In6() || perr != nil || port < 1 || port > 65535 {
				t.warn(n, "sorry_server %s %s: lvsha needs an IP address and a port 1-65535: left out", n.Args[0], n.Args[1])
				continue
			}
			sorry, sorryNode = netip.AddrPortFrom(a, uint16(port)).String(), n
		case "inhibit_on_failure":
			// A flag at this level: keepalived reads no BOOL after it.
			inhibit = true
		case "alpha":
			def.alpha = true // a flag here too
		case "delay_loop", "connect_timeout", "retry", "virtualhost", "delay_before_retry":
			t.checkDefault(n, &def)
		case "weight":
			// The weight of the real servers that set none, wherever it
			// stands in the block.
			if v, ok := t.intArg(n, 0, 65535); ok {
				vsWeight = v
			}
		case "real_server":
			r := t.realServer(n, def)
			if r == nil {
				continue
			}
			if i := slices.IndexFunc(reals, func(o *realServer) bool { return o.addr == r.addr }); i >= 0 {
				t.warn(n, "real_server %s is already declared at line %d: keepalived removes the second, and so does the import", r.addr, reals[i].node.Line)
				continue
			}
			reals = append(reals, r)
		default:
			t.dropped(n, "virtual_server:")
		}
	}
	// One address family per service: the service's, or a fwmark
	// service's first real server's; the kernel refuses a mix.
	v6 := strings.HasPrefix(addr, "[")
	if addr == "" && len(reals) > 0 {
		v6 = strings.HasPrefix(reals[0].addr, "[")
	}
	reals = slices.DeleteFunc(reals, func(r *realServer) bool {
		if strings.HasPrefix(r.addr, "[") != v6 {
			t.warn(r.node, "real_server %s: not of the service's address family: left out", r.addr)
			return true
		}
		return false
	})
	if sorry != "" && strings.HasPrefix(sorry, "[") != v6 {
		t.warn(sorryNode, "sorry_server %s: not of the service's address family: left out", sorry)
		sorry = ""
	}
	if len(reals) == 0 {
		t.warn(vs, "virtual_server %s has no real servers: keepalived ignores it, and so does the import", strings.Join(vs.Args, " "))
		return
	}
	// Real server settings that lvsha has per service only.
	onFailure := "remove"
	if inhibit {
		onFailure = "inhibit"
	}
	if !inhibit {
		all := true
		for _, r := range reals {
			all = all && r.inhibit != nil && *r.inhibit
		}
		if all {
			onFailure = "inhibit"
		}
	}
	for _, r := range reals {
		if r.inhibit != nil && *r.inhibit != (onFailure == "inhibit") {
			t.warn(r.node, "real_server %s: inhibit_on_failure differs from its service's; lvsha sets it per service (on_failure = %q)", r.addr, onFailure)
		}
		if r.method != "" && r.method != method {
			t.warn(r.node, "real_server %s: lvs_method %s differs from its service's %s; lvsha forwards every real server of a service alike: %s", r.addr, strings.ToUpper(r.method), strings.ToUpper(method), strings.ToUpper(method))
		}
	}
	total := 0
	for _, r := range reals {
		if !r.weightSet {
			r.weight = vsWeight
		}
		total += r.weight
		if fwmark != 0 {
			t.warn(r.node, "real_server %s of a fwmark service: keepalived clears its port (IPVS shows port 0); lvsha keeps it", r.addr)
		}
	}
	if quorum > total {
		// keepalived: "quorum exceeds total weight of real servers, reducing quorum"
		quorum = total
	}
	if addr != "" {
		s.str("address", addr)
		s.str("protocol", proto)
	} else {
		s.num("fwmark", fwmark)
	}
	s.str("scheduler", sched)
	s.str("forwarding", method)
	if persistence > 0 {
		s.dur("persistence_timeout", persistence)
	}
	s.num("quorum", quorum)
	if sorry != "" {
		s.str("sorry_server", sorry)
	}
	s.str("on_failure", onFailure)
	t.secs = append(t.secs, s)

	// One check for the whole service when every real server has the same.
	var shared *check
	same := len(reals) > 0
	for _, r := range reals {
		if r.check == nil || reals[0].check == nil || !r.check.equal(reals[0].check) {
			same = false
		}
	}
	if same {
		shared = reals[0].check
		cs := &section{header: "[virtual_server.check]"}
		shared.write(cs)
		t.secs = append(t.secs, cs)
	}
	for _, r := range reals {
		rs := &section{header: "[[virtual_server.real_server]]", comment: r.node.Pos() + ": real_server " + strings.Join(r.node.Args, " ")}
		rs.str("address", r.addr)
		rs.num("weight", r.weight)
		t.secs = append(t.secs, rs)
		if r.check != nil && shared == nil {
			cs := &section{header: "[virtual_server.real_server.check]"}
			r.check.write(cs)
			t.secs = append(t.secs, cs)
		}
	}
}

func (t *translator) method(n *Node) (string, bool) {
	if len(n.Args) == 0 {
		t.warn(n, "%s: missing its value: left out", n.Name)
		return "", false
	}
	m := map[string]string{"NAT": "nat", "DR": "dr", "TUN": "tun"}[n.Args[0]]
	if m == "" {
		t.warn(n, "%s %s: not NAT, DR or TUN: left out (keepalived ignores it too)", n.Name, n.Args[0])
		return "", false
	}
	if len(n.Args) > 1 {
		t.warn(n, "%s %s: tunnel options %q have no lvsha equivalent: left out", n.Name, n.Args[0], strings.Join(n.Args[1:], " "))
	}
	return m, true
}

// checkDefault reads a setting that a service or real server passes on to
// its checkers.
func (t *translator) checkDefault(n *Node, d *vsDefaults) {
	switch n.Name {
	case "delay_loop":
		if v, ok := t.timer(n); ok {
			d.delayLoop = v
		}
	case "connect_timeout":
		if v, ok := t.timer(n); ok {
			d.connectTimeout = v
		}
	case "retry", "nb_get_retry":
		if v, ok := t.intArg(n, 0, 1<<31-1); ok {
			d.retry = v
		}
	case "alpha":
		if b, ok := t.optBool(n); ok {
			d.alpha = b
		}
	case "virtualhost":
		if v, ok := t.arg(n); ok {
			d.host = v
		}
	case "delay_before_retry":
		t.dropped(n, "")
	}
}

func (t *translator) realServer(rn *Node, def vsDefaults) *realServer {
	if len(rn.Args) != 2 {
		t.warn(rn, "real_server %s: want IP PORT: left out", strings.Join(rn.Args, " "))
		return nil
	}
	a, err := netip.ParseAddr(rn.Args[0])
	port, perr := strconv.Atoi(rn.Args[1])
	if err != nil || a.Zone() != "" || a.Is4In6() || perr != nil || port < 1 || port > 65535 {
		t.warn(rn, "real_server %s %s: lvsha needs an IP address and a port 1-65535: left out", rn.Args[0], rn.Args[1])
		return nil
	}
	r := &realServer{node: rn, addr: netip.AddrPortFrom(a, uint16(port)).String(), weight: 1}
	var checkers []*Node
	for _, n := range rn.Children {
		switch n.Name {
		case "weight":
			if v, ok := t.intArg(n, 0, 65535); ok {
				r.weight, r.weightSet = v, true
			}
		case "inhibit_on_failure":
			if b, ok := t.optBool(n); ok {
				r.inhibit = &b
			}
		case "lvs_method":
			if m, ok := t.method(n); ok {
				r.method = m
			}
		case "delay_loop", "connect_timeout", "retry", "alpha", "virtualhost", "delay_before_retry":
			t.checkDefault(n, &def)
		case "HTTP_GET", "SSL_GET", "TCP_CHECK", "MISC_CHECK":
			checkers = append(checkers, n)
		default:
			t.dropped(n, "real_server "+r.addr+":")
		}
	}
	for i, n := range checkers {
		c := t.checker(n, def, a)
		if c == nil {
			continue
		}
		if r.check != nil {
			t.warn(n, "%s: lvsha runs one check per real server (keepalived wants all up): this one, #%d, left out", n.Name, i+1)
			continue
		}
		r.check = c
	}
	return r
}

func (t *translator) checker(cn *Node, def vsDefaults, rsAddr netip.Addr) *check {
	c := &check{node: cn, alpha: def.alpha, host: def.host}
	retry := def.retry
	delayLoop, timeout := def.delayLoop, def.connectTimeout
	var miscTimeout time.Duration
	var urls []*Node
	switch cn.Name {
	case "HTTP_GET":
		c.typ = "http"
	case "SSL_GET":
		c.typ = "https"
	case "TCP_CHECK":
		c.typ = "tcp"
	case "MISC_CHECK":
		c.typ = "exec"
	}
	for _, n := range cn.Children {
		switch n.Name {
		case "connect_port":
			if v, ok := t.intArg(n, 1, 65535); ok {
				c.port = v
			}
		case "connect_ip":
			if v, ok := t.arg(n); ok && v != rsAddr.String() {
				t.warn(n, "connect_ip %s: lvsha checks the real server's own address: left out", v)
			}
		case "connect_timeout":
			if v, ok := t.timer(n); ok {
				timeout = v
			}
		case "delay_loop":
			if v, ok := t.timer(n); ok {
				delayLoop = v
			}
		case "retry", "nb_get_retry":
			if v, ok := t.intArg(n, 0, 1<<31-1); ok {
				retry = v
			}
		case "alpha":
			if b, ok := t.optBool(n); ok {
				c.alpha = b
			}
		case "delay_before_retry":
			t.dropped(n, cn.Name)
		case "virtualhost":
			if c.typ == "http" || c.typ == "https" {
				if v, ok := t.arg(n); ok {
					c.host = v
				}
			} else {
				t.dropped(n, cn.Name)
			}
		case "enable_sni":
			if b, ok := t.optBool(n); ok && c.typ == "https" {
				c.sni = b
			}
		case "url":
			if c.typ == "http" || c.typ == "https" {
				urls = append(urls, n)
			} else {
				t.dropped(n, cn.Name)
			}
		case "misc_path":
			if c.typ != "exec" {
				t.dropped(n, cn.Name)
				continue
			}
			argv, user, err := scriptArgv(n)
			if err != nil {
				t.warn(n, "misc_path: %v: check left out", err)
				return nil
			}
			if user != "" {
				t.warn(n, "misc_path: runs as user %q in keepalived; lvsha's checker runs it as its own user", user)
			}
			if !filepath.IsAbs(argv[0]) {
				t.warn(n, "misc_path: %q is not an absolute path (lvsha runs it without a shell or PATH search): check left out", argv[0])
				return nil
			}
			c.argv = argv
		case "misc_timeout":
			if c.typ != "exec" {
				t.dropped(n, cn.Name)
				continue
			}
			if v, ok := t.intArg(n, 0, 1<<31-1); ok {
				miscTimeout = time.Duration(v) * time.Second
			}
		default:
			t.dropped(n, cn.Name)
		}
	}
	switch c.typ {
	case "http", "https":
		if len(urls) == 0 {
			t.warn(cn, "%s without a url: keepalived ignores it: check left out", cn.Name)
			return nil
		}
		for i, u := range urls {
			if i > 0 {
				t.warn(u, "url: lvsha checks one URL per real server: this one, #%d, left out", i+1)
				continue
			}
			if !t.url(u, c) {
				return nil
			}
		}
	case "exec":
		if c.argv == nil {
			t.warn(cn, "MISC_CHECK without misc_path: check left out")
			return nil
		}
		// misc_timeout defaults to the service's delay_loop.
		timeout = def.delayLoop
		if miscTimeout > 0 {
			timeout = miscTimeout
		}
		if retry < 0 {
			retry = 0 // MISC_CHECK's default_retry
		}
	}
	if retry < 0 {
		retry = kaRetry
	}
	c.interval = delayLoop
	if c.interval < 100*time.Millisecond {
		t.warn(cn, "%s: delay_loop %s is below lvsha's 100ms minimum: 100ms", cn.Name, c.interval)
		c.interval = 100 * time.Millisecond
	}
	c.timeout = timeout
	if c.timeout >= c.interval {
		c.timeout = c.interval - time.Millisecond
		t.warn(cn, "%s: timeout %s is not shorter than the interval %s, which lvsha requires: %s", cn.Name, timeout, c.interval, c.timeout)
	}
	c.fall = retry + 1
	if c.fall > 100 {
		t.warn(cn, "%s: retry %d is more than lvsha's 99: 99", cn.Name, retry)
		c.fall = 100
	}
	return c
}

// url reads a url block into c; false = the check cannot be carried over.
func (t *translator) url(u *Node, c *check) bool {
	for _, n := range u.Children {
		switch n.Name {
		case "path":
			v, ok := t.arg(n)
			if !ok {
				continue
			}
			if !strings.HasPrefix(v, "/") || strings.ContainsAny(v, " \t") {
				t.warn(n, "path %q: lvsha needs a path that starts with / and has no blanks: check left out", v)
				return false
			}
			c.path = v
		case "status_code":
			for _, a := range n.Args {
				lo, hi, isRange := strings.Cut(a, "-")
				l, err1 := strconv.Atoi(lo)
				h, err2 := l, error(nil)
				if isRange {
					h, err2 = strconv.Atoi(hi)
				}
				if err1 != nil || err2 != nil || l < 100 || h > 599 || l > h {
					t.warn(n, "status_code %s: not a code or range within 100-599: left out (keepalived ignores it too)", a)
					continue
				}
				c.status = append(c.status, a)
			}
		case "virtualhost":
			if v, ok := t.arg(n); ok {
				c.host = v
			}
		case "regex":
			w, err := quotedWords(n.Raw)
			if err != nil || len(w) != 2 {
				t.warn(n, "regex: want one pattern: left out")
				continue
			}
			if _, err := regexp.Compile(w[1]); err != nil {
				t.warn(n, "regex %q: not a pattern Go's RE2 accepts (keepalived uses PCRE2): left out: %v", w[1], err)
				continue
			}
			c.regex = w[1]
		default:
			t.dropped(n, "url")
		}
	}
	if c.path == "" {
		t.warn(u, "url without a path: keepalived ignores it: check left out")
		return false
	}
	return true
}

func (c *check) equal(o *check) bool {
	return c.typ == o.typ && c.path == o.path && c.host == o.host && slices.Equal(c.status, o.status) &&
		c.regex == o.regex && c.sni == o.sni && c.port == o.port && slices.Equal(c.argv, o.argv) &&
		c.interval == o.interval && c.timeout == o.timeout && c.fall == o.fall && c.alpha == o.alpha
}

func (c *check) write(s *section) {
	s.comment = fmt.Sprintf("%s: %s", c.node.Pos(), c.node.Name)
	s.str("type", c.typ)
	switch c.typ {
	case "http", "https":
		s.str("path", c.path)
		if c.host != "" {
			s.str("host", c.host)
		}
		status := c.status
		if len(status) == 0 {
			status = []string{"200-299"} // HTTP_DEFAULT_STATUS_CODE_MIN-MAX
		}
		s.strs("status", status)
		if c.regex != "" {
			s.str("body_regex", c.regex)
		}
		if c.typ == "https" {
			if c.sni && c.host != "" {
				s.str("tls_server_name", c.host)
			}
			// keepalived's SSL_GET does not verify the certificate.
			s.flag("tls_skip_verify", true)
		}
	case "exec":
		s.strs("argv", c.argv)
	}
	if c.port != 0 {
		s.num("port", c.port)
	}
	s.dur("interval", c.interval)
	s.dur("timeout", c.timeout)
	s.num("rise", 1)
	s.num("fall", c.fall)
	if c.alpha {
		s.str("initial_state", "down")
	} else {
		s.str("initial_state", "up")
	}
}
