package conf

import (
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/lvsha/lvsha/vrrp"
)

// TestTrackDefaults: keepalived's defaults (file weight 1; script every
// second, rise and fall 1, weight 0, timeout = interval), and the
// instance's runtime carries the weights of the entries it names.
func TestTrackDefaults(t *testing.T) {
	cfg, _, err := Parse("t.toml", []byte(syncBase+`track_file = ["drain"]
track_script = ["gw", "agent"]

[[track_file]]
name = "drain"
path = "/run/lvsha/drain"

[[track_script]]
name = "gw"
argv = ["/usr/bin/true"]

[[track_script]]
name = "agent"
argv = ["/usr/bin/true", "x"]
interval = "2s"
timeout = "500ms"
rise = 3
fall = 2
weight = -60
reverse = true
`))
	if err != nil {
		t.Fatal(err)
	}
	if f := cfg.TrackFiles[0]; f.Weight != 1 || f.Reverse {
		t.Errorf("track_file defaults %+v", f)
	}
	gw, agent := cfg.TrackScripts[0], cfg.TrackScripts[1]
	if gw.Interval.D() != time.Second || gw.Timeout.D() != time.Second || gw.Rise != 1 || gw.Fall != 1 || gw.Weight != 0 {
		t.Errorf("track_script defaults %+v", gw)
	}
	if agent.Interval.D() != 2*time.Second || agent.Timeout.D() != 500*time.Millisecond || agent.Rise != 3 || agent.Fall != 2 {
		t.Errorf("track_script keys %+v", agent)
	}
	rt := cfg.VRRP[0].Runtime
	if want := []vrrp.TrackFile{{Name: "drain", Weight: 1}}; !reflect.DeepEqual(rt.TrackFiles, want) {
		t.Errorf("runtime files %+v, want %+v", rt.TrackFiles, want)
	}
	if want := []vrrp.TrackScript{{Name: "gw"}, {Name: "agent", Weight: -60, Reverse: true}}; !reflect.DeepEqual(rt.TrackScripts, want) {
		t.Errorf("runtime scripts %+v, want %+v", rt.TrackScripts, want)
	}
}

// TestTrackOwnerWarning: an address owner's priority does not move, so a
// weight other than 0 is a warning.
func TestTrackOwnerWarning(t *testing.T) {
	_, warnings, err := Parse("t.toml", []byte(syncBase+`priority = 255
track_file = ["drain"]

[[track_file]]
name = "drain"
path = "/run/lvsha/drain"
`))
	if err != nil {
		t.Fatal(err)
	}
	found := false
	for _, w := range warnings {
		found = found || w.Path == "vrrp_instance[0].track_file[0]"
	}
	if !found {
		t.Errorf("no warning for weight 1 on an address owner: %v", warnings)
	}
}

// TestTrackRefOverride: an instance's reference may set its own weight and
// reverse (keepalived's `track_script { chk weight -20 }`); what it leaves
// unset is the entry's. Two instances use one script with two weights, and
// a sync group member may track a weighted script with weight 0.
func TestTrackRefOverride(t *testing.T) {
	cfg, _, err := Parse("t.toml", []byte(syncBase+`track_file = [{name = "drain", weight = -2, reverse = true}]
track_script = ["agent", {name = "gw", weight = -20}, {name = "agent2", reverse = false}]

[[vrrp_instance]]
name = "VI_2"
interface = "eth1"
virtual_router_id = 52
virtual_ipaddress = ["10.0.0.1/24"]
track_script = [{name = "gw", weight = 0}]

[[sync_group]]
name = "G"
instances = ["VI_2"]

[[track_file]]
name = "drain"
path = "/run/lvsha/drain"

[[track_script]]
name = "gw"
argv = ["/usr/bin/true"]
weight = -60

[[track_script]]
name = "agent"
argv = ["/usr/bin/true"]
weight = 10
reverse = true

[[track_script]]
name = "agent2"
argv = ["/usr/bin/true"]
weight = 10
reverse = true
`))
	if err != nil {
		t.Fatal(err)
	}
	rt := cfg.VRRP[0].Runtime
	if want := []vrrp.TrackFile{{Name: "drain", Weight: -2, Reverse: true}}; !reflect.DeepEqual(rt.TrackFiles, want) {
		t.Errorf("runtime files %+v, want %+v", rt.TrackFiles, want)
	}
	if want := []vrrp.TrackScript{{Name: "agent", Weight: 10, Reverse: true}, {Name: "gw", Weight: -20}, {Name: "agent2", Weight: 10}}; !reflect.DeepEqual(rt.TrackScripts, want) {
		t.Errorf("runtime scripts %+v, want %+v", rt.TrackScripts, want)
	}
	if want := []vrrp.TrackScript{{Name: "gw"}}; !reflect.DeepEqual(cfg.VRRP[1].Runtime.TrackScripts, want) {
		t.Errorf("VI_2 runtime scripts %+v, want %+v", cfg.VRRP[1].Runtime.TrackScripts, want)
	}
	if sum := cfg.Summary(); !strings.Contains(sum, "tracks file drain weight -2 reverse, script agent weight 10 reverse, script gw weight -20, script agent2 weight 10\n") ||
		!strings.Contains(sum, "VIPs 10.0.0.1/24, tracks script gw weight 0\n") {
		t.Errorf("summary lacks the weights each instance uses:\n%s", sum)
	}
	// The entry keeps its own weight for the status.
	if cfg.TrackScripts[0].Weight != -60 {
		t.Errorf("track_script gw weight %d, want -60", cfg.TrackScripts[0].Weight)
	}
}
