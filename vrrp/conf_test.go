package vrrp

import (
	"net/netip"
	"testing"
	"time"

	"github.com/lvsha/lvsha/conf"
)

func TestConfigFrom(t *testing.T) {
	c := conf.VRRPInstance{
		Name: "VI_1", Interface: "eth0", VRID: 51, Priority: 150, AdvertInterval: conf.Duration(time.Second),
		Version: 3, Preempt: true, Checksum: "rfc", GARPRepeat: 5, GARPDelay: conf.Duration(5 * time.Second),
		Track:       []conf.TrackInterface{{Name: "eth1", Weight: -50}},
		Notify:      []string{"/bin/true"},
		VIPPrefixes: []netip.Prefix{netip.MustParsePrefix("10.0.0.100/24")},
	}
	cfg := ConfigFrom(c)
	if cfg.VRID != 51 || cfg.Priority != 150 || cfg.ChecksumMode != ChecksumMessage || cfg.GARPDelay != 5*time.Second ||
		len(cfg.Track) != 1 || cfg.Track[0] != (TrackInterface{"eth1", -50}) || len(cfg.VIPs) != 1 || !cfg.Preempt {
		t.Fatalf("ConfigFrom = %+v", cfg)
	}
	if _, err := New(cfg, nil); err != nil {
		t.Fatal(err)
	}
	c.VRID, c.Checksum = 300, "keepalived"
	cfg = ConfigFrom(c)
	if cfg.ChecksumMode != ChecksumPseudoHeader {
		t.Error("checksum keepalived")
	}
	if _, err := New(cfg, nil); err == nil {
		t.Error("VRID 300 accepted")
	}
}
