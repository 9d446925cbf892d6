// Package bgp is the director's BGP speaker: an embedded GoBGP that peers
// with the upstream routers and announces host routes for VIPs with
// next-hop self. It decides nothing: the director says what to announce
// and withdraw (internal/director's bgpPart); this package only speaks.
//
// Each VIP is originated with next-hop 0.0.0.0 (::), which GoBGP replaces
// with the session's local address towards each neighbour (next-hop self),
// for eBGP and iBGP alike. Routes the routers send stay in GoBGP's table
// and go nowhere: no import policy rejects them, because GoBGP applies
// the global import policy to locally originated routes too.
package bgp

import (
	"context"
	"fmt"
	"log/slog"
	"net/netip"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/osrg/gobgp/v4/api"
	"github.com/osrg/gobgp/v4/pkg/apiutil"
	bgppkt "github.com/osrg/gobgp/v4/pkg/packet/bgp"
	"github.com/osrg/gobgp/v4/pkg/server"
)

// Neighbor is a router to peer with; every value is set by the caller
// (conf applies the defaults).
type Neighbor struct {
	Addr         netip.Addr
	ASN          uint32
	Password     string
	HoldTime     time.Duration // 0: no keepalives (RFC 4271)
	ConnectRetry time.Duration
	Port         uint16
}

// Config is the speaker's whole configuration.
type Config struct {
	ASN      uint32
	RouterID netip.Addr
	// ListenPort is where routers may connect; 0 = connect out only.
	ListenPort uint16
	Neighbors  []Neighbor
}

// NeighborStatus is one session as status shows it.
type NeighborStatus struct {
	Address string `json:"address"`
	ASN     uint32 `json:"asn"`
	// State is the RFC 4271 FSM state, lower case: idle, connect,
	// active, opensent, openconfirm, established.
	State string `json:"state"`
	// Since is when the session was last established or went down
	// (zero if it never was).
	Since    time.Time `json:"since,omitzero"`
	HoldTime float64   `json:"hold_time_seconds,omitempty"` // negotiated, while established
}

// Speaker is a running GoBGP server.
type Speaker struct {
	s   *server.BgpServer
	log *slog.Logger

	mu        sync.Mutex
	announced map[netip.Prefix]bool
	stopped   bool
}

// Start starts GoBGP and adds the neighbours; it returns once the server
// runs (sessions come up on their own, later).
func Start(ctx context.Context, cfg Config, log *slog.Logger) (*Speaker, error) {
	lvl := &slog.LevelVar{}
	lvl.Set(slog.LevelWarn)
	// GoBGP logs every FSM step at info whatever the level it is given;
	// its warnings and errors are what an operator needs next to lvsha's
	// own lines (which say when sessions and routes change).
	glog := slog.New(minLevel{log.Handler(), slog.LevelWarn}).With("component", "gobgp")
	s := server.NewBgpServer(server.LoggerOption(glog, lvl))
	go s.Serve()
	listen := int32(cfg.ListenPort)
	if listen == 0 {
		listen = -1 // GoBGP's "do not listen"
	}
	if err := s.StartBgp(ctx, &api.StartBgpRequest{Global: &api.Global{
		Asn: cfg.ASN, RouterId: cfg.RouterID.String(), ListenPort: listen,
	}}); err != nil {
		s.Stop()
		return nil, fmt.Errorf("bgp: start: %w", err)
	}
	sp := &Speaker{s: s, log: log, announced: map[netip.Prefix]bool{}}
	for _, n := range cfg.Neighbors {
		if err := s.AddPeer(ctx, &api.AddPeerRequest{Peer: peer(n)}); err != nil {
			sp.Stop()
			return nil, fmt.Errorf("bgp: neighbour %s: %w", n.Addr, err)
		}
	}
	return sp, nil
}

func peer(n Neighbor) *api.Peer {
	hold := uint64(n.HoldTime / time.Second)
	return &api.Peer{
		Conf: &api.PeerConf{NeighborAddress: n.Addr.String(), PeerAsn: n.ASN, AuthPassword: n.Password},
		Timers: &api.Timers{Config: &api.TimersConfig{
			HoldTime: hold, KeepaliveInterval: hold / 3,
			ConnectRetry: uint64(n.ConnectRetry / time.Second),
			// GoBGP waits 30 s before it reconnects after a session
			// reset; the connect retry is the pace the operator chose.
			IdleHoldTimeAfterReset: uint64(n.ConnectRetry / time.Second),
		}},
		Transport: &api.Transport{RemotePort: uint32(n.Port)},
		// Both families on every session: an IPv6 VIP can go to a
		// router over an IPv4 session (RFC 4760), if the router agrees.
		AfiSafis: []*api.AfiSafi{
			{Config: &api.AfiSafiConfig{Family: &api.Family{Afi: api.Family_AFI_IP, Safi: api.Family_SAFI_UNICAST}, Enabled: true}},
			{Config: &api.AfiSafiConfig{Family: &api.Family{Afi: api.Family_AFI_IP6, Safi: api.Family_SAFI_UNICAST}, Enabled: true}},
		},
	}
}

// path is p as a locally originated route with next-hop self.
func path(p netip.Prefix) (*apiutil.Path, error) {
	nlri, err := bgppkt.NewIPAddrPrefix(p)
	if err != nil {
		return nil, err
	}
	attrs := []bgppkt.PathAttributeInterface{bgppkt.NewPathAttributeOrigin(bgppkt.BGP_ORIGIN_ATTR_TYPE_IGP)}
	family := bgppkt.RF_IPv4_UC
	if p.Addr().Is4() {
		nh, err := bgppkt.NewPathAttributeNextHop(netip.IPv4Unspecified())
		if err != nil {
			return nil, err
		}
		attrs = append(attrs, nh)
	} else {
		family = bgppkt.RF_IPv6_UC
		mp, err := bgppkt.NewPathAttributeMpReachNLRI(family, []bgppkt.PathNLRI{{NLRI: nlri}}, netip.IPv6Unspecified())
		if err != nil {
			return nil, err
		}
		attrs = append(attrs, mp)
	}
	return &apiutil.Path{Family: family, Nlri: nlri, Attrs: attrs}, nil
}

// Announce originates p to every neighbour (now and on each new session).
func (sp *Speaker) Announce(p netip.Prefix) error {
	ap, err := path(p)
	if err != nil {
		return fmt.Errorf("bgp: announce %s: %w", p, err)
	}
	if _, err := sp.s.AddPath(apiutil.AddPathRequest{Paths: []*apiutil.Path{ap}}); err != nil {
		return fmt.Errorf("bgp: announce %s: %w", p, err)
	}
	sp.mu.Lock()
	sp.announced[p] = true
	sp.mu.Unlock()
	return nil
}

// Withdraw withdraws p from every neighbour.
func (sp *Speaker) Withdraw(p netip.Prefix) error {
	ap, err := path(p)
	if err != nil {
		return fmt.Errorf("bgp: withdraw %s: %w", p, err)
	}
	if err := sp.s.DeletePath(apiutil.DeletePathRequest{Paths: []*apiutil.Path{ap}}); err != nil {
		return fmt.Errorf("bgp: withdraw %s: %w", p, err)
	}
	sp.mu.Lock()
	delete(sp.announced, p)
	sp.mu.Unlock()
	return nil
}

// AddNeighbor adds a router to peer with.
func (sp *Speaker) AddNeighbor(n Neighbor) error {
	if err := sp.s.AddPeer(context.Background(), &api.AddPeerRequest{Peer: peer(n)}); err != nil {
		return fmt.Errorf("bgp: add neighbour %s: %w", n.Addr, err)
	}
	return nil
}

// DeleteNeighbor ends the session with a router (a CEASE notification,
// which withdraws what it learnt from us) and forgets it.
func (sp *Speaker) DeleteNeighbor(a netip.Addr) error {
	if err := sp.s.DeletePeer(context.Background(), &api.DeletePeerRequest{Address: a.String()}); err != nil {
		return fmt.Errorf("bgp: remove neighbour %s: %w", a, err)
	}
	return nil
}

// Neighbors reports each session's state, sorted by address.
func (sp *Speaker) Neighbors(ctx context.Context) ([]NeighborStatus, error) {
	var out []NeighborStatus
	err := sp.s.ListPeer(ctx, &api.ListPeerRequest{}, func(p *api.Peer) {
		ns := NeighborStatus{Address: p.GetConf().GetNeighborAddress(), ASN: p.GetConf().GetPeerAsn(), State: "idle"}
		if st := p.GetState(); st != nil {
			ns.State = strings.ToLower(strings.TrimPrefix(st.SessionState.String(), "SESSION_STATE_"))
		}
		ts := p.GetTimers().GetState()
		switch {
		case ns.State == "established" && ts.GetUptime() != nil:
			ns.Since = ts.GetUptime().AsTime()
			ns.HoldTime = float64(ts.GetNegotiatedHoldTime())
		case ts.GetDowntime() != nil && ts.GetDowntime().GetSeconds() > 0:
			ns.Since = ts.GetDowntime().AsTime()
		}
		out = append(out, ns)
	})
	if err != nil {
		return nil, fmt.Errorf("bgp: list neighbours: %w", err)
	}
	slices.SortFunc(out, func(a, b NeighborStatus) int { return strings.Compare(a.Address, b.Address) })
	return out, nil
}

// Stop ends every session with a CEASE notification (which also withdraws
// whatever is still announced) and stops the server.
func (sp *Speaker) Stop() {
	sp.mu.Lock()
	if sp.stopped {
		sp.mu.Unlock()
		return
	}
	sp.stopped = true
	sp.mu.Unlock()
	sp.s.Stop() // StopBgp, logging its own errors, then the rest

}

// minLevel drops the records of h below min.
type minLevel struct {
	slog.Handler
	min slog.Level
}

func (m minLevel) Enabled(ctx context.Context, l slog.Level) bool {
	return l >= m.min && m.Handler.Enabled(ctx, l)
}

func (m minLevel) WithAttrs(a []slog.Attr) slog.Handler {
	return minLevel{m.Handler.WithAttrs(a), m.min}
}
func (m minLevel) WithGroup(g string) slog.Handler { return minLevel{m.Handler.WithGroup(g), m.min} }
