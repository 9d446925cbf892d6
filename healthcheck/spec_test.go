package healthcheck

import (
	"regexp"
	"testing"
	"time"
)

func TestParseStatusRanges(t *testing.T) {
	got, err := ParseStatusRanges(" 200, 204,300-399 ")
	if err != nil {
		t.Fatal(err)
	}
	want := []StatusRange{{200, 200}, {204, 204}, {300, 399}}
	if len(got) != len(want) {
		t.Fatalf("%v", got)
	}
	for i := range want {
		if got[i] != want[i] {
			t.Fatalf("%v, want %v", got, want)
		}
	}
	for _, bad := range []string{"", "abc", "99", "1000", "399-300", "200-", "-200"} {
		if _, err := ParseStatusRanges(bad); err == nil {
			t.Errorf("%q accepted", bad)
		}
	}
}

func TestSpecEqualAndKey(t *testing.T) {
	base := Spec{Type: TypeHTTP, Path: "/", Status: []StatusRange{{200, 299}}, BodyRegex: regexp.MustCompile("ok"),
		Argv: []string{"a"}, Interval: time.Second, Timeout: time.Second, Rise: 2, Fall: 3, InitialUp: true}
	same := base
	same.BodyRegex = regexp.MustCompile("ok") // another pointer, same source
	same.Status = []StatusRange{{200, 299}}
	if !base.Equal(same) || specKey(base) != specKey(same) {
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
		if base.Equal(o) || specKey(base) == specKey(o) {
			t.Errorf("change %d not seen", i)
		}
	}
}

func TestSpecValidate(t *testing.T) {
	for _, s := range []Spec{
		{Type: "icmp"},
		{Type: TypeHTTP, Method: "POST"},
		{Type: TypeHTTP, Path: "health"},
		{Type: TypeHTTP, Host: "a\r\nX-Injected: 1"},
		{Type: TypeExec},
		{Type: TypeTCP, Rise: -1},
	} {
		if err := s.WithDefaults().Validate(); err == nil {
			t.Errorf("%+v accepted", s)
		}
	}
	for _, s := range []Spec{{Type: TypeHTTP}, {Type: TypeHTTPS}, {Type: TypeTCP}, {Type: TypeExec, Argv: []string{"true"}}} {
		if err := s.WithDefaults().Validate(); err != nil {
			t.Errorf("%+v: %v", s, err)
		}
	}
}
