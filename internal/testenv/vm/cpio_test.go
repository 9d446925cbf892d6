package vm

import (
	"bytes"
	"strconv"
	"strings"
	"testing"

	"github.com/lvsha/lvsha/internal/testenv/testutil"
)

type cpioEntry struct {
	name       string
	mode       uint32
	data       string
	rmaj, rmin uint32
}

// readCPIO parses newc archives, enough to check what the writer produced.
func readCPIO(t *testing.T, b []byte) []cpioEntry {
	var out []cpioEntry
	off := 0
	field := func(i int) uint32 {
		v, err := strconv.ParseUint(string(b[off+6+8*i:off+14+8*i]), 16, 32)
		if err != nil {
			t.Fatalf("bad header at %d: %v", off, err)
		}
		return uint32(v)
	}
	align := func(n int) int { return (n + 3) &^ 3 }
	for {
		if string(b[off:off+6]) != "070701" {
			t.Fatalf("bad magic at %d", off)
		}
		mode, size, rmaj, rmin, nsize := field(1), field(6), field(9), field(10), field(11)
		name := string(b[off+110 : off+110+int(nsize)-1])
		dataOff := align(off + 110 + int(nsize))
		if name == "TRAILER!!!" {
			return out
		}
		out = append(out, cpioEntry{name, mode, string(b[dataOff : dataOff+int(size)]), rmaj, rmin})
		off = align(dataOff + int(size))
	}
}

func TestCPIO(t *testing.T) {
	var buf bytes.Buffer
	c := newCPIO(&buf)
	c.File("/etc/a/b.txt", 0o644, []byte("hello"))
	c.Symlink("var/run", "/run")
	c.CharDev("dev/console", 5, 1)
	c.File("etc/a/c", 0o755, []byte("1234"))
	if err := c.Close(); err != nil {
		t.Fatal(err)
	}
	got := readCPIO(t, buf.Bytes())
	var names []string
	for _, e := range got {
		names = append(names, e.name)
	}
	// Parents come before children, each once.
	want := "etc etc/a etc/a/b.txt var var/run dev dev/console etc/a/c"
	if strings.Join(names, " ") != want {
		t.Fatalf("entries %q, want %q", strings.Join(names, " "), want)
	}
	if e := got[2]; e.data != "hello" || e.mode != modeFile|0o644 {
		t.Errorf("file entry %+v", e)
	}
	if e := got[4]; e.data != "/run" || e.mode&0o170000 != modeLink {
		t.Errorf("symlink entry %+v", e)
	}
	if e := got[6]; e.rmaj != 5 || e.rmin != 1 || e.mode&0o170000 != modeChr {
		t.Errorf("device entry %+v", e)
	}
	if e := got[7]; e.data != "1234" || e.mode != modeFile|0o755 {
		t.Errorf("second file %+v", e)
	}
}

func TestShQuote(t *testing.T) {
	if got := shQuote(`it's "x" $HOME`); got != `'it'\''s "x" $HOME'` {
		t.Fatalf("got %s", got)
	}
}

func TestModuleOrder(t *testing.T) {
	dir, err := KernelDir(t.Context(), nil)
	if err != nil {
		testutil.Unavailable(t, "no VM kernel: "+err.Error())
	}
	m, err := newModuleSet(dir + "/modules")
	if err != nil {
		t.Fatal(err)
	}
	for _, name := range DefaultModules {
		if err := m.add(name, false); err != nil {
			t.Fatal(err)
		}
	}
	pos := map[string]int{}
	for i, n := range m.order {
		if _, dup := pos[n]; dup {
			t.Fatalf("%s listed twice: %v", n, m.order)
		}
		pos[n] = i
	}
	for _, before := range [][2]string{{"nf_conntrack", "ip_vs"}, {"crc32c_generic", "libcrc32c"}, {"libcrc32c", "ip_vs"}, {"ip_vs", "ip_vs_rr"}, {"stp", "bridge"}, {"llc", "stp"}} {
		a, oka := pos[before[0]]
		b, okb := pos[before[1]]
		if !oka || !okb || a > b {
			t.Errorf("%s must load before %s: %v", before[0], before[1], m.order)
		}
	}
	if err := m.add("no_such_module", false); err == nil {
		t.Error("unknown module accepted")
	}
}
