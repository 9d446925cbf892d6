package vm

import (
	"bufio"
	"bytes"
	"debug/elf"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
)

// DefaultModules are loaded in every VM: IPVS with every scheduler the 6.1
// kernel ships (twos only exists from 6.7 on), veth and bridge for namespace
// topologies. Dependencies are added automatically.
var DefaultModules = []string{
	"ip_vs", "ip_vs_rr", "ip_vs_wrr", "ip_vs_lc", "ip_vs_wlc", "ip_vs_lblc",
	"ip_vs_lblcr", "ip_vs_dh", "ip_vs_sh", "ip_vs_sed", "ip_vs_nq",
	"ip_vs_fo", "ip_vs_ovf", "ip_vs_mh", "veth", "bridge",
}

// moduleAliases maps soft dependencies that name a crypto algorithm rather
// than a module to the module providing it.
var moduleAliases = map[string]string{"crc32c": "crc32c_generic"}

func modName(s string) string { return strings.ReplaceAll(strings.TrimSpace(s), "-", "_") }

// moduleSet resolves module names to .ko files in load order (dependencies
// first). Debian's package ships no modules.dep, so the dependencies come
// from each module's .modinfo section (depends= and softdep= pre:).
type moduleSet struct {
	index   map[string]string // name -> path
	builtin map[string]bool
	order   []string
	paths   []string
	deps    map[string][]string // name -> hard dependencies, for modules.dep
	state   map[string]int      // 1 visiting, 2 done
}

func newModuleSet(modDir string) (*moduleSet, error) {
	m := &moduleSet{index: map[string]string{}, builtin: map[string]bool{}, state: map[string]int{}, deps: map[string][]string{}}
	err := filepath.WalkDir(filepath.Join(modDir, "kernel"), func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if !d.IsDir() && strings.HasSuffix(p, ".ko") {
			m.index[modName(strings.TrimSuffix(d.Name(), ".ko"))] = p
		}
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("index modules: %w", err)
	}
	if b, err := os.ReadFile(filepath.Join(modDir, "modules.builtin")); err == nil {
		sc := bufio.NewScanner(bytes.NewReader(b))
		for sc.Scan() {
			m.builtin[modName(strings.TrimSuffix(filepath.Base(sc.Text()), ".ko"))] = true
		}
	}
	return m, nil
}

func (m *moduleSet) add(name string, optional bool) error {
	name = modName(name)
	if a, ok := moduleAliases[name]; ok {
		name = a
	}
	if m.builtin[name] || m.state[name] != 0 {
		return nil // built in, already added, or a cycle through a softdep
	}
	p, ok := m.index[name]
	if !ok {
		if optional {
			return nil
		}
		return fmt.Errorf("module %s not found", name)
	}
	m.state[name] = 1
	deps, soft, err := modinfoDeps(p)
	if err != nil {
		return err
	}
	for _, d := range soft {
		if err := m.add(d, true); err != nil {
			return err
		}
	}
	for _, d := range deps {
		if err := m.add(d, false); err != nil {
			return fmt.Errorf("%s: %w", name, err)
		}
		if d = modName(d); !m.builtin[d] {
			m.deps[name] = append(m.deps[name], d)
		}
	}
	m.state[name] = 2
	m.order = append(m.order, name)
	m.paths = append(m.paths, p)
	return nil
}

func modinfoDeps(path string) (deps, softPre []string, err error) {
	f, err := elf.Open(path)
	if err != nil {
		return nil, nil, fmt.Errorf("open module: %w", err)
	}
	defer f.Close()
	sec := f.Section(".modinfo")
	if sec == nil {
		return nil, nil, nil
	}
	data, err := sec.Data()
	if err != nil {
		return nil, nil, fmt.Errorf("%s: read .modinfo: %w", path, err)
	}
	for _, kv := range bytes.Split(data, []byte{0}) {
		k, v, ok := strings.Cut(string(kv), "=")
		if !ok {
			continue
		}
		switch k {
		case "depends":
			for _, d := range strings.Split(v, ",") {
				if d != "" {
					deps = append(deps, d)
				}
			}
		case "softdep":
			// "pre: a b post: c": only pre matters for load order.
			pre := false
			for _, w := range strings.Fields(v) {
				switch w {
				case "pre:":
					pre = true
				case "post:":
					pre = false
				default:
					if pre {
						softPre = append(softPre, w)
					}
				}
			}
		}
	}
	return deps, softPre, nil
}

// modulesDep renders a modules.dep for the modules as the guest holds them
// (flat, name.ko), so busybox modprobe works there: moby/ipvs runs
// `modprobe ip_vs` itself and warns when it fails.
func (m *moduleSet) modulesDep() []byte {
	var b strings.Builder
	for _, name := range m.order {
		b.WriteString(name + ".ko:")
		for _, d := range m.deps[name] {
			b.WriteString(" " + d + ".ko")
		}
		b.WriteString("\n")
	}
	return []byte(b.String())
}
