package e2e

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/netip"
	"os"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/lvsha/lvsha/internal/testenv/lab"
	"github.com/lvsha/lvsha/internal/testenv/netns"
)

// The seed topology's addresses (internal/testenv/lab has the seed's own; they exist
// only inside the VM's namespaces), plus the web that joins by reload.
var (
	VIP         = lab.VIP
	ClientAddr  = lab.Client
	Dir1Addr    = lab.Director1
	Dir2Addr    = lab.Director2
	Web1Addr    = lab.Web1
	Web2Addr    = lab.Web2
	Web3Addr    = netip.MustParsePrefix("192.168.94.136/24") // joins by reload in step d
	ServicePort = uint16(80)
)

// webServer is a web host's HTTP server answering "this is webN", which
// the scenario stops and starts again.
type webServer struct {
	node *netns.Node
	body string

	mu  sync.Mutex
	srv *http.Server
}

func newWebServer(node *netns.Node) *webServer {
	return &webServer{node: node, body: "this is " + node.Role + "\n"}
}

// start listens on *:80 inside the web's namespace (the VIP on lo and the
// real address both reach it).
func (w *webServer) start() error {
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.srv != nil {
		return nil
	}
	var ln net.Listener
	if err := w.node.Do(func() (err error) {
		ln, err = net.Listen("tcp", fmt.Sprintf(":%d", ServicePort))
		return err
	}); err != nil {
		return fmt.Errorf("%s: http server: %w", w.node.Role, err)
	}
	srv := &http.Server{
		Handler: http.HandlerFunc(func(rw http.ResponseWriter, _ *http.Request) {
			rw.Header().Set("Content-Type", "text/plain")
			_, _ = io.WriteString(rw, w.body)
		}),
		ReadHeaderTimeout: 10 * time.Second,
	}
	go func() { _ = srv.Serve(ln) }() // returns http.ErrServerClosed on Close
	w.srv = srv
	return nil
}

// stop closes the listener and every connection: the port refuses from now
// on, as when the web server process dies.
func (w *webServer) stop() error {
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.srv == nil {
		return nil
	}
	err := w.srv.Close()
	w.srv = nil
	if err != nil {
		return fmt.Errorf("%s: stop http server: %w", w.node.Role, err)
	}
	return nil
}

// client sends HTTP requests to the VIP from the client namespace. It
// speaks HTTP/1.1 on a socket of its own rather than through http.Client,
// so that "a new connection per request" and "the same connection" are
// exactly what happens.
type client struct {
	node *netns.Node
}

func newClient(node *netns.Node) *client {
	return &client{node: node}
}

// Client source ports, each used once per run. IPVS keeps a connection's
// entry for minutes after it ends (with direct routing it sees only the
// client's half of the close, so the entry stays in FIN_WAIT), and a new
// connection that reuses such an entry's source port goes to that entry's
// real server without being scheduled: round robin and "weight 0 takes no
// new connection" would then fail for a reason that is no scheduling at
// all. The range is below the kernel's ephemeral ports (32768 up).
const (
	firstClientPort = 10000
	clientPorts     = 22000
)

var clientPortSeq atomic.Uint32

func nextClientPort() int {
	return firstClientPort + int((clientPortSeq.Add(1)-1)%clientPorts)
}

func (c *client) dial(ctx context.Context, timeout time.Duration) (net.Conn, error) {
	var conn net.Conn
	err := c.node.Do(func() (err error) {
		d := net.Dialer{Timeout: timeout, LocalAddr: &net.TCPAddr{Port: nextClientPort()}}
		conn, err = d.DialContext(ctx, "tcp", netip.AddrPortFrom(VIP, ServicePort).String())
		return err
	})
	if err != nil {
		return nil, fmt.Errorf("client: connect to %v:%d: %w", VIP, ServicePort, err)
	}
	return conn, nil
}

// get sends one request on a new connection (so IPVS schedules it) and
// returns the body, e.g. "this is web1". The whole exchange is bounded by
// timeout.
func (c *client) get(ctx context.Context, timeout time.Duration) (string, error) {
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	conn, err := c.dial(ctx, timeout)
	if err != nil {
		return "", err
	}
	defer conn.Close()
	dl, _ := ctx.Deadline()
	_ = conn.SetDeadline(dl)
	return roundTrip(conn, bufio.NewReader(conn), false)
}

// keepAlive is one persistent HTTP/1.1 connection to the VIP.
type keepAlive struct {
	conn  net.Conn
	r     *bufio.Reader
	local string
}

func (c *client) keepAlive(ctx context.Context, timeout time.Duration) (*keepAlive, error) {
	conn, err := c.dial(ctx, timeout)
	if err != nil {
		return nil, err
	}
	return &keepAlive{conn: conn, r: bufio.NewReader(conn), local: conn.LocalAddr().String()}, nil
}

func (k *keepAlive) get(timeout time.Duration) (string, error) {
	_ = k.conn.SetDeadline(time.Now().Add(timeout))
	body, err := roundTrip(k.conn, k.r, true)
	if err != nil {
		return "", fmt.Errorf("keep-alive connection %s: %w", k.local, err)
	}
	return body, nil
}

func (k *keepAlive) close() { _ = k.conn.Close() }

// roundTrip writes a GET / and reads the response; the body is returned
// without its trailing newline.
func roundTrip(conn net.Conn, r *bufio.Reader, keep bool) (string, error) {
	connHdr := "close"
	if keep {
		connHdr = "keep-alive"
	}
	req := fmt.Sprintf("GET / HTTP/1.1\r\nHost: %v\r\nUser-Agent: lvsha-e2e\r\nConnection: %s\r\n\r\n", VIP, connHdr)
	if _, err := io.WriteString(conn, req); err != nil {
		return "", fmt.Errorf("send request: %w", err)
	}
	resp, err := http.ReadResponse(r, nil)
	if err != nil {
		return "", fmt.Errorf("read response: %w", err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(io.LimitReader(resp.Body, 1024))
	if err != nil {
		return "", fmt.Errorf("read body: %w", err)
	}
	if resp.StatusCode != http.StatusOK {
		return "", fmt.Errorf("status %s", resp.Status)
	}
	if keep && resp.Close {
		return "", errors.New("server closed the keep-alive connection")
	}
	return strings.TrimSpace(string(b)), nil
}

// ipvsStats are the totals of /proc/net/ip_vs_stats of a namespace.
type ipvsStats struct {
	Conns, InPkts, OutPkts, InBytes, OutBytes uint64
}

// readIPVSStats reads a namespace's IPVS totals from a thread inside it
// (/proc/net follows the process's main thread, /proc/thread-self/net the
// calling thread's namespace). The kernel updates them every 2 s.
func readIPVSStats(n *netns.NS) (ipvsStats, error) {
	var b []byte
	if err := n.Do(func() (err error) {
		b, err = os.ReadFile("/proc/thread-self/net/ip_vs_stats")
		return err
	}); err != nil {
		return ipvsStats{}, fmt.Errorf("%s: ip_vs_stats: %w", n.Name, err)
	}
	return parseIPVSStats(string(b))
}

// parseIPVSStats parses the totals line of /proc/net/ip_vs_stats:
//
//	Total Incoming Outgoing         Incoming         Outgoing
//	Conns  Packets  Packets            Bytes            Bytes
//	    7       2F        0             2A58                0
func parseIPVSStats(s string) (ipvsStats, error) {
	lines := strings.Split(s, "\n")
	if len(lines) < 3 {
		return ipvsStats{}, fmt.Errorf("ip_vs_stats: short file %q", s)
	}
	f := strings.Fields(lines[2])
	if len(f) != 5 {
		return ipvsStats{}, fmt.Errorf("ip_vs_stats: totals line %q: want 5 fields", lines[2])
	}
	var v [5]uint64
	for i, x := range f {
		n, err := strconv.ParseUint(x, 16, 64)
		if err != nil {
			return ipvsStats{}, fmt.Errorf("ip_vs_stats: totals line %q: %w", lines[2], err)
		}
		v[i] = n
	}
	return ipvsStats{Conns: v[0], InPkts: v[1], OutPkts: v[2], InBytes: v[3], OutBytes: v[4]}, nil
}
