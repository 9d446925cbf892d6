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

// TestSyncActiveActive: with [bgp], [sync] may follow no instance (the
// master daemon runs all the time); its interface must be given then, and
// its sync_id defaults to 0, which takes every id.
func TestSyncActiveActive(t *testing.T) {
	const bgpBase = `
[[virtual_server]]
address = "10.99.0.1:80"
[[virtual_server.real_server]]
address = "10.0.0.100:80"

[bgp]
asn = 65001
router_id = "10.0.0.1"
announce = ["10.99.0.1"]
[[bgp.neighbor]]
address = "10.0.0.254"
asn = 65000
`
	cfg, _, err := Parse("t.toml", []byte(bgpBase+"[sync]\ninterface = \"eth1\"\n"))
	if err != nil {
		t.Fatal(err)
	}
	want := lvs.SyncDaemon{Interface: "eth1", Group: netip.MustParseAddr("224.0.0.81"), Port: 8848, TTL: 1}
	if cfg.Sync == nil || cfg.Sync.Instance != "" || cfg.Sync.Runtime != want {
		t.Fatalf("sync %+v, want %+v", cfg.Sync, want)
	}
	if _, _, err := Parse("t.toml", []byte("[sync]\ninterface = \"eth1\"\n")); err == nil {
		t.Fatal("[sync] without instance and without [bgp] accepted")
	}
}
