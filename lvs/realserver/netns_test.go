package realserver

// Real-kernel tests. Each realserver operation and each ARP probe runs in a
// helper process (this test binary, re-executed under `ip netns exec NS`),
// because /proc/sys/net and every socket follow the namespace of the
// calling thread: a whole process in the namespace is exactly how the CLI
// runs on a real host, with no thread-pinning tricks in between.

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"maps"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/lvsha/lvsha/internal/testenv/testutil"
	"github.com/mdlayher/arp"
)

const helperEnv = "LVSHA_REALSERVER_HELPER"

func TestMain(m *testing.M) {
	if op := os.Getenv(helperEnv); op != "" {
		if err := runHelper(op); err != nil {
			fmt.Fprintln(os.Stderr, err)
			os.Exit(1)
		}
		os.Exit(0)
	}
	os.Exit(m.Run())
}

// runHelper is the child side: one operation in the namespace it runs in.
func runHelper(op string) error {
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	var cfg Config
	for _, s := range strings.Fields(os.Getenv("LVSHA_RS_VIPS")) {
		v, err := netip.ParseAddr(s)
		if err != nil {
			return err
		}
		cfg.VIPs = append(cfg.VIPs, v)
	}
	cfg.Interface = os.Getenv("LVSHA_RS_IF")
	opts := Options{StateDir: os.Getenv("LVSHA_RS_STATE")}
	switch op {
	case "up":
		return Up(ctx, cfg, opts)
	case "down":
		rep, err := Down(ctx, cfg, opts)
		if jerr := json.NewEncoder(os.Stdout).Encode(rep); jerr != nil {
			return jerr
		}
		return err
	case "status":
		ps, err := Status(ctx, cfg, opts)
		if err != nil {
			return err
		}
		return json.NewEncoder(os.Stdout).Encode(ps)
	case "arp":
		target, err := netip.ParseAddr(os.Getenv("LVSHA_RS_TARGET"))
		if err != nil {
			return err
		}
		wait, err := time.ParseDuration(os.Getenv("LVSHA_RS_WAIT"))
		if err != nil {
			return err
		}
		mac, err := arpProbe(cfg.Interface, target, wait)
		if err != nil {
			return err
		}
		fmt.Println(mac) // empty line: no reply
		return nil
	}
	return fmt.Errorf("unknown helper op %q", op)
}

// arpProbe asks "who has target" on ifname every 100 ms until a reply comes
// or wait has passed; it returns the replier's MAC, "" if none replied.
func arpProbe(ifname string, target netip.Addr, wait time.Duration) (string, error) {
	ifi, err := net.InterfaceByName(ifname)
	if err != nil {
		return "", err
	}
	c, err := arp.Dial(ifi)
	if err != nil {
		return "", fmt.Errorf("arp dial %s: %w", ifname, err)
	}
	defer c.Close()
	end := time.Now().Add(wait)
	for time.Now().Before(end) {
		if err := c.Request(target); err != nil {
			return "", fmt.Errorf("arp request: %w", err)
		}
		deadline := time.Now().Add(100 * time.Millisecond)
		if end.Before(deadline) {
			deadline = end
		}
		if err := c.SetReadDeadline(deadline); err != nil {
			return "", err
		}
		for {
			p, _, err := c.Read()
			var ne net.Error
			if errors.As(err, &ne) && ne.Timeout() {
				break
			}
			if err != nil {
				return "", fmt.Errorf("arp read: %w", err)
			}
			if p.Operation == arp.OperationReply && p.SenderIP == target {
				return p.SenderHardwareAddr.String(), nil
			}
		}
	}
	return "", nil
}

// lab is a bridge namespace with two hosts on it: a real server and a client.
type lab struct {
	prefix   string // namespace name prefix, unique to this run
	rs, cl   string // namespace names
	stateDir string
}

const (
	labIf  = "eth0"
	rsAddr = "10.94.0.134"
	clAddr = "10.94.0.10"
)

var labVIP = netip.MustParseAddr("10.94.0.200")

func ipCmd(t *testing.T, args ...string) string {
	t.Helper()
	out, err := exec.Command("ip", args...).CombinedOutput()
	if err != nil {
		t.Fatalf("ip %s: %v\n%s", strings.Join(args, " "), err, out)
	}
	return string(out)
}

// newLab builds lan (bridge br0), rs and cl namespaces, each host with eth0
// on the bridge. Everything is removed when the test ends, also on failure.
func newLab(t *testing.T) *lab {
	t.Helper()
	testutil.NeedRoot(t)
	if _, err := exec.LookPath("ip"); err != nil {
		testutil.Unavailable(t, "needs iproute2 (ip)")
	}
	l := &lab{prefix: fmt.Sprintf("lvrs%d", os.Getpid()), stateDir: t.TempDir()}
	lan := l.prefix + "-lan"
	l.rs, l.cl = l.prefix+"-rs", l.prefix+"-cl"
	for _, ns := range []string{lan, l.rs, l.cl} {
		ipCmd(t, "netns", "add", ns)
		t.Cleanup(func() {
			if out, err := exec.Command("ip", "netns", "del", ns).CombinedOutput(); err != nil {
				t.Errorf("delete netns %s: %v %s", ns, err, out)
			}
		})
		ipCmd(t, "-n", ns, "link", "set", "lo", "up")
	}
	ipCmd(t, "-n", lan, "link", "add", "br0", "type", "bridge")
	ipCmd(t, "-n", lan, "link", "set", "br0", "up")
	for host, addr := range map[string]string{l.rs: rsAddr, l.cl: clAddr} {
		port := "p" + host[len(host)-2:]
		ipCmd(t, "-n", lan, "link", "add", port, "type", "veth", "peer", "name", labIf, "netns", host)
		ipCmd(t, "-n", lan, "link", "set", port, "master", "br0", "up")
		ipCmd(t, "-n", host, "addr", "add", addr+"/24", "dev", labIf)
		ipCmd(t, "-n", host, "link", "set", labIf, "up")
	}
	return l
}

// helper runs one helper operation in namespace ns.
func (l *lab) helper(t *testing.T, ns, op string, env ...string) (string, error) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, "ip", "netns", "exec", ns, os.Args[0])
	cmd.Env = append(os.Environ(), helperEnv+"="+op, "LVSHA_RS_STATE="+l.stateDir,
		"LVSHA_RS_VIPS="+labVIP.String(), "LVSHA_RS_IF="+labIf)
	cmd.Env = append(cmd.Env, env...)
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	if err := cmd.Run(); err != nil {
		return stdout.String(), fmt.Errorf("helper %s in %s: %w: %s", op, ns, err, stderr.String())
	}
	return stdout.String(), nil
}

func (l *lab) mustHelper(t *testing.T, ns, op string, env ...string) string {
	t.Helper()
	out, err := l.helper(t, ns, op, env...)
	if err != nil {
		t.Fatal(err)
	}
	return out
}

// arpReply probes target from the client; "" means no reply within wait.
func (l *lab) arpReply(t *testing.T, target string, wait time.Duration) string {
	t.Helper()
	return strings.TrimSpace(l.mustHelper(t, l.cl, "arp", "LVSHA_RS_TARGET="+target, "LVSHA_RS_WAIT="+wait.String()))
}

func (l *lab) status(t *testing.T) []Problem {
	t.Helper()
	var ps []Problem
	if err := json.Unmarshal([]byte(l.mustHelper(t, l.rs, "status")), &ps); err != nil {
		t.Fatal(err)
	}
	return ps
}

// sysctls reads the ARP sysctls of the real server with cat, independently
// of the code under test.
func (l *lab) sysctls(t *testing.T) map[string]string {
	t.Helper()
	m := map[string]string{}
	for _, i := range []string{"all", "default", "lo", labIf} {
		for _, n := range []string{"arp_ignore", "arp_announce"} {
			key := confKey(i, n)
			out, err := exec.Command("ip", "netns", "exec", l.rs, "cat", "/proc/sys/"+key).CombinedOutput()
			if err != nil {
				t.Fatalf("read %s: %v %s", key, err, out)
			}
			m[key] = strings.TrimSpace(string(out))
		}
	}
	return m
}

func (l *lab) setSysctl(t *testing.T, key, value string) {
	t.Helper()
	out, err := exec.Command("ip", "netns", "exec", l.rs, "sh", "-c", "echo "+value+" > /proc/sys/"+key).CombinedOutput()
	if err != nil {
		t.Fatalf("set %s: %v %s", key, err, out)
	}
}

// addrs lists dev's IPv4 addresses with their scope, as `ip` reports them,
// and their label and noprefixroute where set.
func (l *lab) addrs(t *testing.T, dev string) []string {
	t.Helper()
	var links []struct {
		AddrInfo []struct {
			Family        string `json:"family"`
			Local         string `json:"local"`
			Prefixlen     int    `json:"prefixlen"`
			Scope         string `json:"scope"`
			Label         string `json:"label"`
			NoPrefixRoute bool   `json:"noprefixroute"`
		} `json:"addr_info"`
	}
	if err := json.Unmarshal([]byte(ipCmd(t, "-n", l.rs, "-j", "addr", "show", "dev", dev)), &links); err != nil {
		t.Fatal(err)
	}
	var out []string
	for _, li := range links {
		for _, a := range li.AddrInfo {
			if a.Family != "inet" {
				continue
			}
			s := fmt.Sprintf("%s/%d scope %s", a.Local, a.Prefixlen, a.Scope)
			if a.Label != dev {
				s += " label " + a.Label
			}
			if a.NoPrefixRoute {
				s += " noprefixroute"
			}
			out = append(out, s)
		}
	}
	slices.Sort(out)
	return out
}

// noReplyWait bounds how long the client waits for an ARP reply that must
// not come; a reply that does come takes a millisecond on a bridge.
const noReplyWait = 1500 * time.Millisecond

func TestRealServerInNamespaces(t *testing.T) {
	l := newLab(t)
	rsMAC := strings.TrimSpace(ipCmd(t, "netns", "exec", l.rs, "cat", "/sys/class/net/"+labIf+"/address"))

	// Originals Down must put back exactly, including non-default ones.
	l.setSysctl(t, "net/ipv4/conf/all/arp_ignore", "0")
	l.setSysctl(t, "net/ipv4/conf/all/arp_announce", "1")
	l.setSysctl(t, "net/ipv4/conf/"+labIf+"/arp_ignore", "0")
	l.setSysctl(t, "net/ipv4/conf/"+labIf+"/arp_announce", "0")
	before := l.sysctls(t)

	// Control: with the VIP on lo and no ARP suppression the kernel answers
	// ARP for it on eth0. This is what Up must prevent, and proves the probe
	// can see such a reply.
	ipCmd(t, "-n", l.rs, "addr", "add", labVIP.String()+"/32", "dev", "lo")
	if got := l.arpReply(t, labVIP.String(), 5*time.Second); got != rsMAC {
		t.Fatalf("control: ARP for the VIP on an unconfigured host got %q, want %s", got, rsMAC)
	}
	// Gone again, so the VIP below is one up adds (down keeps one it found:
	// TestRealServerDownKeepsWhatUpFound).
	ipCmd(t, "-n", l.rs, "addr", "del", labVIP.String()+"/32", "dev", "lo")

	l.mustHelper(t, l.rs, "up")
	if got, want := l.addrs(t, "lo"), []string{"10.94.0.200/32 scope host", "127.0.0.1/8 scope host"}; !slices.Equal(got, want) {
		t.Errorf("lo after up = %q, want %q", got, want)
	}
	after := l.sysctls(t)
	for _, i := range []string{"all", labIf} {
		if after[confKey(i, "arp_ignore")] != "1" || after[confKey(i, "arp_announce")] != "2" {
			t.Errorf("sysctls of %s after up: %v", i, after)
		}
	}
	// Control: the real server still answers ARP for its own address...
	if got := l.arpReply(t, rsAddr, 5*time.Second); got != rsMAC {
		t.Fatalf("ARP for the real server's own address got %q, want %s", got, rsMAC)
	}
	// ...but not for the VIP.
	if got := l.arpReply(t, labVIP.String(), noReplyWait); got != "" {
		t.Errorf("real server answered ARP for the VIP after up (from %s)", got)
	}
	if ps := l.status(t); len(ps) != 0 {
		t.Errorf("status after up = %q, want none", ps)
	}

	statePath := filepath.Join(l.stateDir, StateFile)
	saved, err := os.ReadFile(statePath)
	if err != nil {
		t.Fatalf("no state file after up: %v", err)
	}
	l.mustHelper(t, l.rs, "up")
	if again, _ := os.ReadFile(statePath); !bytes.Equal(saved, again) {
		t.Errorf("second up rewrote the saved originals:\n%s\n%s", saved, again)
	}

	l.mustHelper(t, l.rs, "down")
	if got := l.sysctls(t); !maps.Equal(got, before) {
		t.Errorf("sysctls after down = %v, want %v", got, before)
	}
	if got := l.addrs(t, "lo"); !slices.Equal(got, []string{"127.0.0.1/8 scope host"}) {
		t.Errorf("lo after down = %q", got)
	}
	if _, err := os.Stat(statePath); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("state file after down: %v", err)
	}
	if _, err := l.helper(t, l.rs, "down"); err == nil || !strings.Contains(err.Error(), ErrNoState.Error()) {
		t.Errorf("second down = %v, want it to say the sysctls were not restored", err)
	}

	// A half-configured host: the VIP on eth0 instead of lo, only "all"
	// suppressed.
	ipCmd(t, "-n", l.rs, "addr", "add", labVIP.String()+"/32", "dev", labIf)
	l.setSysctl(t, "net/ipv4/conf/all/arp_ignore", "1")
	l.setSysctl(t, "net/ipv4/conf/all/arp_announce", "2")
	want := []Problem{
		"VIP 10.94.0.200 missing on lo",
		"VIP 10.94.0.200 also on eth0",
		"net.ipv4.conf.eth0.arp_ignore is 0, want 1",
		"net.ipv4.conf.eth0.arp_announce is 0, want 2",
	}
	if got := l.status(t); !slices.Equal(got, want) {
		t.Errorf("status of a half-configured host:\n got %q\nwant %q", got, want)
	}
}

func TestRealServerUpUnknownInterfaceChangesNothing(t *testing.T) {
	l := newLab(t)
	before := l.sysctls(t)
	_, err := l.helper(t, l.rs, "up", "LVSHA_RS_IF=eth9")
	if err == nil || !strings.Contains(err.Error(), "interface eth9 not found") {
		t.Fatalf("up on a missing interface = %v", err)
	}
	if got := l.sysctls(t); !maps.Equal(got, before) {
		t.Errorf("sysctls changed: %v, were %v", got, before)
	}
	if got := l.addrs(t, "lo"); !slices.Equal(got, []string{"127.0.0.1/8 scope host"}) {
		t.Errorf("lo changed: %q", got)
	}
	if _, err := os.Stat(filepath.Join(l.stateDir, StateFile)); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("state file left: %v", err)
	}
}

// down runs down in the real server and returns its report.
func (l *lab) down(t *testing.T, env ...string) Report {
	t.Helper()
	var rep Report
	if err := json.Unmarshal([]byte(l.mustHelper(t, l.rs, "down", env...)), &rep); err != nil {
		t.Fatal(err)
	}
	return rep
}

// TestRealServerDownKeepsWhatUpFound: a VIP already on lo with scope host
// before up is not up's: down leaves it and removes only the one up added.
func TestRealServerDownKeepsWhatUpFound(t *testing.T) {
	l := newLab(t)
	const found = "10.94.0.201"
	vipsEnv := "LVSHA_RS_VIPS=" + labVIP.String() + " " + found
	ipCmd(t, "-n", l.rs, "addr", "add", found+"/32", "dev", "lo", "scope", "host")
	loBefore, sysBefore := l.addrs(t, "lo"), l.sysctls(t)

	l.mustHelper(t, l.rs, "up", vipsEnv)
	want := []string{"10.94.0.200/32 scope host", found + "/32 scope host", "127.0.0.1/8 scope host"}
	if got := l.addrs(t, "lo"); !slices.Equal(got, want) {
		t.Fatalf("lo after up = %q, want %q", got, want)
	}
	rep := l.down(t, vipsEnv)
	if got := l.addrs(t, "lo"); !slices.Equal(got, loBefore) {
		t.Errorf("lo after down = %q, want %q (the VIP up found kept)", got, loBefore)
	}
	if got := l.sysctls(t); !maps.Equal(got, sysBefore) {
		t.Errorf("sysctls after down = %v, want %v", got, sysBefore)
	}
	if !slices.Equal(rep.Removed, []netip.Addr{labVIP}) || len(rep.Left) != 1 {
		t.Errorf("report = %+v, want %s removed and %s left", rep, labVIP, found)
	}
}

// TestRealServerRestoresGlobalVIP: a VIP on lo with scope global (a label
// and noprefixroute too) gets scope host from up, with label and flag
// kept, and its scope global back from down.
func TestRealServerRestoresGlobalVIP(t *testing.T) {
	l := newLab(t)
	ipCmd(t, "-n", l.rs, "addr", "add", labVIP.String()+"/32", "dev", "lo", "label", "lo:vip", "noprefixroute")
	before := l.addrs(t, "lo")
	if want := []string{"10.94.0.200/32 scope global label lo:vip noprefixroute", "127.0.0.1/8 scope host"}; !slices.Equal(before, want) {
		t.Fatalf("setup: lo = %q, want %q", before, want)
	}
	l.mustHelper(t, l.rs, "up")
	if got, want := l.addrs(t, "lo"), []string{"10.94.0.200/32 scope host label lo:vip noprefixroute", "127.0.0.1/8 scope host"}; !slices.Equal(got, want) {
		t.Errorf("lo after up = %q, want %q", got, want)
	}
	if ps := l.status(t); len(ps) != 0 {
		t.Errorf("status after up = %q", ps)
	}
	rep := l.down(t)
	if got := l.addrs(t, "lo"); !slices.Equal(got, before) {
		t.Errorf("lo after down = %q, want %q", got, before)
	}
	if !slices.Equal(rep.Rescoped, []netip.Addr{labVIP}) || len(rep.Removed) != 0 {
		t.Errorf("report = %+v, want %s rescoped only", rep, labVIP)
	}
}

// TestRealServerRestoresSysctlsUpWrote: down puts back each sysctl up
// wrote, and leaves one up found acceptable and one changed since up.
func TestRealServerRestoresSysctlsUpWrote(t *testing.T) {
	l := newLab(t)
	l.setSysctl(t, "net/ipv4/conf/all/arp_ignore", "2") // acceptable: up keeps it
	l.setSysctl(t, "net/ipv4/conf/all/arp_announce", "1")
	l.setSysctl(t, "net/ipv4/conf/"+labIf+"/arp_ignore", "0")
	l.setSysctl(t, "net/ipv4/conf/"+labIf+"/arp_announce", "0")
	before := l.sysctls(t)
	l.mustHelper(t, l.rs, "up")
	up := l.sysctls(t)
	for key, want := range map[string]string{
		"net/ipv4/conf/all/arp_ignore": "2", "net/ipv4/conf/all/arp_announce": "2",
		"net/ipv4/conf/eth0/arp_ignore": "1", "net/ipv4/conf/eth0/arp_announce": "2",
	} {
		if up[key] != want {
			t.Errorf("%s = %s after up, want %s", key, up[key], want)
		}
	}
	// Someone else's changes after up: down must not undo them.
	l.setSysctl(t, "net/ipv4/conf/all/arp_ignore", "3")
	l.setSysctl(t, "net/ipv4/conf/"+labIf+"/arp_ignore", "8")
	rep := l.down(t)
	want := maps.Clone(before)
	want["net/ipv4/conf/all/arp_ignore"] = "3"
	want["net/ipv4/conf/eth0/arp_ignore"] = "8"
	if got := l.sysctls(t); !maps.Equal(got, want) {
		t.Errorf("sysctls after down = %v, want %v", got, want)
	}
	if wantR := []string{"net.ipv4.conf.all.arp_announce=1", "net.ipv4.conf.eth0.arp_announce=0"}; !slices.Equal(rep.Restored, wantR) {
		t.Errorf("restored = %q, want %q", rep.Restored, wantR)
	}
}

// TestRealServerUpTwiceThenDown: the second up sees the first one's VIP
// and sysctls in place and must keep them recorded as up's changes, so
// down still restores the host as it was before the first up.
func TestRealServerUpTwiceThenDown(t *testing.T) {
	l := newLab(t)
	const found, added = "10.94.0.201", "10.94.0.202"
	vipsEnv := "LVSHA_RS_VIPS=" + strings.Join([]string{labVIP.String(), found, added}, " ")
	ipCmd(t, "-n", l.rs, "addr", "add", labVIP.String()+"/32", "dev", "lo", "label", "lo:vip")
	ipCmd(t, "-n", l.rs, "addr", "add", found+"/32", "dev", "lo", "scope", "host")
	l.setSysctl(t, "net/ipv4/conf/all/arp_announce", "1")
	loBefore, sysBefore := l.addrs(t, "lo"), l.sysctls(t)

	l.mustHelper(t, l.rs, "up", vipsEnv)
	statePath := filepath.Join(l.stateDir, StateFile)
	first, err := os.ReadFile(statePath)
	if err != nil {
		t.Fatal(err)
	}
	l.mustHelper(t, l.rs, "up", vipsEnv)
	if second, _ := os.ReadFile(statePath); !bytes.Equal(first, second) {
		t.Errorf("second up changed the record:\n%s\n%s", first, second)
	}
	l.down(t, vipsEnv)
	if got := l.addrs(t, "lo"); !slices.Equal(got, loBefore) {
		t.Errorf("lo after up, up, down = %q, want %q", got, loBefore)
	}
	if got := l.sysctls(t); !maps.Equal(got, sysBefore) {
		t.Errorf("sysctls after up, up, down = %v, want %v", got, sysBefore)
	}
}

// addrs6 lists dev's IPv6 addresses as "addr/len" plus " nodad" where set.
func (l *lab) addrs6(t *testing.T, dev string) []string {
	t.Helper()
	var links []struct {
		AddrInfo []struct {
			Family    string `json:"family"`
			Local     string `json:"local"`
			Prefixlen int    `json:"prefixlen"`
			NoDAD     bool   `json:"nodad"`
		} `json:"addr_info"`
	}
	if err := json.Unmarshal([]byte(ipCmd(t, "-n", l.rs, "-j", "addr", "show", "dev", dev)), &links); err != nil {
		t.Fatal(err)
	}
	var out []string
	for _, li := range links {
		for _, a := range li.AddrInfo {
			if a.Family != "inet6" {
				continue
			}
			s := fmt.Sprintf("%s/%d", a.Local, a.Prefixlen)
			if a.NoDAD {
				s += " nodad"
			}
			out = append(out, s)
		}
	}
	slices.Sort(out)
	return out
}

// neighbour pings target from the client once and returns the MAC its
// neighbour cache then holds for it, "" if the address did not resolve.
func (l *lab) neighbour(t *testing.T, target string) string {
	t.Helper()
	ipCmd(t, "-n", l.cl, "-6", "neigh", "flush", "dev", labIf)
	_ = exec.Command("ip", "netns", "exec", l.cl, "ping", "-6", "-c", "1", "-W", "1", target).Run()
	var neigh []struct {
		Dst    string   `json:"dst"`
		LLAddr string   `json:"lladdr"`
		State  []string `json:"state"`
	}
	if err := json.Unmarshal([]byte(ipCmd(t, "-n", l.cl, "-j", "-6", "neigh", "show", target, "dev", labIf)), &neigh); err != nil {
		t.Fatal(err)
	}
	for _, n := range neigh {
		if n.LLAddr != "" && !slices.Contains(n.State, "FAILED") && !slices.Contains(n.State, "INCOMPLETE") {
			return n.LLAddr
		}
	}
	return ""
}

// TestRealServerIPv6: an IPv6 VIP goes on lo as a /128 with nodad, the
// host does not answer neighbour solicitations for it on eth0 (no sysctl
// needed: the control shows it does answer for the same address on eth0),
// status is clean, and down removes exactly it. A config with IPv6 VIPs
// only touches no ARP sysctl.
func TestRealServerIPv6(t *testing.T) {
	l := newLab(t)
	const vip6 = "2001:db8:94::200"
	rsMAC := strings.TrimSpace(ipCmd(t, "netns", "exec", l.rs, "cat", "/sys/class/net/"+labIf+"/address"))
	ipCmd(t, "-n", l.rs, "addr", "add", "2001:db8:94::134/64", "dev", labIf, "nodad")
	ipCmd(t, "-n", l.cl, "addr", "add", "2001:db8:94::10/64", "dev", labIf, "nodad")

	// Control: the probe sees an answer for the VIP where the host does
	// answer, on eth0.
	ipCmd(t, "-n", l.rs, "addr", "add", vip6+"/128", "dev", labIf, "nodad")
	if got := l.neighbour(t, vip6); got != rsMAC {
		t.Fatalf("control: the VIP on eth0 resolved to %q, want %s", got, rsMAC)
	}
	ipCmd(t, "-n", l.rs, "addr", "del", vip6+"/128", "dev", labIf)
	loBefore, sysBefore := l.addrs6(t, "lo"), l.sysctls(t)

	dual := "LVSHA_RS_VIPS=" + labVIP.String() + " " + vip6
	l.mustHelper(t, l.rs, "up", dual)
	if got, want := l.addrs6(t, "lo"), []string{"2001:db8:94::200/128 nodad", "::1/128"}; !slices.Equal(got, want) {
		t.Errorf("lo after up = %q, want %q", got, want)
	}
	if got, want := l.addrs(t, "lo"), []string{"10.94.0.200/32 scope host", "127.0.0.1/8 scope host"}; !slices.Equal(got, want) {
		t.Errorf("lo (IPv4) after up = %q, want %q", got, want)
	}
	if got := l.neighbour(t, vip6); got != "" {
		t.Errorf("the real server answered a neighbour solicitation for the VIP on lo (from %s)", got)
	}
	if ps := l.status(t); len(ps) != 0 {
		t.Errorf("status after up = %q, want none", ps)
	}
	rep := l.down(t, dual)
	if !slices.Contains(rep.Removed, netip.MustParseAddr(vip6)) {
		t.Errorf("down report %+v does not name %s", rep, vip6)
	}
	if got := l.addrs6(t, "lo"); !slices.Equal(got, loBefore) {
		t.Errorf("lo after down = %q, want %q", got, loBefore)
	}
	if got := l.sysctls(t); !maps.Equal(got, sysBefore) {
		t.Errorf("sysctls after down = %v, want %v", got, sysBefore)
	}

	// IPv6 only: no sysctl is written; a VIP already on lo is kept by
	// down; status names a VIP that is on eth0 as well.
	v6only := "LVSHA_RS_VIPS=" + vip6 + " 2001:db8:94::201"
	ipCmd(t, "-n", l.rs, "addr", "add", "2001:db8:94::201/128", "dev", "lo")
	loBefore = l.addrs6(t, "lo")
	l.mustHelper(t, l.rs, "up", v6only)
	if got := l.sysctls(t); !maps.Equal(got, sysBefore) {
		t.Errorf("an IPv6-only up changed sysctls: %v, were %v", got, sysBefore)
	}
	ipCmd(t, "-n", l.rs, "addr", "add", vip6+"/128", "dev", labIf, "nodad")
	var ps []Problem
	if err := json.Unmarshal([]byte(l.mustHelper(t, l.rs, "status", v6only)), &ps); err != nil {
		t.Fatal(err)
	}
	if want := []Problem{"VIP " + vip6 + " also on eth0"}; !slices.Equal(ps, want) {
		t.Errorf("status with the VIP on eth0 too = %q, want %q", ps, want)
	}
	ipCmd(t, "-n", l.rs, "addr", "del", vip6+"/128", "dev", labIf)
	l.down(t, v6only)
	if got := l.addrs6(t, "lo"); !slices.Equal(got, loBefore) {
		t.Errorf("lo after an IPv6-only down = %q, want %q (the VIP up found kept)", got, loBefore)
	}
}
