package vrrp

import (
	"time"

	"github.com/lvsha/lvsha/conf"
)

// ConfigFrom turns a validated conf.VRRPInstance into a Config (the daemon
// calls it for every [[vrrp_instance]]). Invalid values left in c are caught
// by New.
func ConfigFrom(c conf.VRRPInstance) Config {
	cfg := Config{
		Name:           c.Name,
		Interface:      c.Interface,
		VRID:           uint8(c.VRID),
		Priority:       uint8(c.Priority),
		AdvertInterval: time.Duration(c.AdvertInterval),
		Version:        c.Version,
		Preempt:        c.Preempt,
		PreemptDelay:   time.Duration(c.PreemptDelay),
		VIPs:           c.VIPPrefixes,
		UnicastSrc:     c.UnicastSrcAddr,
		UnicastPeers:   c.PeerAddrs,
		AuthPass:       c.AuthPass,
		GARPRepeat:     c.GARPRepeat,
		GARPDelay:      time.Duration(c.GARPDelay),
		GARPRefresh:    time.Duration(c.GARPRefresh),
		GARPInterval:   time.Duration(c.GARPInterval),
		Notify:         c.Notify,
	}
	if c.VRID < 0 || c.VRID > 255 {
		cfg.VRID = 0 // refused by New
	}
	if c.Priority < 0 || c.Priority > 255 {
		cfg.Priority = 0
	}
	if c.Checksum == "rfc" {
		cfg.ChecksumMode = ChecksumMessage
	}
	for _, t := range c.Track {
		cfg.Track = append(cfg.Track, TrackInterface{Name: t.Name, Weight: t.Weight})
	}
	return cfg
}
