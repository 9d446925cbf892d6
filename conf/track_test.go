package conf

import (
	"reflect"
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
