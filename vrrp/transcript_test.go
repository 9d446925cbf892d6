package vrrp

import (
	"fmt"
	"net/netip"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/lvsha/lvsha/internal/testenv/transcript"
)

// TestTranscript replays each testdata/*.txt against pure Machines on a
// simulated link and compares, exactly, what they do with what the file
// says, in the layout of internal/testenv/transcript (command, ----, the
// output it produced; `go test ./vrrp -run Transcript -update` rewrites the
// outputs). Each input to a machine (event or received packet) is one line
// with the virtual time and the node; the actions it returned follow, one a
// line, indented, in order (a drop, and a GARP burst the machine did not
// send because of its rate limit, are shown the same way). The commands:
//
//	node NAME [prio=N] [ip=A] [version=2|3] [interval=D] [preempt=BOOL]
//	     [preempt-delay=D] [garp-delay=D] [garp-refresh=D] [track=IF:W,...]
//	     [auth=PASS] [peers=A,...] [vips=A,...]    add a router: VRID 51, 10.0.0.N
//	                                               for the Nth node, VIP 10.0.0.100
//	start NAME [link=down]                         Start
//	shutdown NAME                                  Shutdown
//	link NAME up|down                              LinkUp / LinkDown
//	track NAME IF up|down                          TrackChanged
//	fire NAME TIMER                                a timer fires, armed or not (left armed)
//	inject NAME from=A [to=A] [ttl=N] [version=N] [vrid=N] [prio=N]
//	       [interval=D] [auth=PASS] [addrs=A,...]  a packet from outside, by default
//	       [checksum=bad]                          a valid advert from 10.0.0.200
//	                                               (fe80::200 to ff02::12 for a
//	                                               node with IPv6 VIPs), priority 100
//	reconfigure NAME [garp-delay=D] [garp-refresh=D] [track=IF:W,...]
//	                                               Reconfigured (a reload in place)
//	cut NAME / join NAME                           take a node off the link / back
//	reset                                          no nodes, the clock back at 0
//	run D                                          let D pass, firing timers
//	status [NAME...]                               the state of the nodes
//
// Adverts a node sends reach the other nodes on the link (with peers, the
// peers) at once, in the order they were sent, to the group of the VIPs'
// family (an IPv6 node is given ip=fe80::N and IPv6 vips); timers due at
// the same time fire in node order, then in TimerKind order.
func TestTranscript(t *testing.T) {
	transcript.Run(t, "testdata/*.txt", func(t *testing.T) func(transcript.Block) []string {
		n := &simNet{t: t, now: t0}
		return func(b transcript.Block) []string {
			var out strings.Builder
			n.out = &out
			if err := n.command(strings.Fields(b.Cmd)); err != nil {
				t.Fatalf("line %d: %s: %v", b.Line, b.Cmd, err)
			}
			if out.Len() == 0 {
				return nil
			}
			return strings.Split(strings.TrimSuffix(out.String(), "\n"), "\n")
		}
	})
}

// simNode is one router of the simulated link.
type simNode struct {
	name   string
	m      *Machine
	cfg    MachineConfig
	timers map[TimerKind]time.Time
	vips   bool // its VIPs are on its interface
	cut    bool // off the link: sends and receives nothing
}

// simNet is a lossless link without delay and a virtual clock.
type simNet struct {
	t     *testing.T
	now   time.Time
	nodes []*simNode
	out   *strings.Builder
}

// delivery is an input waiting for a node.
type delivery struct {
	to *simNode
	ev Event  // or
	p  Packet // if ev is nil
}

func (n *simNet) node(name string) (*simNode, error) {
	for _, nd := range n.nodes {
		if nd.name == name {
			return nd, nil
		}
	}
	return nil, fmt.Errorf("no node %q", name)
}

func (n *simNet) printf(format string, args ...any) {
	fmt.Fprintf(n.out, format+"\n", args...)
}

// keyvals parses key=value arguments.
func keyvals(args []string) (map[string]string, error) {
	kv := map[string]string{}
	for _, a := range args {
		k, v, ok := strings.Cut(a, "=")
		if !ok {
			return nil, fmt.Errorf("%q is not key=value", a)
		}
		kv[k] = v
	}
	return kv, nil
}

func addrList(s string) ([]netip.Addr, error) {
	var out []netip.Addr
	for _, f := range strings.Split(s, ",") {
		a, err := netip.ParseAddr(f)
		if err != nil {
			return nil, err
		}
		out = append(out, a)
	}
	return out, nil
}

func (n *simNet) command(f []string) error {
	if len(f) == 0 {
		return fmt.Errorf("empty command")
	}
	nd := func() (*simNode, error) {
		if len(f) < 2 {
			return nil, fmt.Errorf("%s needs a node", f[0])
		}
		return n.node(f[1])
	}
	switch f[0] {
	case "node":
		return n.addNode(f[1:])
	case "start", "shutdown", "link", "track", "fire":
		x, err := nd()
		if err != nil {
			return err
		}
		var ev Event
		switch {
		case f[0] == "start":
			ev = Start{LinkUp: !slices.Contains(f[2:], "link=down")}
		case f[0] == "shutdown":
			ev = Shutdown{}
		case f[0] == "link" && len(f) == 3:
			ev = LinkDown{}
			if f[2] == "up" {
				ev = LinkUp{}
			}
		case f[0] == "track" && len(f) == 4:
			ev = TrackChanged{Name: f[2], Up: f[3] == "up"}
		case f[0] == "fire" && len(f) == 3:
			k, err := timerKind(f[2])
			if err != nil {
				return err
			}
			ev = TimerFired{k}
		default:
			return fmt.Errorf("bad arguments")
		}
		n.deliver(delivery{to: x, ev: ev})
	case "reconfigure":
		x, err := nd()
		if err != nil {
			return err
		}
		kv, err := keyvals(f[2:])
		if err != nil {
			return err
		}
		ev := Reconfigured{GARPDelay: x.cfg.GARPDelay, GARPRefresh: x.cfg.GARPRefresh, Track: x.cfg.Track}
		for k, v := range kv {
			switch k {
			case "garp-delay":
				ev.GARPDelay, err = time.ParseDuration(v)
			case "garp-refresh":
				ev.GARPRefresh, err = time.ParseDuration(v)
			case "track":
				ev.Track, err = trackList(v)
			default:
				err = fmt.Errorf("unknown key %q", k)
			}
			if err != nil {
				return fmt.Errorf("%s=%s: %w", k, v, err)
			}
		}
		x.cfg.GARPDelay, x.cfg.GARPRefresh, x.cfg.Track = ev.GARPDelay, ev.GARPRefresh, ev.Track
		n.deliver(delivery{to: x, ev: ev})
	case "inject":
		x, err := nd()
		if err != nil {
			return err
		}
		p, err := n.injected(x, f[2:])
		if err != nil {
			return err
		}
		n.deliver(delivery{to: x, p: p})
	case "reset":
		n.nodes, n.now = nil, t0
	case "cut", "join":
		x, err := nd()
		if err != nil {
			return err
		}
		x.cut = f[0] == "cut"
	case "run":
		if len(f) != 2 {
			return fmt.Errorf("run needs a duration")
		}
		d, err := time.ParseDuration(f[1])
		if err != nil {
			return err
		}
		n.run(n.now.Add(d))
	case "status":
		list := n.nodes
		if len(f) > 1 {
			list = nil
			for _, name := range f[1:] {
				x, err := n.node(name)
				if err != nil {
					return err
				}
				list = append(list, x)
			}
		}
		for _, x := range list {
			m := x.m
			n.printf("%s %s: %s prio=%d master=%s since=%s cause=%q vips=%v master-adver-interval=%s",
				dur(n.now), x.name, m.State(), m.Priority(), m.Master(), dur(m.Since()), m.Cause(), x.vips, m.MasterAdverInterval())
		}
	default:
		return fmt.Errorf("unknown command %q", f[0])
	}
	return nil
}

// trackList parses IF:W,... ("" is none).
func trackList(v string) ([]TrackInterface, error) {
	var out []TrackInterface
	for _, tw := range strings.Split(v, ",") {
		if tw == "" {
			continue
		}
		name, w, _ := strings.Cut(tw, ":")
		i, err := strconv.Atoi(w)
		if err != nil {
			return nil, err
		}
		out = append(out, TrackInterface{Name: name, Weight: i})
	}
	return out, nil
}

func (n *simNet) addNode(args []string) error {
	if len(args) == 0 {
		return fmt.Errorf("node needs a name")
	}
	kv, err := keyvals(args[1:])
	if err != nil {
		return err
	}
	c := MachineConfig{VRID: 51, Priority: 100, Version: 3, AdvertInterval: time.Second, Preempt: true,
		PrimaryIP: netip.AddrFrom4([4]byte{10, 0, 0, byte(len(n.nodes) + 1)}),
		VIPs:      []netip.Addr{netip.MustParseAddr("10.0.0.100")}}
	for k, v := range kv {
		var err error
		var i int
		switch k {
		case "prio":
			i, err = strconv.Atoi(v)
			c.Priority = uint8(i)
		case "ip":
			c.PrimaryIP, err = netip.ParseAddr(v)
		case "version":
			c.Version, err = strconv.Atoi(v)
		case "interval":
			c.AdvertInterval, err = time.ParseDuration(v)
		case "preempt":
			c.Preempt, err = strconv.ParseBool(v)
		case "preempt-delay":
			c.PreemptDelay, err = time.ParseDuration(v)
		case "garp-delay":
			c.GARPDelay, err = time.ParseDuration(v)
		case "garp-refresh":
			c.GARPRefresh, err = time.ParseDuration(v)
		case "auth":
			c.AuthPass = v
		case "peers":
			c.UnicastPeers, err = addrList(v)
		case "vips":
			c.VIPs, err = addrList(v)
		case "track":
			c.Track, err = trackList(v)
		default:
			err = fmt.Errorf("unknown key %q", k)
		}
		if err != nil {
			return fmt.Errorf("%s=%s: %w", k, v, err)
		}
	}
	n.nodes = append(n.nodes, &simNode{name: args[0], m: NewMachine(c), cfg: c, timers: map[TimerKind]time.Time{}})
	return nil
}

// injected builds a packet from a router that is not a node: by default a
// valid advert for x from 10.0.0.200 with x's version and interval.
func (n *simNet) injected(x *simNode, args []string) (Packet, error) {
	kv, err := keyvals(args)
	if err != nil {
		return Packet{}, err
	}
	c := x.cfg
	a := &Advert{Version: uint8(c.Version), Type: TypeAdvertisement, VRID: c.VRID, Priority: 100, Addrs: c.VIPs}
	p := Packet{Src: netip.MustParseAddr("10.0.0.200"), Dst: Group, TTL: 255}
	if c.VIPs[0].Is6() {
		p.Src, p.Dst = netip.MustParseAddr("fe80::200"), Group6
	}
	badChecksum := false
	interval := c.AdvertInterval
	auth := c.AuthPass
	for k, v := range kv {
		var err error
		var i int
		switch k {
		case "from":
			p.Src, err = netip.ParseAddr(v)
		case "to":
			p.Dst, err = netip.ParseAddr(v)
		case "ttl":
			p.TTL, err = strconv.Atoi(v)
		case "version":
			i, err = strconv.Atoi(v)
			a.Version = uint8(i)
		case "vrid":
			i, err = strconv.Atoi(v)
			a.VRID = uint8(i)
		case "prio":
			i, err = strconv.Atoi(v)
			a.Priority = uint8(i)
		case "interval":
			interval, err = time.ParseDuration(v)
		case "auth":
			auth = v
		case "addrs":
			a.Addrs, err = addrList(v)
		case "checksum":
			badChecksum = v == "bad"
		default:
			err = fmt.Errorf("unknown key %q", k)
		}
		if err != nil {
			return Packet{}, fmt.Errorf("%s=%s: %w", k, v, err)
		}
	}
	if a.Version == 3 {
		a.MaxAdvertInterval = uint16(interval / (10 * time.Millisecond))
	} else {
		a.AdvertInterval = uint8(interval / time.Second)
		if auth != "" {
			a.AuthType = AuthPassword
			copy(a.AuthData[:], auth)
		}
	}
	p.Payload, err = a.Marshal(ChecksumPseudoHeader, p.Src, p.Dst)
	if badChecksum && err == nil {
		p.Payload[7] ^= 0xff
	}
	return p, err
}

// deliver gives an input to a node and, at the same instant, the adverts it
// sends to the others, until the link is quiet.
func (n *simNet) deliver(first delivery) {
	queue := []delivery{first}
	for len(queue) > 0 {
		d := queue[0]
		queue = queue[1:]
		x := d.to
		var acts []Action
		suppressed := x.m.GARPSuppressed()
		if d.ev != nil {
			n.printf("%s %s: %s", dur(n.now), x.name, eventString(d.ev))
			acts = x.m.Step(n.now, d.ev)
		} else {
			n.printf("%s %s: recv %s", dur(n.now), x.name, packetString(d.p))
			var drop string
			acts, drop = x.m.Receive(n.now, d.p)
			if drop != "" {
				n.printf("    drop %s", drop)
			}
		}
		for _, a := range acts {
			n.printf("    %s", actionString(a))
			switch a := a.(type) {
			case ArmTimer:
				x.timers[a.Timer] = n.now.Add(a.D)
			case StopTimer:
				delete(x.timers, a.Timer)
			case AddVIPs:
				x.vips = true
			case RemoveVIPs:
				x.vips = false
			case SendAdvert:
				if x.cut {
					continue
				}
				dsts := x.cfg.UnicastPeers
				if len(dsts) == 0 {
					dsts = []netip.Addr{GroupFor(x.cfg.VIPs[0])}
				}
				for _, dst := range dsts {
					b, err := x.m.Advert(a.Priority).Marshal(ChecksumPseudoHeader, x.cfg.PrimaryIP, dst)
					if err != nil {
						n.t.Fatal(err)
					}
					for _, y := range n.nodes {
						if y != x && !y.cut && (dst.IsMulticast() || dst == y.cfg.PrimaryIP) {
							queue = append(queue, delivery{to: y, p: Packet{Src: x.cfg.PrimaryIP, Dst: dst, TTL: 255, Payload: b}})
						}
					}
				}
			}
		}
		if got := x.m.GARPSuppressed(); got != suppressed {
			n.printf("    GARP burst suppressed (%d so far)", got)
		}
	}
}

// run fires the timers due up to until, in order, and stops the clock there.
func (n *simNet) run(until time.Time) {
	for {
		var next *simNode
		var kind TimerKind
		at := until
		for _, x := range n.nodes {
			for k := range numTimers {
				if due, ok := x.timers[k]; ok && (due.Before(at) || next == nil && due.Equal(at)) {
					next, kind, at = x, k, due
				}
			}
		}
		if next == nil {
			n.now = until
			return
		}
		n.now = at
		delete(next.timers, kind)
		n.deliver(delivery{to: next, ev: TimerFired{kind}})
	}
}

// dur is a virtual time as the time since the start of the transcript.
func dur(t time.Time) string {
	if t.IsZero() {
		return "-"
	}
	return t.Sub(t0).String()
}

func timerKind(s string) (TimerKind, error) {
	for k := range numTimers {
		if k.String() == s {
			return k, nil
		}
	}
	return 0, fmt.Errorf("no timer %q", s)
}

func eventString(ev Event) string {
	switch ev := ev.(type) {
	case Start:
		if !ev.LinkUp {
			return "start link=down"
		}
		return "start"
	case TimerFired:
		return "timer " + ev.Timer.String()
	case LinkDown:
		return "link down"
	case LinkUp:
		return "link up"
	case TrackChanged:
		if ev.Up {
			return "track " + ev.Name + " up"
		}
		return "track " + ev.Name + " down"
	case Shutdown:
		return "shutdown"
	case Reconfigured:
		var track []string
		for _, t := range ev.Track {
			track = append(track, fmt.Sprintf("%s:%d", t.Name, t.Weight))
		}
		return fmt.Sprintf("reconfigure garp-delay=%s garp-refresh=%s track=%s", ev.GARPDelay, ev.GARPRefresh, strings.Join(track, ","))
	}
	return fmt.Sprintf("%#v", ev)
}

func packetString(p Packet) string {
	s := fmt.Sprintf("%s->%s ttl=%d", p.Src, p.Dst, p.TTL)
	a, err := Unmarshal(p.Payload, p.Src, p.Dst)
	if err != nil {
		return fmt.Sprintf("%s undecodable (%v)", s, err)
	}
	s += fmt.Sprintf(" v%d vrid=%d prio=%d", a.Version, a.VRID, a.Priority)
	if a.Version == 3 {
		s += fmt.Sprintf(" interval=%s", time.Duration(a.MaxAdvertInterval)*10*time.Millisecond)
	} else {
		s += fmt.Sprintf(" interval=%s", time.Duration(a.AdvertInterval)*time.Second)
		if a.AuthType == AuthPassword {
			s += fmt.Sprintf(" auth=%q", strings.TrimRight(string(a.AuthData[:]), "\x00"))
		}
	}
	var addrs []string
	for _, ad := range a.Addrs {
		addrs = append(addrs, ad.String())
	}
	return s + " addrs=" + strings.Join(addrs, ",")
}

func actionString(a Action) string {
	switch a := a.(type) {
	case SendAdvert:
		return fmt.Sprintf("send advert prio=%d", a.Priority)
	case ArmTimer:
		return fmt.Sprintf("arm %s %s", a.Timer, a.D)
	case StopTimer:
		return fmt.Sprintf("stop %s", a.Timer)
	case AddVIPs:
		return "add VIPs"
	case RemoveVIPs:
		return "remove VIPs"
	case SendGARP:
		return "send GARP"
	case Notify:
		return fmt.Sprintf("notify %s -> %s prio=%d cause=%q", a.From, a.To, a.Priority, a.Cause)
	}
	return fmt.Sprintf("%#v", a)
}
