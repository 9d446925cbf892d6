package e2e

import (
	"fmt"
	"strings"
	"time"

	"github.com/lvsha/lvsha/vrrp"
)

// Tuning is how the scenario adapts packaging/examples/director*.toml to the
// lab: the interface is the namespace's veth, the timers are short so a
// failover and a health transition take well under a second or two, and each
// director gets its own control socket (the VM has one filesystem for every
// namespace).
type Tuning struct {
	Interface      string        // vrrp_instance.interface (the examples say ens33)
	AdvertInterval time.Duration // vrrp_instance.advert_interval (the examples say 1s)
	CheckInterval  time.Duration // virtual_server.check.interval (2s)
	CheckTimeout   time.Duration // virtual_server.check.timeout (1s)
	Fall, Rise     int           // virtual_server.check.fall / rise (defaults 2 / 1)
	ControlSocket  string        // global.control_socket
	StateDir       string        // global.state_dir: one per director, they share the VM's disk
}

// DefaultTuning is what the scenario runs with. advert_interval 100ms gives
// a crash failover of about 3 x 100ms + skew (keepalived measured 388 ms at
// this interval), quick to watch yet a realistic setting. Checks every 1s
// with fall 2 take a dead web (connection refused) out of rotation within
// about 2s; the 800ms timeout is long because QEMU's emulated CPU, shared
// with other tests under `make test`, sometimes stalls for hundreds of
// milliseconds, and a false DOWN would break the round robin assertions.
func DefaultTuning() Tuning {
	return Tuning{
		Interface:      "eth0",
		AdvertInterval: 100 * time.Millisecond,
		CheckInterval:  time.Second,
		CheckTimeout:   800 * time.Millisecond,
		Fall:           2,
		Rise:           1,
	}
}

// FailBound is fall x interval + timeout: the time within which a dead real
// server must be out of rotation.
func (t Tuning) FailBound() time.Duration {
	return time.Duration(t.Fall)*t.CheckInterval + t.CheckTimeout
}

// RiseBound is rise x interval + timeout: the time within which a recovered
// real server must be back in rotation.
func (t Tuning) RiseBound() time.Duration {
	return time.Duration(t.Rise)*t.CheckInterval + t.CheckTimeout
}

// DeriveConfig rewrites an example director config for the lab. Every line
// it changes must be in the example exactly once, so when the examples
// change the scenario says which line it no longer finds instead of
// silently testing something else.
func DeriveConfig(example string, t Tuning) (string, error) {
	type edit struct{ old, new string }
	edits := []edit{
		{`interface = "ens33"`, fmt.Sprintf("interface = %q", t.Interface)},
		{`advert_interval = "1s"`, fmt.Sprintf("advert_interval = %q", t.AdvertInterval)},
		{`control_socket = "/run/lvsha/lvsha.sock"`, fmt.Sprintf("control_socket = %q\nstate_dir = %q", t.ControlSocket, t.StateDir)},
		{`interval = "2s"`, fmt.Sprintf("interval = %q", t.CheckInterval)},
		{`timeout = "1s"`, fmt.Sprintf("timeout = %q\nfall = %d\nrise = %d", t.CheckTimeout, t.Fall, t.Rise)},
	}
	lines := strings.Split(example, "\n")
	for _, e := range edits {
		found := 0
		for i, l := range lines {
			if strings.TrimSpace(l) == e.old {
				lines[i] = e.new
				found++
			}
		}
		if found != 1 {
			return "", fmt.Errorf("derive config: want the line `%s` exactly once in the example, found it %d times", e.old, found)
		}
	}
	return strings.Join(lines, "\n"), nil
}

// WithRealServer appends a real server to the last virtual_server of a
// config (the examples have one service, whose real servers come last).
func WithRealServer(cfg, addr string) string {
	return strings.TrimRight(cfg, "\n") + fmt.Sprintf("\n\n# added by the scenario before SIGHUP\n[[virtual_server.real_server]]\naddress = %q\nweight = 1\n", addr)
}

// MasterDownInterval is how long a VRRPv3 backup of that priority waits for a
// silent master (vrrp.MasterDownInterval), the floor of a crash failover.
func MasterDownInterval(interval time.Duration, priority int) time.Duration {
	return vrrp.MasterDownInterval(3, uint8(priority), interval)
}
