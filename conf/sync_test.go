package conf

import (
	"net/netip"
	"testing"

	"github.com/lvsha/lvsha/lvs"
)

const syncBase = `
[[vrrp_instance]]
name = "VI_1"
interface = "eth0"
virtual_router_id = 51
virtual_ipaddress = ["192.168.94.200/24"]
`

// TestSyncDefaults: [sync] defaults to the followed instance's interface
// and VRID and to the kernel's group, port and TTL; keys override each.
func TestSyncDefaults(t *testing.T) {
	for _, tc := range []struct {
		name, src string
		want      lvs.SyncDaemon
	}{
		{"defaults", "[sync]\ninstance = \"VI_1\"\n",
			lvs.SyncDaemon{Interface: "eth0", SyncID: 51, Group: netip.MustParseAddr("224.0.0.81"), Port: 8848, TTL: 1}},
		{"every key", "[sync]\ninstance = \"VI_1\"\ninterface = \"eth1\"\nsync_id = 0\nmaxlen = 1400\ngroup = \"ff05::81\"\nport = 9000\nttl = 5\n",
			lvs.SyncDaemon{Interface: "eth1", SyncID: 0, MaxLen: 1400, Group: netip.MustParseAddr("ff05::81"), Port: 9000, TTL: 5}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			cfg, _, err := Parse("t.toml", []byte(syncBase+tc.src))
			if err != nil {
				t.Fatal(err)
			}
			if cfg.Sync == nil || cfg.Sync.Runtime != tc.want {
				t.Fatalf("sync %+v, want %+v", cfg.Sync, tc.want)
			}
		})
	}
	cfg, _, err := Parse("t.toml", []byte(syncBase))
	if err != nil || cfg.Sync != nil {
		t.Fatalf("no [sync]: %+v %v, want sync off", cfg.Sync, err)
	}
}
