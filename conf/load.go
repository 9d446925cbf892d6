package conf

import (
	"errors"
	"fmt"
	"os"
	"reflect"
	"slices"
	"sort"
	"strings"

	"github.com/BurntSushi/toml"
)

// Diag is one problem found in a config file.
type Diag struct {
	Pos     Pos
	Path    string // key path, e.g. virtual_server[0].real_server[1].weight
	Msg     string
	Warning bool // a warning does not make the config invalid
}

// Format renders the diagnostic as FILE:LINE:COL: key.path: message.
func (d Diag) Format(file string) string {
	var b strings.Builder
	b.WriteString(file)
	if d.Pos.Line > 0 {
		fmt.Fprintf(&b, ":%d", d.Pos.Line)
		if d.Pos.Col > 0 {
			fmt.Fprintf(&b, ":%d", d.Pos.Col)
		}
	}
	b.WriteString(": ")
	if d.Path != "" {
		b.WriteString(d.Path)
		b.WriteString(": ")
	}
	if d.Warning {
		b.WriteString("warning: ")
	}
	b.WriteString(d.Msg)
	return b.String()
}

// InvalidError is returned when a config has errors. It lists all of them.
type InvalidError struct {
	File  string
	Diags []Diag // errors and warnings, in file order
}

// Errors counts the diagnostics that are errors.
func (e *InvalidError) Errors() int {
	n := 0
	for _, d := range e.Diags {
		if !d.Warning {
			n++
		}
	}
	return n
}

func (e *InvalidError) Error() string {
	lines := make([]string, 0, len(e.Diags)+1)
	for _, d := range e.Diags {
		lines = append(lines, d.Format(e.File))
	}
	lines = append(lines, fmt.Sprintf("%s: %d error(s)", e.File, e.Errors()))
	return strings.Join(lines, "\n")
}

// Load reads and validates the config at file. A config with errors returns
// an *InvalidError; warnings of a valid config are returned beside it.
func Load(file string) (*Config, []Diag, error) {
	src, err := os.ReadFile(file)
	if err != nil {
		return nil, nil, fmt.Errorf("read config: %w", err)
	}
	cfg, warnings, err := Parse(file, src)
	if err != nil {
		return nil, nil, err
	}
	if fi, err := os.Stat(file); err == nil && fi.Mode().Perm()&0o044 != 0 {
		warnings = append(warnings, secretsReadable(cfg, src, fi.Mode().Perm())...)
	}
	return cfg, warnings, nil
}

// secretsReadable warns about each VRRP password in a file that users
// other than its owner can read (mode perm).
func secretsReadable(cfg *Config, src []byte, perm os.FileMode) []Diag {
	var out []Diag
	ix := indexPositions(src)
	for i, in := range cfg.VRRP {
		if in.AuthPass == "" {
			continue
		}
		path := fmt.Sprintf("vrrp_instance[%d].auth_pass", i)
		out = append(out, Diag{Pos: ix.lookup(path), Path: path, Warning: true,
			Msg: fmt.Sprintf("the file is readable by other users (mode %04o) and holds this password: chmod 600 it", perm)})
	}
	return out
}

// Parse is Load for a config already read.
func Parse(file string, src []byte) (*Config, []Diag, error) {
	var raw map[string]any
	if _, err := toml.Decode(string(src), &raw); err != nil {
		d := Diag{Msg: "syntax error: " + err.Error()}
		var pe toml.ParseError
		if errors.As(err, &pe) {
			d.Pos = Pos{Line: pe.Position.Line, Col: pe.Position.Col}
			d.Msg = "syntax error: " + pe.Message
		}
		return nil, nil, &InvalidError{File: file, Diags: []Diag{d}}
	}
	var diags []Diag
	cfg := &Config{Global: defaultGlobal(), File: file}
	dec := decoder{diags: &diags}
	dec.decodeStruct("", raw, reflect.ValueOf(cfg).Elem())
	// Each real server's check is the service's check with its own keys on
	// top. Real servers without keys of their own share the service's
	// (read-only) Check: 10,000 copies would be 2 MB.
	for i := range cfg.Services {
		vs := &cfg.Services[i]
		for j := range vs.Reals {
			rs := &vs.Reals[j]
			rs.check = vs.Check
			if rs.CheckOverride != nil && vs.Check != nil {
				c := *vs.Check
				rs.check = &c
			}
			if rs.CheckOverride != nil {
				if rs.check == nil {
					c := defaultCheck()
					rs.check = &c
				}
				dec.decodeStruct(fmt.Sprintf("virtual_server[%d].real_server[%d].check", i, j), rs.CheckOverride.m, reflect.ValueOf(rs.check).Elem())
			}
		}
	}
	v := validator{cfg: cfg}
	v.run()
	// A key that did not decode keeps its default, so what validation says
	// of it would be noise after the real error.
	decodeErrs := slices.Clone(diags)
	for _, vd := range v.diags {
		if !underAny(vd.Path, decodeErrs) {
			diags = append(diags, vd)
		}
	}

	ix := indexPositions(src)
	for i := range diags {
		diags[i].Pos = ix.lookup(diags[i].Path)
	}
	sort.SliceStable(diags, func(a, b int) bool {
		pa, pb := diags[a].Pos, diags[b].Pos
		if pa.Line != pb.Line {
			return pa.Line < pb.Line
		}
		return pa.Col < pb.Col
	})
	for _, d := range diags {
		if !d.Warning {
			return nil, nil, &InvalidError{File: file, Diags: diags}
		}
	}
	return cfg, diags, nil
}

// Summary says in a few lines what a valid config declares.
func (c *Config) Summary() string {
	var b strings.Builder
	reals := 0
	for _, vs := range c.Services {
		reals += len(vs.Reals)
	}
	fmt.Fprintf(&b, "%d vrrp instance(s), %d virtual service(s), %d real server(s)", len(c.VRRP), len(c.Services), reals)
	if c.Realserver != nil {
		fmt.Fprintf(&b, ", realserver with %d VIP(s) on lo", len(c.Realserver.Runtime.VIPs))
	}
	b.WriteString("\n")
	for _, in := range c.VRRP {
		fmt.Fprintf(&b, "  vrrp %s: VRID %d on %s, priority %d, v%d every %s, VIPs %s",
			in.Name, in.VRID, in.Interface, in.Priority, in.Version, in.AdvertInterval, strings.Join(in.VIPs, " "))
		// The weights this instance uses, its own where it sets them.
		var tracks []string
		for _, f := range in.Runtime.TrackFiles {
			tracks = append(tracks, trackSummary("file", f.Name, f.Weight, f.Reverse))
		}
		for _, s := range in.Runtime.TrackScripts {
			tracks = append(tracks, trackSummary("script", s.Name, s.Weight, s.Reverse))
		}
		if len(tracks) > 0 {
			b.WriteString(", tracks " + strings.Join(tracks, ", "))
		}
		b.WriteString("\n")
	}
	for _, g := range c.SyncGroups {
		fmt.Fprintf(&b, "  sync_group %s: %s\n", g.Name, strings.Join(g.Instances, " "))
	}
	for _, f := range c.TrackFiles {
		fmt.Fprintf(&b, "  track_file %s: %s, weight %d\n", f.Name, f.Path, f.Weight)
	}
	for _, s := range c.TrackScripts {
		fmt.Fprintf(&b, "  track_script %s: %s every %s (timeout %s, rise %d, fall %d), weight %d\n",
			s.Name, strings.Join(s.Argv, " "), s.Interval, s.Timeout, s.Rise, s.Fall, s.Weight)
	}
	for _, vs := range c.Services {
		fmt.Fprintf(&b, "  service %s: %s %s, %d real server(s)\n", vs.ID, vs.Scheduler, vs.Forwarding, len(vs.Reals))
	}
	if sy := c.Sync; sy != nil {
		r := sy.Runtime
		fmt.Fprintf(&b, "  sync: following %s on %s, sync id %d, group %v port %d ttl %d\n", sy.Instance, r.Interface, r.SyncID, r.Group, r.Port, r.TTL)
	}
	if bg := c.BGP; bg != nil {
		fmt.Fprintf(&b, "  bgp: AS %d, router id %s, announcing %s on %s to %d neighbour(s)\n", bg.ASN, bg.RouterID, strings.Join(bg.Announce, " "), bg.Interface, len(bg.Neighbors))
	}
	if rs := c.Realserver; rs != nil {
		arp := "ARP suppressed on " + rs.Interface
		if !rs.Runtime.SuppressesARP() {
			arp = "no ARP setting (IPv6 VIPs only)"
		}
		fmt.Fprintf(&b, "  realserver: VIPs %s on lo, %s\n", strings.Join(rs.VIPs, " "), arp)
	}
	return b.String()
}

func trackSummary(kind, name string, weight int, reverse bool) string {
	s := fmt.Sprintf("%s %s weight %d", kind, name, weight)
	if reverse {
		s += " reverse"
	}
	return s
}

func underAny(path string, decodeErrs []Diag) bool {
	for _, d := range decodeErrs {
		if path == d.Path || strings.HasPrefix(path, d.Path+".") || strings.HasPrefix(path, d.Path+"[") {
			return true
		}
	}
	return false
}
