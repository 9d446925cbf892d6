package director

import (
	"testing"

	"github.com/lvsha/lvsha/conf"
	"github.com/lvsha/lvsha/lvs"
)

const viaSrc = `
[global]
via_vip_marks = "0x4c560000/16"
[[virtual_server]]
address = "10.0.0.1:80"
[virtual_server.check]
type = "tcp"
via_vip = true
[[virtual_server.real_server]]
address = "10.0.1.1:80"
[[virtual_server.real_server]]
address = "10.0.1.2:80"
[virtual_server.real_server.check]
via_vip = false
[[virtual_server.real_server]]
address = "10.0.1.3:80"
`

func TestViaVIPMarksAndServices(t *testing.T) {
	cfg, _, err := conf.Parse("t.toml", []byte(viaSrc))
	if err != nil {
		t.Fatal(err)
	}
	marks := assignMarks(nil, cfg)
	rs := cfg.Services[0].Reals
	if len(marks) != 2 || marks[rs[0].ID] != 0x4c560000 || marks[rs[2].ID] != 0x4c560001 {
		t.Fatalf("marks: %#v", marks)
	}
	targets := healthTargets(cfg, marks)
	if targets[0].Via.Mark != 0x4c560000 || targets[0].Via.VIP.String() != "10.0.0.1" || targets[1].Via.Mark != 0 {
		t.Errorf("targets: %+v", targets)
	}
	got := desiredServices(cfg, map[string]bool{rs[0].ID: false}, marks)
	if len(got) != 3 {
		t.Fatalf("services: %+v", got)
	}
	for i, want := range []string{"10.0.1.1:80", "10.0.1.3:80"} {
		s := got[1+i]
		if s.Key.FWMark != 0x4c560000+uint32(i) || s.Forwarding != lvs.DR || len(s.Reals) != 1 ||
			s.Reals[0].Addr.String() != want || !s.Reals[0].Up || s.Reals[0].Weight != 1 {
			t.Errorf("via service %d: %+v", i, s)
		}
	}

	// A reload that replaces the third real server: the first keeps its
	// mark (a new one would restart its check), the new one gets the mark
	// freed. One that keeps only the third: it keeps its own mark, and the
	// first's service goes.
	cfg2, _, err := conf.Parse("t.toml", []byte(viaSrc[:len(viaSrc)-len("[[virtual_server.real_server]]\naddress = \"10.0.1.3:80\"\n")]+
		"[[virtual_server.real_server]]\naddress = \"10.0.1.4:80\"\n"))
	if err != nil {
		t.Fatal(err)
	}
	m2 := assignMarks(marks, cfg2)
	rs2 := cfg2.Services[0].Reals
	if m2[rs2[0].ID] != 0x4c560000 || m2[rs2[2].ID] != 0x4c560001 || len(m2) != 2 {
		t.Errorf("after reload: %#v", m2)
	}
	cfg3, _, err := conf.Parse("t.toml", []byte(`
[[virtual_server]]
address = "10.0.0.1:80"
[virtual_server.check]
type = "tcp"
via_vip = true
[[virtual_server.real_server]]
address = "10.0.1.3:80"
`))
	if err != nil {
		t.Fatal(err)
	}
	m3 := assignMarks(marks, cfg3)
	if m3[cfg3.Services[0].Reals[0].ID] != 0x4c560001 || len(m3) != 1 {
		t.Errorf("kept mark: %#v", m3)
	}
	if got := desiredServices(cfg3, nil, m3); len(got) != 2 || got[1].Key.FWMark != 0x4c560001 {
		t.Errorf("services after removal: %+v", got)
	}
}
