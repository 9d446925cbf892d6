package healthcheck

import (
	"encoding/json"
	"regexp"
	"strings"
	"testing"
	"time"
)

// complete fills the fields a test leaves zero with the values lvsha's
// configuration defaults them to, so a test names only what it is about.
// (The package itself has no defaults: conf sets every field.)
func complete(s Spec) Spec {
	if s.Path == "" {
		s.Path = "/"
	}
	if s.Method == "" {
		s.Method = "GET"
	}
	if len(s.Status) == 0 {
		s.Status = []StatusRange{{200, 299}}
	}
	if s.MaxBody == 0 {
		s.MaxBody = 64 << 10
	}
	if s.Interval == 0 {
		s.Interval = 5 * time.Second
	}
	if s.Timeout == 0 {
		s.Timeout = 3 * time.Second
	}
	if s.Rise == 0 {
		s.Rise = 1
	}
	if s.Fall == 0 {
		s.Fall = 1
	}
	return s
}

// parseRanges reads "200,204,300-399" for table tests.
func parseRanges(s string) ([]StatusRange, error) {
	var out []StatusRange
	for part := range strings.SplitSeq(s, ",") {
		var r StatusRange
		if err := r.UnmarshalText([]byte(part)); err != nil {
			return nil, err
		}
		out = append(out, r)
	}
	return out, nil
}

func TestStatusRangeText(t *testing.T) {
	for in, want := range map[string]StatusRange{"200": {200, 200}, " 300 - 399 ": {300, 399}, "100-599": {100, 599}} {
		var r StatusRange
		if err := r.UnmarshalText([]byte(in)); err != nil || r != want {
			t.Errorf("%q: %v %v, want %v", in, r, err, want)
		}
		if b, _ := want.MarshalText(); string(b) != want.String() {
			t.Errorf("%v marshals as %q", want, b)
		}
	}
	for _, bad := range []string{"", "abc", "99", "600", "1000", "399-300", "200-", "-200"} {
		var r StatusRange
		if err := r.UnmarshalText([]byte(bad)); err == nil {
			t.Errorf("%q accepted as %v", bad, r)
		}
	}
}

func TestCheckTypeNames(t *testing.T) {
	for _, ty := range []CheckType{TypeHTTP, TypeHTTPS, TypeTCP, TypeExec} {
		got, err := ParseCheckType(ty.String())
		if err != nil || got != ty {
			t.Errorf("%v: parsed back as %v, %v", ty, got, err)
		}
	}
	if _, err := ParseCheckType("icmp"); err == nil || err.Error() != `unknown check type "icmp" (one of http, https, tcp, exec)` {
		t.Errorf("icmp: %v", err)
	}
	if _, err := ParseCheckType(CheckType(0).String()); err == nil {
		t.Error("the zero type has a name")
	}
}

// TestSpecKey: the key tells two specs apart exactly when a field differs.
func TestSpecKey(t *testing.T) {
	base := Spec{Type: TypeHTTP, Path: "/", Status: []StatusRange{{200, 299}}, BodyRegex: regexp.MustCompile("ok"),
		Argv: []string{"a"}, Interval: time.Second, Timeout: time.Second, Rise: 2, Fall: 3, InitialUp: true}
	same := base
	same.BodyRegex = regexp.MustCompile("ok") // another pointer, same source
	same.Status = []StatusRange{{200, 299}}
	if base.Key() != same.Key() {
		t.Fatal("equal specs differ")
	}
	changes := []func(*Spec){
		func(s *Spec) { s.Type = TypeHTTPS },
		func(s *Spec) { s.Path = "/x" },
		func(s *Spec) { s.Method = "HEAD" },
		func(s *Spec) { s.Host = "h" },
		func(s *Spec) { s.Status = []StatusRange{{200, 200}} },
		func(s *Spec) { s.Status = append(s.Status, StatusRange{301, 301}) },
		func(s *Spec) { s.BodyRegex = nil },
		func(s *Spec) { s.BodyRegex = regexp.MustCompile("ko") },
		func(s *Spec) { s.MaxBody = 1 },
		func(s *Spec) { s.TLSServerName = "n" },
		func(s *Spec) { s.TLSSkipVerify = true },
		func(s *Spec) { s.TLSCAFile = "f" },
		func(s *Spec) { s.Port = 81 },
		func(s *Spec) { s.Argv = []string{"a", "b"} },
		func(s *Spec) { s.Argv = []string{"ab"} },
		func(s *Spec) { s.Interval = 2 * time.Second },
		func(s *Spec) { s.Timeout = 2 * time.Second },
		func(s *Spec) { s.Rise = 1 },
		func(s *Spec) { s.Fall = 1 },
		func(s *Spec) { s.InitialUp = false },
	}
	for i, change := range changes {
		o := base
		o.Status = append([]StatusRange(nil), base.Status...)
		o.Argv = append([]string(nil), base.Argv...)
		change(&o)
		if base.Key() == o.Key() {
			t.Errorf("change %d not seen", i)
		}
	}
}

// TestSpecJSON: a Spec survives its encoding, the regular expression as
// its source text, so the checker process gets the check the daemon has.
func TestSpecJSON(t *testing.T) {
	in := Spec{Type: TypeHTTPS, Path: "/h", Method: "HEAD", Host: "example.org",
		Status: []StatusRange{{200, 204}, {301, 301}}, BodyRegex: regexp.MustCompile(`^ok\b`), MaxBody: 10,
		TLSServerName: "n", TLSSkipVerify: true, TLSCAFile: "/ca.pem", Port: 8443, Argv: []string{"x"},
		Interval: 2 * time.Second, Timeout: time.Second, Rise: 2, Fall: 3, InitialUp: true}
	b, err := json.Marshal(&in)
	if err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{`"type":"https"`, `"status":["200-204","301"]`, `"body_regex":"^ok\\b"`} {
		if !strings.Contains(string(b), want) {
			t.Errorf("%s lacks %s", b, want)
		}
	}
	var out Spec
	if err := json.Unmarshal(b, &out); err != nil {
		t.Fatal(err)
	}
	if out.Key() != in.Key() || !out.BodyRegex.MatchString("ok then") {
		t.Errorf("round trip: %s\n became %s", in.Key(), out.Key())
	}
	for _, bad := range []string{`{"type":"icmp"}`, `{"type":"http","body_regex":"([a-z"}`, `{"type":"http","status":["300-250"]}`} {
		if err := json.Unmarshal([]byte(bad), &out); err == nil {
			t.Errorf("%s decoded", bad)
		}
	}
}

func TestSpecValidate(t *testing.T) {
	for name, mod := range map[string]func(*Spec){
		"no type":          func(s *Spec) { s.Type = 0 },
		"no method":        func(s *Spec) { s.Method = "" },
		"relative path":    func(s *Spec) { s.Path = "health" },
		"header injection": func(s *Spec) { s.Host = "a\r\nX-Injected: 1" },
		"space in path":    func(s *Spec) { s.Path = "/a b" },
		"no status":        func(s *Spec) { s.Status = nil },
		"reversed status":  func(s *Spec) { s.Status = []StatusRange{{300, 200}} },
		"negative body":    func(s *Spec) { s.MaxBody = -1 },
		"exec, no argv":    func(s *Spec) { s.Type, s.Argv = TypeExec, nil },
		"zero interval":    func(s *Spec) { s.Interval = 0 },
		"zero timeout":     func(s *Spec) { s.Timeout = 0 },
		"rise 0":           func(s *Spec) { s.Rise = 0 },
		"fall 0":           func(s *Spec) { s.Fall = 0 },
	} {
		s := complete(Spec{Type: TypeHTTP})
		mod(&s)
		if err := s.Validate(); err == nil {
			t.Errorf("%s: %+v accepted", name, s)
		}
	}
	for _, s := range []Spec{{Type: TypeHTTP}, {Type: TypeHTTPS}, {Type: TypeTCP}, {Type: TypeExec, Argv: []string{"true"}}} {
		s = complete(s)
		if err := s.Validate(); err != nil {
			t.Errorf("%+v: %v", s, err)
		}
	}
}
