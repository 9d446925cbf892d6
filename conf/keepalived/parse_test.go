package keepalived

import (
	"errors"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/BurntSushi/toml"
)

// memFS is a config tree in memory for Options.
func memFS(files map[string]string) Options {
	return Options{
		ConfigID: "host1",
		ReadFile: func(p string) ([]byte, error) {
			if s, ok := files[p]; ok {
				return []byte(s), nil
			}
			return nil, os.ErrNotExist
		},
		Glob: func(pattern string) ([]string, error) {
			var out []string
			for _, p := range expandBraces(pattern) {
				var m []string
				for f := range files {
					if ok, _ := filepath.Match(p, f); ok {
						m = append(m, f)
					}
				}
				slices.Sort(m)
				out = append(out, m...)
			}
			return out, nil
		},
		Stat: func(string) (os.FileMode, error) { return 0o644, nil },
	}
}

// dump renders a tree one node a line: "FILE:LINE depth name [args]".
func dump(n *Node, depth int, b *strings.Builder) {
	for _, c := range n.Children {
		b.WriteString(c.Pos() + " " + strings.Repeat(".", depth) + c.Name)
		for _, a := range c.Args {
			b.WriteString(" [" + a + "]")
		}
		if c.Block {
			b.WriteString(" {}")
		}
		b.WriteString("\n")
		dump(c, depth+1, b)
	}
}

func TestParseGrammar(t *testing.T) {
	for _, tc := range []struct{ name, src, want string }{
		{"brace on the keyword line", "a x {\n b 1\n}\n", "c:1 a [x] {}\nc:2 .b [1]\n"},
		{"brace on the next line", "a x\n{\n b 1\n}\n", "c:1 a [x] {}\nc:3 .b [1]\n"},
		{"block on one line", "a { b 1 }\nc\n", "c:1 a {}\nc:1 .b [1]\nc:2 c\n"},
		{"closing brace after a value", "a {\n b 1 }\nc\n", "c:1 a {}\nc:2 .b [1]\nc:3 c\n"},
		{"nested", "a {\n b {\n  c\n }\n}\n", "c:1 a {}\nc:2 .b {}\nc:3 ..c\n"},
		{"empty block", "a {\n}\n", "c:1 a {}\n"},
		{"comments", "# x\n! y\na 1 # z\nb 2 ! w\nc#d\n", "c:3 a [1]\nc:4 b [2]\nc:5 c\n"},
		{"quotes keep blanks, braces and comment marks", `a "x y" "{#!}" b` + "\n", "c:1 a [x y] [{#!}] [b]\n"},
		{"a quote ends a word", `a x"y z"` + "\n", "c:1 a [x] [y z]\n"},
		{"escaped comment marks", `a x\#y\!z` + "\n", "c:1 a [x#y!z]\n"},
		{"CRLF and tabs", "a\t1\r\nb 2\r\n", "c:1 a [1]\nc:2 b [2]\n"},
		{"@ID for this host", "@host1 a 1\n@host2 b 2\n@^host2 c 3\n@^host1 d 4\n", "c:1 a [1]\nc:3 c [3]\n"},
		{"@ without an ID", "@ a 1\nb\n", "c:2 b\n"},
		{"@ID around a block", "@host2 x {\n}\ny\n", ""},
		{"parameters", "$P=10.0.0.1\n$Q = eth0\na $P ${Q} $P/24 ${P}/24 $R\n", "c:3 a [10.0.0.1] [eth0] [$P/24] [10.0.0.1/24] [$R]\n"},
		{"~SEQ left out", "~SEQ(i,1,3) a $i\nb\n", "c:2 b\n"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			root, _, err := Parse("c", []byte(tc.src), memFS(nil))
			if tc.name == "@ID around a block" {
				// keepalived drops the whole line, its brace too: the
				// closing brace is then an extra one.
				var pe *Error
				if !errors.As(err, &pe) || pe.Line != 2 {
					t.Fatalf("err = %v, want an extra '}' at line 2", err)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			var b strings.Builder
			dump(root, 0, &b)
			if b.String() != tc.want {
				t.Errorf("got\n%s\nwant\n%s", b.String(), tc.want)
			}
		})
	}
}

// TestNoConfigID: without a config id (keepalived run without -i on a
// host whose name is empty) no @ID line is for this host, and @^ID ones are.
func TestNoConfigID(t *testing.T) {
	o := memFS(nil)
	o.ConfigID = ""
	root, _, err := Parse("c", []byte("@ a\n@x b\n@^x c\n@ d 1\n"), o)
	if err != nil {
		t.Fatal(err)
	}
	var b strings.Builder
	dump(root, 0, &b)
	if b.String() != "c:3 c\n" {
		t.Errorf("got %q", b.String())
	}
}

func TestParseErrors(t *testing.T) {
	for _, tc := range []struct{ src, want string }{
		{"a {\n b\n", "c:1: block a is not closed"},
		{"a\n}\n", "c:2: extra '}'"},
		{"{\n}\n", "c:1: '{' without a keyword"},
		{"a {\n{\n}\n}\n", "c:2: '{' without a keyword"},
		{"a \"b\n", "c:1: unterminated quote"},
	} {
		_, _, err := Parse("c", []byte(tc.src), memFS(nil))
		if err == nil || !strings.HasPrefix(err.Error(), tc.want) {
			t.Errorf("%q: err = %v, want %q", tc.src, err, tc.want)
		}
	}
}

func TestInclude(t *testing.T) {
	fs := memFS(map[string]string{
		"/etc/k/main.conf":       "a 1\ninclude conf.d/*.conf\nb {\ninclude inner/{y,x}.conf\n}\n",
		"/etc/k/conf.d/2.conf":   "c 2\n",
		"/etc/k/conf.d/1.conf":   "c 1\ninclude ../other.inc\n",
		"/etc/k/other.inc":       "d 1\n",
		"/etc/k/inner/x.conf":    "x\n",
		"/etc/k/inner/y.conf":    "y\n",
		"/etc/k/conf.d/skip.txt": "z\n",
	})
	root, w, err := ParseFile("/etc/k/main.conf", fs)
	if err != nil {
		t.Fatal(err)
	}
	var b strings.Builder
	dump(root, 0, &b)
	want := "/etc/k/main.conf:1 a [1]\n" +
		"/etc/k/conf.d/1.conf:1 c [1]\n" +
		"/etc/k/other.inc:1 d [1]\n" +
		"/etc/k/conf.d/2.conf:1 c [2]\n" +
		"/etc/k/main.conf:3 b {}\n" +
		"/etc/k/inner/y.conf:1 .y\n" +
		"/etc/k/inner/x.conf:1 .x\n"
	if b.String() != want {
		t.Errorf("got\n%s\nwant\n%s", b.String(), want)
	}
	if len(w) != 0 {
		t.Errorf("warnings: %v", w)
	}
}

func TestIncludeCycle(t *testing.T) {
	fs := memFS(map[string]string{
		"/k/a.conf": "x\ninclude b.conf\n",
		"/k/b.conf": "y\ninclude a.conf\n",
	})
	_, _, err := ParseFile("/k/a.conf", fs)
	if err == nil || !strings.Contains(err.Error(), "include cycle") {
		t.Fatalf("err = %v, want an include cycle", err)
	}
	fs = memFS(map[string]string{"/k/a.conf": "include *.conf\n"})
	if _, _, err := ParseFile("/k/a.conf", fs); err == nil || !strings.Contains(err.Error(), "include cycle") {
		t.Fatalf("self-include: err = %v, want an include cycle", err)
	}
}

func TestIncludeNoMatch(t *testing.T) {
	_, w, err := Parse("/k/a.conf", []byte("include nothing/*.conf\n"), memFS(nil))
	if err != nil || len(w) != 1 || !strings.Contains(w[0].String(), "/k/a.conf:1: warning: include /k/nothing/*.conf matches no file") {
		t.Fatalf("err %v, warnings %v", err, w)
	}
}

func TestExpandBraces(t *testing.T) {
	for in, want := range map[string][]string{
		"a":          {"a"},
		"{a,b}":      {"a", "b"},
		"x{a,b}y":    {"xay", "xby"},
		"{a,b}{1,2}": {"a1", "a2", "b1", "b2"},
		"{a,{b,c}}":  {"a", "b", "c"},
		"{a}":        {"{a}"},
		"{a,b":       {"{a,b"},
	} {
		if got := expandBraces(in); !slices.Equal(got, want) {
			t.Errorf("expandBraces(%q) = %q, want %q", in, got, want)
		}
	}
}

func TestQuotedWords(t *testing.T) {
	for in, want := range map[string][]string{
		`notify "/bin/x a"`:       {"notify", "/bin/x a"},
		`/bin/x 'a b' "c d" e\ f`: {"/bin/x", "a b", "c d", "e f"},
		`a\x41\101\n\cA`:          {"aAA\n\x01"},
		`"it's" 'say "hi"'`:       {"it's", `say "hi"`},
		`  `:                      nil,
		`a"b c"d`:                 {"ab cd"},
	} {
		got, err := quotedWords(in)
		if err != nil || !slices.Equal(got, want) {
			t.Errorf("quotedWords(%q) = %q, %v; want %q", in, got, err, want)
		}
	}
	for _, bad := range []string{`"a`, `'a`, `a\`} {
		if _, err := quotedWords(bad); err == nil {
			t.Errorf("quotedWords(%q): no error", bad)
		}
	}
}

func TestParseTimer(t *testing.T) {
	for in, want := range map[string]time.Duration{
		"1":         time.Second,
		"0":         0,
		"60":        time.Minute,
		"0.5":       500 * time.Millisecond,
		"1.25":      1250 * time.Millisecond,
		".5":        500 * time.Millisecond,
		"3.":        3 * time.Second,
		"0.000001":  time.Microsecond,
		"0.0000015": 2 * time.Microsecond, // keepalived rounds the 7th decimal
		"0.0000014": time.Microsecond,
	} {
		got, err := parseTimer(in)
		if err != nil || got != want {
			t.Errorf("parseTimer(%q) = %v, %v; want %v", in, got, err, want)
		}
	}
	for _, bad := range []string{"", "-1", "+1", "1s", "1,5", "a", "1e3", "99999999999999999999"} {
		if d, err := parseTimer(bad); err == nil {
			t.Errorf("parseTimer(%q) = %v, want an error", bad, d)
		}
	}
}

func TestParseBool(t *testing.T) {
	for _, s := range []string{"true", "on", "yes"} {
		if v, ok := parseBool(s); !v || !ok {
			t.Errorf("%s: %v %v", s, v, ok)
		}
	}
	for _, s := range []string{"false", "off", "no"} {
		if v, ok := parseBool(s); v || !ok {
			t.Errorf("%s: %v %v", s, v, ok)
		}
	}
	for _, s := range []string{"True", "1", "0", "y", ""} {
		if _, ok := parseBool(s); ok {
			t.Errorf("%q accepted", s)
		}
	}
}

// FuzzParse feeds arbitrary configs through the parser and the
// translation: neither may panic, and whatever the translation writes is
// TOML that parses.
func FuzzParse(f *testing.F) {
	files, _ := filepath.Glob("testdata/golden/*.conf")
	for _, file := range files {
		src, err := os.ReadFile(file)
		if err != nil {
			f.Fatal(err)
		}
		f.Add(src)
	}
	f.Add([]byte("a {\n} }\n{"))
	f.Add([]byte("vrrp_instance \"a\\\"b\" {\n interface \"e\x00\xff\"\n virtual_ipaddress { 1.2.3.4 }\n notify \"/a 'b\"\n}\n"))
	f.Add([]byte("$A=$A$A\n$A\n@x\n@^\n~LST\ninclude\n"))
	f.Fuzz(func(t *testing.T, src []byte) {
		root, _, err := Parse("f.conf", src, memFS(nil))
		if err != nil {
			var pe *Error
			if !errors.As(err, &pe) {
				t.Fatalf("error of another type: %v", err)
			}
			return
		}
		res := Translate("f.conf", root)
		var v map[string]any
		if _, err := toml.Decode(string(res.TOML), &v); err != nil {
			t.Fatalf("output is not TOML: %v\n%s", err, res.TOML)
		}
	})
}
