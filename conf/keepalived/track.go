package keepalived

import (
	"path/filepath"
	"strconv"
	"strings"
	"time"
)

// trackDef is a vrrp_script or track_file as lvsha will run it.
type trackDef struct {
	node    *Node
	sec     *section
	weight  int
	reverse bool
	ok      bool // translated; a reference to one that is not is left out
}

// scanTracks reads the vrrp_script and track_file blocks before any
// instance is translated: an instance may name one defined after it.
func (t *translator) scanTracks(root *Node) {
	t.defs = map[string]*trackDef{}
	for _, n := range root.Children {
		switch n.Name {
		case "vrrp_script":
			t.scriptDef(n)
		case "track_file", "vrrp_track_file":
			t.fileDef(n)
		}
	}
	for _, d := range t.defs {
		if d.ok {
			d.sec.num("weight", d.weight)
			if d.reverse {
				d.sec.flag("reverse", true)
			}
		}
	}
}

func trackKey(kind, name string) string { return kind + " " + name }

func (t *translator) scriptDef(n *Node) {
	name := ""
	if len(n.Args) > 0 {
		name = n.Args[0]
	}
	s := &section{header: "[[track_script]]", comment: n.Pos() + ": vrrp_script " + name}
	d := &trackDef{node: n, sec: s}
	t.defs[trackKey("track_script", name)] = d
	var argv []string
	var interval, timeout time.Duration
	rise, fall := 1, 1
	for _, c := range n.Children {
		switch c.Name {
		case "script":
			a, user, err := scriptArgv(c)
			switch {
			case err != nil:
				t.warn(c, "vrrp_script %s: script: %v", name, err)
			case !filepath.IsAbs(a[0]):
				t.warn(c, "vrrp_script %s: %q is not an absolute path (lvsha runs scripts without a shell or PATH search): script left out", name, a[0])
			default:
				argv = a
			}
			if user != "" {
				t.warn(c, "vrrp_script %s: runs as user %q in keepalived; lvsha runs it as its own user, without network capabilities", name, user)
			}
		case "interval":
			if v, ok := t.timer(c); ok && v > 0 {
				interval = v
			}
		case "timeout":
			if v, ok := t.timer(c); ok && v > 0 {
				timeout = v
			}
		case "rise":
			if v, ok := t.intArg(c, 1, 1<<30); ok {
				rise = v
			}
		case "fall":
			if v, ok := t.intArg(c, 1, 1<<30); ok {
				fall = v
			}
		case "weight":
			if w, rev, ok := t.weightArgs(c, 253); ok {
				d.weight, d.reverse = w, rev
			}
		case "init_fail":
			t.warn(c, "vrrp_script %s: init_fail has no lvsha equivalent (a script's first result counts at once): left out", name)
		default:
			t.dropped(c, "vrrp_script "+name+":")
		}
	}
	if argv == nil {
		t.warn(n, "vrrp_script %s has no script lvsha can run: left out, and the instances naming it do not track it", name)
		return
	}
	d.ok = true
	s.str("name", name)
	s.strs("argv", argv)
	if interval == 0 {
		interval = time.Second // keepalived's default
	}
	s.dur("interval", interval)
	if timeout > 0 {
		s.dur("timeout", timeout)
	}
	s.num("rise", rise)
	s.num("fall", fall)
}

func (t *translator) fileDef(n *Node) {
	name := ""
	if len(n.Args) > 0 {
		name = n.Args[0]
	}
	s := &section{header: "[[track_file]]", comment: n.Pos() + ": " + n.Name + " " + name}
	d := &trackDef{node: n, sec: s, weight: 1} // keepalived's default weight
	t.defs[trackKey("track_file", name)] = d
	path := ""
	for _, c := range n.Children {
		switch c.Name {
		case "file":
			if p, ok := t.arg(c); ok {
				if filepath.IsAbs(p) {
					path = p
				} else {
					t.warn(c, "track_file %s: %q is not an absolute path: left out", name, p)
				}
			}
		case "weight":
			if w, rev, ok := t.weightArgs(c, 254); ok {
				d.weight, d.reverse = w, rev
			}
		case "init_file":
			t.warn(c, "track_file %s: init_file has no lvsha equivalent (a missing file counts as 0): left out", name)
		default:
			t.dropped(c, "track_file "+name+":")
		}
	}
	if path == "" {
		t.warn(n, "track_file %s has no file: left out, and the instances naming it do not track it", name)
		return
	}
	d.ok = true
	s.str("name", name)
	s.str("path", path)
}

// weightArgs reads "weight W [reverse]" arguments.
func (t *translator) weightArgs(n *Node, limit int) (w int, reverse, ok bool) {
	if len(n.Args) == 0 || len(n.Args) > 2 || len(n.Args) == 2 && n.Args[1] != "reverse" {
		t.warn(n, "weight %q: not W [reverse]: left out", strings.Join(n.Args, " "))
		return 0, false, false
	}
	w, err := strconv.Atoi(n.Args[0])
	if err != nil || w < -limit || w > limit {
		t.warn(n, "weight %q is not in -%d..%d: left out", n.Args[0], limit, limit)
		return 0, false, false
	}
	return w, len(n.Args) == 2, true
}

// emitDef puts a vrrp_script or track_file in the output where it stands.
func (t *translator) emitDef(n *Node, kind string) {
	name := ""
	if len(n.Args) > 0 {
		name = n.Args[0]
	}
	if d := t.defs[trackKey(kind, name)]; d != nil && d.ok {
		t.secs = append(t.secs, d.sec)
	}
}

// trackRefs translates an instance's track_script or track_file block into
// its references as TOML values: the name, or a table with the instance's
// own weight and reverse ("NAME weight W [reverse|noreverse]").
func (t *translator) trackRefs(instance string, b *Node) []string {
	kind := strings.TrimPrefix(b.Name, "track_")
	limit := 253
	if kind == "file" {
		limit = 254
	}
	var refs []string
	for _, r := range b.Children {
		d := t.defs[trackKey(b.Name, r.Name)]
		switch {
		case d == nil:
			t.warn(r, "%s %s: no such %s: left out", b.Name, r.Name, kind)
			continue
		case !d.ok:
			continue // warned at its definition
		}
		weight, own := d.weight, map[string]string{}
		if len(r.Args) > 0 {
			// keepalived 2.2.7 leaves out a reference with another option
			// or a weight without a value; a bad value falls back to the
			// tracked entry's weight, a bad third word is ignored.
			if r.Args[0] != "weight" || len(r.Args) == 1 {
				t.warn(r, "%s %s: %q is not weight W [reverse|noreverse]: left out, as keepalived does", b.Name, r.Name, strings.Join(r.Args, " "))
				continue
			}
			if w, err := strconv.Atoi(r.Args[1]); err != nil || w < -limit || w > limit {
				t.warn(r, "%s %s: weight %q is not in -%d..%d: the %s's own weight (%d) applies, as in keepalived", b.Name, r.Name, r.Args[1], limit, limit, kind, d.weight)
			} else if w != d.weight {
				weight, own["weight"] = w, strconv.Itoa(w)
			}
			if len(r.Args) > 2 {
				switch rev := r.Args[2]; {
				case rev != "reverse" && rev != "noreverse" || len(r.Args) > 3:
					t.warn(r, "%s %s: %q after the weight is not reverse or noreverse: ignored, as keepalived does", b.Name, r.Name, strings.Join(r.Args[2:], " "))
				case (rev == "reverse") != d.reverse:
					own["reverse"] = strconv.FormatBool(rev == "reverse")
				}
			}
		}
		if t.synced[instance] && weight != 0 {
			// keepalived 2.2.7: "ignoring tracked script ... with weights
			// due to SYNC group".
			t.warn(r, "%s %s: keepalived ignores a tracked %s with a weight (%d) in a sync group, and so does the import: left out",
				b.Name, r.Name, kind, weight)
			continue
		}
		if len(own) == 0 {
			refs = append(refs, tomlString(r.Name))
			continue
		}
		ref := "{name = " + tomlString(r.Name)
		for _, k := range []string{"weight", "reverse"} {
			if v, ok := own[k]; ok {
				ref += ", " + k + " = " + v
			}
		}
		refs = append(refs, ref+"}")
	}
	return refs
}

// syncGroup translates a vrrp_sync_group.
func (t *translator) syncGroup(n *Node) {
	name := ""
	if len(n.Args) > 0 {
		name = n.Args[0]
	}
	s := &section{header: "[[sync_group]]", comment: n.Pos() + ": vrrp_sync_group " + name}
	var members, notify []string
	for _, c := range n.Children {
		switch c.Name {
		case "group":
			for _, m := range c.Children {
				members = append(members, m.Name)
			}
		case "notify":
			argv, user, err := scriptArgv(c)
			switch {
			case err != nil:
				t.warn(c, "notify: %v: left out", err)
			case !filepath.IsAbs(argv[0]):
				t.warn(c, "notify: %q is not an absolute path (lvsha runs it without a PATH search): left out", argv[0])
			default:
				if user != "" {
					t.warn(c, "notify: runs as user %q in keepalived; lvsha runs it as its own user", user)
				}
				// keepalived appends "GROUP", the name and the state;
				// lvsha appends the last two.
				notify = append(argv, "GROUP")
			}
		default:
			t.dropped(c, "vrrp_sync_group "+name+":")
		}
	}
	s.str("name", name)
	s.strs("instances", members)
	if len(notify) > 0 {
		s.strs("notify", notify)
	}
	t.secs = append(t.secs, s)
}
