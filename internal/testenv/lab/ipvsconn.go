package lab

import (
	"errors"
	"fmt"
	"net/netip"
	"os"
	"strconv"
	"strings"

	"github.com/lvsha/lvsha/internal/testenv/netns"
)

// IPVSConn is one line of /proc/net/ip_vs_conn.
type IPVSConn struct {
	Client   netip.AddrPort
	Dest     netip.AddrPort
	State    string
	Template bool // a persistence template (client port 0)
}

// IPVSConns reads the IPVS connection table of a namespace, from a thread
// inside it (/proc/net follows the process's first thread).
func IPVSConns(n *netns.NS) ([]IPVSConn, error) {
	var b []byte
	if err := n.Do(func() (err error) {
		b, err = os.ReadFile("/proc/thread-self/net/ip_vs_conn")
		return err
	}); err != nil {
		return nil, fmt.Errorf("%s: ip_vs_conn: %w", n.Name, err)
	}
	return parseIPVSConns(string(b))
}

// parseIPVSConns parses /proc/net/ip_vs_conn:
//
//	Pro FromIP   FPrt ToIP     TPrt DestIP   DPrt State       Expires PEName PEData
//	TCP C0A85E0A A1B2 C0A85EC8 0050 C0A85E86 0050 ESTABLISHED     899
func parseIPVSConns(s string) ([]IPVSConn, error) {
	var out []IPVSConn
	lines := strings.Split(strings.TrimSpace(s), "\n")
	for _, l := range lines[1:] {
		f := strings.Fields(l)
		if len(f) < 8 {
			return nil, fmt.Errorf("ip_vs_conn line %q", l)
		}
		c, err1 := hexAddrPort(f[1], f[2])
		d, err2 := hexAddrPort(f[5], f[6])
		if err := errors.Join(err1, err2); err != nil {
			return nil, fmt.Errorf("ip_vs_conn line %q: %w", l, err)
		}
		out = append(out, IPVSConn{Client: c, Dest: d, State: f[7], Template: c.Port() == 0})
	}
	return out, nil
}

func hexAddrPort(a, p string) (netip.AddrPort, error) {
	ip, err := strconv.ParseUint(a, 16, 32)
	if err != nil {
		return netip.AddrPort{}, err
	}
	port, err := strconv.ParseUint(p, 16, 16)
	if err != nil {
		return netip.AddrPort{}, err
	}
	return netip.AddrPortFrom(netip.AddrFrom4([4]byte{byte(ip >> 24), byte(ip >> 16), byte(ip >> 8), byte(ip)}), uint16(port)), nil
}
