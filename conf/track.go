package conf

import (
	"fmt"
	"os"
	"path/filepath"
	"time"

	"github.com/lvsha/lvsha/vrrp"
)

// TrackFile is a file holding a number that moves the priority of the
// instances naming it in track_file (keepalived's track_file): the number
// times Weight is added (Reverse subtracts it); a result below -253 puts the
// instance in FAULT; weight 0 faults on any number but 0. A missing file
// counts as 0. `echo -254 > /run/lvsha/drain` drains a director.
type TrackFile struct {
	Name    string `toml:"name"`
	Path    string `toml:"path"`
	Weight  int    `toml:"weight"`
	Reverse bool   `toml:"reverse"`
}

// TrackScript is a command run every Interval (keepalived's vrrp_script),
// without a shell, under normal scheduling and without the daemon's
// capabilities, killed with its process group at Timeout. It is failing
// after Fall failures in a row and succeeding after Rise successes; its
// first result counts at once. Weight moves the priority of the instances
// naming it as keepalived's does: a positive weight is added while it
// succeeds, a negative one while it fails, 0 is FAULT while it fails;
// Reverse swaps success and failure.
type TrackScript struct {
	Name     string   `toml:"name"`
	Argv     []string `toml:"argv"`
	Interval Duration `toml:"interval"`
	// Timeout defaults to Interval, as in keepalived.
	Timeout Duration `toml:"timeout"`
	Rise    int      `toml:"rise"`
	Fall    int      `toml:"fall"`
	Weight  int      `toml:"weight"`
	Reverse bool     `toml:"reverse"`
}

// TrackRef is an instance's reference to a [[track_file]] or
// [[track_script]]: its name, or a table with the name and this instance's
// own weight or reverse, as keepalived's `track_script { chk weight -20 }`
// in a vrrp_instance. Unset, they are the tracked entry's.
type TrackRef struct {
	Name    string `toml:"name"`
	Weight  *int   `toml:"weight"`
	Reverse *bool  `toml:"reverse"`
}

// setName takes the short form, a bare name.
func (r *TrackRef) setName(s string) { r.Name = s }

// resolve is the weight and reverse this instance uses, given the tracked
// entry's.
func (r TrackRef) resolve(weight int, reverse bool) (int, bool) {
	if r.Weight != nil {
		weight = *r.Weight
	}
	if r.Reverse != nil {
		reverse = *r.Reverse
	}
	return weight, reverse
}

func defaultTrackFile() TrackFile { return TrackFile{Weight: 1} } // keepalived's default weight

func defaultTrackScript() TrackScript {
	// keepalived's defaults: every second, rise and fall 1, weight 0.
	return TrackScript{Interval: Duration(time.Second), Rise: 1, Fall: 1}
}

// fileWeightMax and scriptWeightMax bound the weights as keepalived does (-254..254 for
// files, so that one file can fault an instance of any priority; -253..253
// for scripts).
const (
	fileWeightMax   = 254
	scriptWeightMax = 253
)

// tracks validates [[track_file]] and [[track_script]].
func (v *validator) tracks() {
	seen := map[string]string{}
	for i := range v.cfg.TrackFiles {
		p := fmt.Sprintf("track_file[%d]", i)
		f := &v.cfg.TrackFiles[i]
		v.trackName(p, f.Name, seen)
		switch {
		case f.Path == "":
			v.errf(p+".path", "required but missing")
		case !filepath.IsAbs(f.Path):
			v.errf(p+".path", "%q is not an absolute path", f.Path)
		}
		v.fileWeight(p+".weight", f.Weight)
	}
	seen = map[string]string{}
	for i := range v.cfg.TrackScripts {
		p := fmt.Sprintf("track_script[%d]", i)
		s := &v.cfg.TrackScripts[i]
		v.trackName(p, s.Name, seen)
		switch {
		case len(s.Argv) == 0:
			v.errf(p+".argv", "required but missing (the command and its arguments; no shell)")
		case !filepath.IsAbs(s.Argv[0]):
			v.errf(p+".argv[0]", "%q is not an absolute path (scripts run without a shell or PATH search)", s.Argv[0])
		default:
			if fi, err := os.Stat(s.Argv[0]); err != nil {
				v.errf(p+".argv[0]", "%v", err)
			} else if !fi.Mode().IsRegular() || fi.Mode().Perm()&0o111 == 0 {
				v.errf(p+".argv[0]", "%s is not an executable file", s.Argv[0])
			}
		}
		if s.Interval <= 0 {
			v.errf(p+".interval", "%s: must be positive", s.Interval)
		}
		if s.Timeout == 0 {
			s.Timeout = s.Interval
		} else if s.Timeout < 0 {
			v.errf(p+".timeout", "%s: must be positive", s.Timeout)
		}
		if s.Rise < 1 {
			v.errf(p+".rise", "%d: must be at least 1", s.Rise)
		}
		if s.Fall < 1 {
			v.errf(p+".fall", "%d: must be at least 1", s.Fall)
		}
		v.scriptWeight(p+".weight", s.Weight)
	}
}

func (v *validator) fileWeight(p string, w int) {
	if w < -fileWeightMax || w > fileWeightMax {
		v.errf(p, "%d is outside -%d..%d (0 = FAULT on any number but 0)", w, fileWeightMax, fileWeightMax)
	}
}

func (v *validator) scriptWeight(p string, w int) {
	if w < -scriptWeightMax || w > scriptWeightMax {
		v.errf(p, "%d is outside -%d..%d (0 = FAULT while failing)", w, scriptWeightMax, scriptWeightMax)
	}
}

func (v *validator) trackName(p, name string, seen map[string]string) {
	if name == "" {
		v.errf(p+".name", "required but missing")
		return
	}
	if prev, ok := seen[name]; ok {
		v.errf(p+".name", "%q is already the name of %s", name, prev)
		return
	}
	seen[name] = p
}

// instanceTracks resolves an instance's track_file and track_script
// references into its runtime config, with the weights it uses.
func (v *validator) instanceTracks(p string, in *VRRPInstance) {
	rt := &in.Runtime
	rt.TrackFiles, rt.TrackScripts = nil, nil
	seen := map[string]bool{}
	for j, ref := range in.TrackFile {
		tp := fmt.Sprintf("%s.track_file[%d]", p, j)
		f := findTrack(v.cfg.TrackFiles, func(f TrackFile) bool { return f.Name == ref.Name })
		if ref.Weight != nil {
			v.fileWeight(tp+".weight", *ref.Weight)
		}
		switch {
		case ref.Name == "":
			v.errf(tp+".name", "required but missing")
		case f == nil:
			v.errf(tp, "no [[track_file]] is named %q", ref.Name)
		case seen[ref.Name]:
			v.errf(tp, "%q is listed twice", ref.Name)
		default:
			w, rev := ref.resolve(f.Weight, f.Reverse)
			rt.TrackFiles = append(rt.TrackFiles, vrrp.TrackFile{Name: ref.Name, Weight: w, Reverse: rev})
			v.ownerWeight(tp, in, w)
		}
		seen[ref.Name] = true
	}
	seen = map[string]bool{}
	for j, ref := range in.TrackScript {
		tp := fmt.Sprintf("%s.track_script[%d]", p, j)
		s := findTrack(v.cfg.TrackScripts, func(s TrackScript) bool { return s.Name == ref.Name })
		if ref.Weight != nil {
			v.scriptWeight(tp+".weight", *ref.Weight)
		}
		switch {
		case ref.Name == "":
			v.errf(tp+".name", "required but missing")
		case s == nil:
			v.errf(tp, "no [[track_script]] is named %q", ref.Name)
		case seen[ref.Name]:
			v.errf(tp, "%q is listed twice", ref.Name)
		default:
			w, rev := ref.resolve(s.Weight, s.Reverse)
			rt.TrackScripts = append(rt.TrackScripts, vrrp.TrackScript{Name: ref.Name, Weight: w, Reverse: rev})
			v.ownerWeight(tp, in, w)
		}
		seen[ref.Name] = true
	}
}

// ownerWeight warns that an address owner's priority does not move.
func (v *validator) ownerWeight(p string, in *VRRPInstance, weight int) {
	if in.Priority == 255 && weight != 0 {
		v.warnf(p, "priority 255 (address owner) never changes: weight %d has no effect, only weight 0 (FAULT) does", weight)
	}
}

func findTrack[T any](ts []T, match func(T) bool) *T {
	for i := range ts {
		if match(ts[i]) {
			return &ts[i]
		}
	}
	return nil
}

// SyncGroup is instances that fail over together (keepalived's
// vrrp_sync_group), such as a NAT director's outside VIP and the real
// servers' inside gateway: while one member is in FAULT every member is.
// Notify, if set, runs at each change of the group's state (FAULT if a
// member is, MASTER if all are, else BACKUP), without a shell, with the
// group's name and state appended.
type SyncGroup struct {
	Name      string   `toml:"name"`
	Instances []string `toml:"instances"`
	Notify    []string `toml:"notify"`
	// NotifyTimeout bounds each notify run, as an instance's does.
	NotifyTimeout time.Duration `toml:"-"`
}

// syncGroups validates [[sync_group]].
func (v *validator) syncGroups() {
	names := map[string]string{}
	member := map[string]string{} // instance: the group it is in
	for i := range v.cfg.SyncGroups {
		p := fmt.Sprintf("sync_group[%d]", i)
		g := &v.cfg.SyncGroups[i]
		v.trackName(p, g.Name, names)
		g.NotifyTimeout = notifyTimeout
		if len(g.Instances) == 0 {
			v.errf(p+".instances", "required but missing (the vrrp_instance names that fail over together)")
		} else if len(g.Instances) == 1 {
			v.warnf(p+".instances", "a group of one instance does nothing")
		}
		for j, name := range g.Instances {
			ip := fmt.Sprintf("%s.instances[%d]", p, j)
			if findTrack(v.cfg.VRRP, func(in VRRPInstance) bool { return in.Name == name }) == nil {
				v.errf(ip, "no vrrp_instance is named %q", name)
				continue
			}
			if prev, ok := member[name]; ok {
				v.errf(ip, "instance %q is already in %s (an instance is in one group at most)", name, prev)
				continue
			}
			member[name] = p
			v.groupWeights(p, name)
		}
		if len(g.Notify) > 0 && !filepath.IsAbs(g.Notify[0]) {
			v.errf(p+".notify[0]", "%q is not an absolute path (notify runs without a shell or PATH search)", g.Notify[0])
		}
	}
}

// groupWeights refuses weights other than 0 in what a sync group member
// tracks, as keepalived does: a weight moves one member alone, and the
// group then flaps between the directors (one member preempted, the others
// stepped down, then preempting back). Weight 0 (FAULT) moves the group.
func (v *validator) groupWeights(group, instance string) {
	for i := range v.cfg.VRRP {
		in := &v.cfg.VRRP[i]
		if in.Name != instance {
			continue
		}
		p := fmt.Sprintf("vrrp_instance[%d]", i)
		const why = "instance %q is in %s: only weight 0 (FAULT) moves a sync group together"
		for j, t := range in.Track {
			if t.Weight != 0 {
				v.errf(fmt.Sprintf("%s.track_interface[%d].weight", p, j), why, instance, group)
			}
		}
		for j, ref := range in.TrackFile {
			if f := findTrack(v.cfg.TrackFiles, func(f TrackFile) bool { return f.Name == ref.Name }); f != nil {
				if w, _ := ref.resolve(f.Weight, f.Reverse); w != 0 {
					v.errf(fmt.Sprintf("%s.track_file[%d]", p, j), "track_file %q has weight %d; "+why, ref.Name, w, instance, group)
				}
			}
		}
		for j, ref := range in.TrackScript {
			if s := findTrack(v.cfg.TrackScripts, func(s TrackScript) bool { return s.Name == ref.Name }); s != nil {
				if w, _ := ref.resolve(s.Weight, s.Reverse); w != 0 {
					v.errf(fmt.Sprintf("%s.track_script[%d]", p, j), "track_script %q has weight %d; "+why, ref.Name, w, instance, group)
				}
			}
		}
	}
}
