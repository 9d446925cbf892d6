package keepalived

import (
	"encoding/json"
	"fmt"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/lvsha/lvsha/internal/testenv/netns"
	"github.com/lvsha/lvsha/internal/testenv/testutil"
)

// The migration this package is for, for real: one director keeps running
// keepalived 2.2.7 with its keepalived.conf, the other runs lvsha with the
// TOML `lvsha import` made of its own keepalived.conf; the two elect one
// master, fail over and preempt between them, in two namespaces on a bridge.

var (
	pairVIP    = netip.MustParsePrefix("10.97.0.100/24")
	pairA      = netip.MustParsePrefix("10.97.0.2/24")
	pairB      = netip.MustParsePrefix("10.97.0.3/24")
	pairPrefix = netns.UniquePrefix("lvk")
)

// pairConf is the keepalived.conf of one director: only what differs
// between the two (priority, unicast addresses) is a parameter. It has
// no virtual_server: the build machines' kernel has no IPVS.
func pairConf(version, prio int, self, peer netip.Addr, extra string) string {
	s := fmt.Sprintf(`! director at %s
vrrp_instance VI_1 {
    state BACKUP
    interface eth0
    virtual_router_id 61
    priority %d
    virtual_ipaddress {
        %s dev eth0
    }
`, self, prio, pairVIP)
	if version == 3 {
		s += "    version 3\n    advert_int 0.1\n"
	}
	if peer.IsValid() {
		s += fmt.Sprintf("    unicast_src_ip %s\n    unicast_peer {\n        %s\n    }\n", self, peer)
	}
	return s + extra + "}\n"
}

type speaker struct {
	t    *testing.T
	node *netns.Node
	cmd  *exec.Cmd
	done chan struct{}
	log  string
	sock string // lvsha's control socket; "" = keepalived
	bin  string
}

func (s *speaker) start(cmd *exec.Cmd) {
	s.t.Helper()
	lf, err := os.Create(s.log)
	if err != nil {
		s.t.Fatal(err)
	}
	cmd.Stdout, cmd.Stderr = lf, lf
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	if err := s.node.Start(cmd); err != nil {
		s.t.Fatal(err)
	}
	lf.Close()
	s.cmd, s.done = cmd, make(chan struct{})
	go func() { _ = cmd.Wait(); close(s.done) }()
	s.t.Cleanup(func() {
		_ = syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL)
		<-s.done
		if s.t.Failed() {
			b, _ := os.ReadFile(s.log)
			s.t.Logf("log of %s:\n%s", s.node.Name, b)
		}
	})
}

func (s *speaker) stop() {
	s.t.Helper()
	_ = s.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-s.done:
	case <-time.After(10 * time.Second):
		s.t.Fatalf("%s did not stop", s.node.Name)
	}
}

func (s *speaker) holdsVIP() bool {
	ok, err := s.node.HasAddr("eth0", pairVIP.Addr())
	if err != nil {
		s.t.Fatal(err)
	}
	return ok
}

// state is lvsha's VRRP state and the master it hears, from `lvsha status`.
func (s *speaker) state() (state, master string, received uint64, dropped map[string]uint64) {
	out, err := exec.Command(s.bin, "status", "--json", "-S", s.sock).Output()
	if err != nil {
		return "", "", 0, nil
	}
	var st struct {
		VRRP []struct {
			State   string            `json:"state"`
			Master  string            `json:"master"`
			In      uint64            `json:"adverts_received"`
			Dropped map[string]uint64 `json:"dropped"`
		} `json:"vrrp"`
	}
	if json.Unmarshal(out, &st) != nil || len(st.VRRP) == 0 {
		return "", "", 0, nil
	}
	v := st.VRRP[0]
	return v.State, v.Master, v.In, v.Dropped
}

func startKeepalivedConf(t *testing.T, node *netns.Node, conf string) *speaker {
	t.Helper()
	bin, err := exec.LookPath("keepalived")
	if err != nil {
		testutil.Unavailable(t, "keepalived not installed (make setup)")
	}
	dir := t.TempDir()
	file := filepath.Join(dir, "keepalived.conf")
	if err := os.WriteFile(file, []byte(conf), 0o644); err != nil {
		t.Fatal(err)
	}
	s := &speaker{t: t, node: node, log: filepath.Join(dir, "log")}
	s.start(exec.Command(bin, "-n", "-l", "-D", "-P", "-f", file,
		"-p", filepath.Join(dir, "keepalived.pid"), "-r", filepath.Join(dir, "vrrp.pid")))
	return s
}

// startImported imports conf and runs the real lvsha daemon on the result.
func startImported(t *testing.T, node *netns.Node, conf string) *speaker {
	t.Helper()
	bin := buildLvsha(t)
	dir := t.TempDir()
	kfile := filepath.Join(dir, "keepalived.conf")
	if err := os.WriteFile(kfile, []byte(conf), 0o644); err != nil {
		t.Fatal(err)
	}
	toml := filepath.Join(dir, "lvsha.toml")
	out, err := exec.Command(bin, "import", "--check", "-o", toml, kfile).CombinedOutput()
	if err != nil {
		t.Fatalf("lvsha import --check: %v\n%s", err, out)
	}
	// The test's own places for the socket and the state; the import
	// wrote no [global] (the config has no global_defs).
	sock := filepath.Join(dir, "lvsha.sock")
	f, err := os.OpenFile(toml, os.O_APPEND|os.O_WRONLY, 0)
	if err != nil {
		t.Fatal(err)
	}
	fmt.Fprintf(f, "\n[global]\nlog_level = \"debug\"\ncontrol_socket = %q\nstate_dir = %q\n", sock, filepath.Join(dir, "state"))
	f.Close()
	if out, err := exec.Command(bin, "-t", "-f", toml).CombinedOutput(); err != nil {
		t.Fatalf("lvsha -t on the imported config: %v\n%s", err, out)
	}
	s := &speaker{t: t, node: node, log: filepath.Join(dir, "log"), sock: sock, bin: bin}
	s.start(exec.Command(bin, "-f", toml))
	return s
}

// buildLvsha is the real lvsha binary (testutil.LvshaBinary).
func buildLvsha(t *testing.T) string { return testutil.LvshaBinary(t) }

func waitUntil(t *testing.T, what string, timeout time.Duration, cond func() bool) {
	t.Helper()
	if !netns.WaitFor(timeout, 20*time.Millisecond, cond) {
		t.Fatalf("timed out after %v waiting for %s", timeout, what)
	}
}

// TestNetnsImportedPairsWithKeepalived: a keepalived director (priority
// 150) and an lvsha director running its imported config (priority 100)
// elect keepalived; lvsha takes over when keepalived stops and gives the
// VIP back when it returns (keepalived preempts by default, and the
// import keeps that). Both keepalived defaults and explicit v3 unicast.
func TestNetnsImportedPairsWithKeepalived(t *testing.T) {
	if testing.Short() {
		testutil.Unavailable(t, "namespace tests do not run with -short")
	}
	testutil.NeedRoot(t)
	for _, tc := range []struct {
		name    string
		version int
		unicast bool
		extra   string
	}{
		// keepalived's defaults: VRRPv2, 1 s adverts, multicast; a password.
		{"v2-defaults-password", 2, false, "    authentication {\n        auth_type PASS\n        auth_pass secret12\n    }\n"},
		{"v3-unicast-100ms", 3, true, ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			lab, err := netns.NewLab(pairPrefix)
			if err != nil {
				t.Fatal(err)
			}
			t.Cleanup(func() { lab.Close() })
			a, err := lab.AddNode("a", pairA)
			if err != nil {
				t.Fatal(err)
			}
			b, err := lab.AddNode("b", pairB)
			if err != nil {
				t.Fatal(err)
			}
			var peerA, peerB netip.Addr
			if tc.unicast {
				peerA, peerB = pairB.Addr(), pairA.Addr()
			}
			confA := pairConf(tc.version, 150, pairA.Addr(), peerA, tc.extra)
			confB := pairConf(tc.version, 100, pairB.Addr(), peerB, tc.extra)
			// Master_Down_Interval: about 3.6 s for v2, 0.4 s for v3 at 100 ms.
			slow := 6 * time.Second
			if tc.version == 3 {
				slow = 3 * time.Second
			}

			ka := startKeepalivedConf(t, a, confA)
			waitUntil(t, "keepalived MASTER", slow+3*time.Second, ka.holdsVIP)
			lv := startImported(t, b, confB)
			waitUntil(t, "lvsha BACKUP hearing keepalived", slow, func() bool {
				st, m, in, _ := lv.state()
				return st == "BACKUP" && m == pairA.Addr().String() && in > 2 && ka.holdsVIP() && !lv.holdsVIP()
			})

			t.Log("keepalived stops: lvsha takes over")
			ka.stop()
			waitUntil(t, "lvsha MASTER", slow, func() bool {
				st, _, _, _ := lv.state()
				return st == "MASTER" && lv.holdsVIP() && !ka.holdsVIP()
			})

			t.Log("keepalived returns with a lower priority: it hears lvsha and stays BACKUP")
			low := startKeepalivedConf(t, a, pairConf(tc.version, 50, pairA.Addr(), peerA, tc.extra))
			// Twice Master_Down_Interval: a keepalived that dropped
			// lvsha's adverts would have taken the VIP by then.
			deadline := time.Now().Add(slow + 2*time.Second)
			for time.Now().Before(deadline) {
				if low.holdsVIP() || !lv.holdsVIP() {
					t.Fatalf("keepalived with priority 50 took the VIP from lvsha: it does not accept lvsha's adverts")
				}
				time.Sleep(50 * time.Millisecond)
			}
			low.stop()

			t.Log("keepalived returns with its higher priority: it preempts lvsha")
			ka = startKeepalivedConf(t, a, confA)
			waitUntil(t, "keepalived MASTER again", slow+3*time.Second, func() bool {
				st, _, _, _ := lv.state()
				return st == "BACKUP" && ka.holdsVIP() && !lv.holdsVIP()
			})
			_, _, _, dropped := lv.state()
			for _, k := range []string{"checksum", "auth", "version", "addresses", "interval"} {
				if dropped[k] > 0 {
					t.Errorf("lvsha dropped keepalived's adverts: %v", dropped)
				}
			}
			if t.Failed() {
				t.Logf("keepalived.conf of a:\n%s\nof b:\n%s", confA, strings.TrimSpace(confB))
			}
		})
	}
}
