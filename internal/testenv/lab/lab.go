// Package lab builds the seed scenario's LVS direct-routing topology in
// network namespaces (on top of internal/testenv/netns): a LAN bridge, a client,
// one or two directors and two web servers that hold the VIP on lo with ARP
// suppression and answer "this is web1" / "this is web2" over HTTP. The
// addresses are the seed blog post's; they exist only inside the
// namespaces (in practice inside the test VM, where IPVS is available).
package lab

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/lvsha/lvsha/internal/testenv/netns"
	"github.com/vishvananda/netlink"
)

// The seed topology's addresses.
var (
	VIP       = netip.MustParseAddr("192.168.94.200")
	Director1 = netip.MustParsePrefix("192.168.94.132/24")
	Director2 = netip.MustParsePrefix("192.168.94.133/24")
	Web1      = netip.MustParsePrefix("192.168.94.134/24")
	Web2      = netip.MustParsePrefix("192.168.94.135/24")
	Client    = netip.MustParsePrefix("192.168.94.10/24")
)

// Seed is the seed topology. Director2 is nil unless asked for.
type Seed struct {
	*netns.Lab
	Client, Director1, Director2, Web1, Web2 *netns.Node
	servers                                  []*http.Server
}

// SeedOptions choose what NewSeed builds.
type SeedOptions struct {
	// TwoDirectors adds director2 (for VRRP scenarios).
	TwoDirectors bool
	// VIPOnDirector puts the VIP on director1's eth0 (a single director
	// without VRRP, like the blog post).
	VIPOnDirector bool
	// HTTPPort, if non-zero, starts the web servers' HTTP servers on
	// VIP:HTTPPort answering "this is web1\n" / "this is web2\n".
	HTTPPort uint16
}

// NewSeed builds the topology with namespaces named prefix+role (prefix
// must be unique to the caller, see netns.UniquePrefix). Close removes it.
func NewSeed(prefix string, o SeedOptions) (_ *Seed, err error) {
	l, err := netns.NewLab(prefix)
	if err != nil {
		return nil, err
	}
	s := &Seed{Lab: l}
	defer func() {
		if err != nil {
			s.Close()
		}
	}()
	add := func(role string, p netip.Prefix) (*netns.Node, error) { return l.AddNode(role, p) }
	if s.Client, err = add("client", Client); err != nil {
		return nil, err
	}
	if s.Director1, err = add("dir1", Director1); err != nil {
		return nil, err
	}
	if o.TwoDirectors {
		if s.Director2, err = add("dir2", Director2); err != nil {
			return nil, err
		}
	}
	if s.Web1, err = add("web1", Web1); err != nil {
		return nil, err
	}
	if s.Web2, err = add("web2", Web2); err != nil {
		return nil, err
	}
	for _, w := range []*netns.Node{s.Web1, s.Web2} {
		if err := RealServer(w.NS, VIP); err != nil {
			return nil, err
		}
	}
	if o.VIPOnDirector {
		if err := AddAddr(s.Director1.NS, "eth0", netip.PrefixFrom(VIP, 32)); err != nil {
			return nil, err
		}
	}
	if o.HTTPPort != 0 {
		for _, w := range []*netns.Node{s.Web1, s.Web2} {
			srv, err := ServeText(w.NS, netip.AddrPortFrom(netip.IPv4Unspecified(), o.HTTPPort), "this is "+w.Role+"\n")
			if err != nil {
				return nil, err
			}
			s.servers = append(s.servers, srv)
		}
	}
	return s, nil
}

// Close stops the HTTP servers and deletes the namespaces.
func (s *Seed) Close() error {
	var errs []error
	for _, srv := range s.servers {
		errs = append(errs, srv.Close())
	}
	return errors.Join(append(errs, s.Lab.Close())...)
}

// Sysctl writes a sysctl (dotted or slashed key, e.g.
// net.ipv4.conf.all.arp_ignore) inside the namespace: /proc/sys/net is per
// network namespace of the thread that opens it.
func Sysctl(ns *netns.NS, key, val string) error {
	p := filepath.Join("/proc/sys", strings.ReplaceAll(key, ".", "/"))
	return ns.Do(func() error {
		if err := os.WriteFile(p, []byte(val), 0o644); err != nil {
			return fmt.Errorf("lab %s: sysctl %s=%s: %w", ns.Name, key, val, err)
		}
		return nil
	})
}

// AddAddr adds an address to an interface of the namespace.
func AddAddr(ns *netns.NS, ifname string, p netip.Prefix) error {
	h, err := ns.Handle()
	if err != nil {
		return err
	}
	defer h.Close()
	link, err := h.LinkByName(ifname)
	if err != nil {
		return fmt.Errorf("lab %s: %s: %w", ns.Name, ifname, err)
	}
	a := &netlink.Addr{IPNet: &net.IPNet{IP: p.Addr().AsSlice(), Mask: net.CIDRMask(p.Bits(), p.Addr().BitLen())}}
	if p.Bits() == p.Addr().BitLen() && ifname == "lo" {
		a.Scope = int(netlink.SCOPE_HOST)
	}
	if err := h.AddrReplace(link, a); err != nil {
		return fmt.Errorf("lab %s: add %v to %s: %w", ns.Name, p, ifname, err)
	}
	return nil
}

// RealServer makes the namespace an LVS-DR real server for vip the way
// `lvsha realserver up` does: the VIP as a /32 on lo, arp_ignore=1 and
// arp_announce=2 on all and eth0, so it accepts the VIP's traffic without
// answering ARP for it.
func RealServer(ns *netns.NS, vip netip.Addr) error {
	for _, ifc := range []string{"all", "eth0"} {
		if err := Sysctl(ns, "net/ipv4/conf/"+ifc+"/arp_ignore", "1"); err != nil {
			return err
		}
		if err := Sysctl(ns, "net/ipv4/conf/"+ifc+"/arp_announce", "2"); err != nil {
			return err
		}
	}
	return AddAddr(ns, "lo", netip.PrefixFrom(vip, 32))
}

// ServeText starts an HTTP server in the namespace answering every request
// with body. Close the returned server to stop it.
func ServeText(ns *netns.NS, addr netip.AddrPort, body string) (*http.Server, error) {
	var ln net.Listener
	if err := ns.Do(func() (err error) {
		ln, err = net.Listen("tcp", addr.String())
		return err
	}); err != nil {
		return nil, fmt.Errorf("lab %s: listen %v: %w", ns.Name, addr, err)
	}
	srv := &http.Server{
		Handler: http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
			w.Header().Set("Content-Type", "text/plain")
			fmt.Fprint(w, body)
		}),
		ReadHeaderTimeout: 10 * time.Second,
	}
	go srv.Serve(ln) //nolint:errcheck // returns ErrServerClosed on Close
	return srv, nil
}

// Dialer returns a DialContext that opens connections from inside the
// namespace (the socket keeps its namespace after the dial).
func Dialer(ns *netns.NS) func(ctx context.Context, network, addr string) (net.Conn, error) {
	return func(ctx context.Context, network, addr string) (net.Conn, error) {
		var c net.Conn
		err := ns.Do(func() (err error) {
			var d net.Dialer
			c, err = d.DialContext(ctx, network, addr)
			return err
		})
		return c, err
	}
}

// HTTPClient returns a client whose connections come from the namespace.
// keepAlive false opens a new connection for every request (so IPVS
// schedules each one).
func HTTPClient(ns *netns.NS, keepAlive bool) *http.Client {
	return &http.Client{
		Timeout: 10 * time.Second,
		Transport: &http.Transport{
			DialContext:       Dialer(ns),
			DisableKeepAlives: !keepAlive,
			Proxy:             nil,
		},
	}
}
