package checker

import (
	"encoding/json"
	"net"
	"net/netip"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/lvsha/lvsha/healthcheck"
)

// TestUpdateRoundTrip: an update survives JSON with each shared spec sent
// once, its regular expression and the resume states intact.
func TestUpdateRoundTrip(t *testing.T) {
	web := &healthcheck.Spec{Type: healthcheck.TypeHTTP, Path: "/health", Method: "GET", Host: "example.org",
		Status: []healthcheck.StatusRange{{Lo: 200, Hi: 204}}, BodyRegex: regexp.MustCompile(`^ok\b`),
		Interval: 2 * time.Second, Timeout: time.Second, Rise: 2, Fall: 3, InitialUp: true}
	cmd := &healthcheck.Spec{Type: healthcheck.TypeExec, Argv: []string{"/bin/check", "--fast"},
		Interval: time.Second, Timeout: 500 * time.Millisecond, Rise: 1, Fall: 1}
	in := []Target{
		{ID: "a", Addr: netip.MustParseAddrPort("10.0.0.1:80"), Spec: web, Group: "g1"},
		{ID: "b", Addr: netip.MustParseAddrPort("10.0.0.2:80"), Spec: web, Group: "g1",
			Via: healthcheck.Via{VIP: netip.MustParseAddr("10.0.9.9"), Mark: 0x4c560001}},
		{ID: "c", Addr: netip.MustParseAddrPort("[2001:db8::3]:443"), Spec: cmd, Group: "g2"},
	}
	since := time.Date(2026, 11, 27, 10, 0, 0, 0, time.UTC)
	req := encodeUpdate(in, func(id string) healthcheck.Resume { return healthcheck.Resume{Up: id == "b", Since: since} })
	if len(req.Specs) != 2 || len(req.Groups) != 2 {
		t.Fatalf("%d specs and %d groups sent for 2 distinct ones each", len(req.Specs), len(req.Groups))
	}
	b, err := json.Marshal(req)
	if err != nil {
		t.Fatal(err)
	}
	var back request
	if err := json.Unmarshal(b, &back); err != nil {
		t.Fatal(err)
	}
	ts, groups, err := decodeUpdate(back)
	if err != nil {
		t.Fatal(err)
	}
	if len(ts) != 3 {
		t.Fatalf("%d targets", len(ts))
	}
	for i, got := range ts {
		want := in[i]
		if got.ID != want.ID || got.Addr != want.Addr || got.Via != want.Via || got.Spec.Key() != want.Spec.Key() || groups[got.ID] != want.Group {
			t.Errorf("target %d: %+v (group %q), want %+v", i, got, groups[got.ID], want)
		}
		if got.Resume == nil || got.Resume.Up != (want.ID == "b") || !got.Resume.Since.Equal(since) {
			t.Errorf("target %s resume %v", got.ID, got.Resume)
		}
	}
	if ts[0].Spec.BodyRegex == nil || !ts[0].Spec.BodyRegex.MatchString("ok then") {
		t.Errorf("regex lost: %v", ts[0].Spec.BodyRegex)
	}

	// Without resume states none are sent.
	if r := encodeUpdate(in, nil); r.Targets[0].Resume != nil {
		t.Error("resume sent for a plain update")
	}
	// A target naming a spec or group that is not there is refused.
	bad := back
	bad.Targets = append([]wireTarget(nil), back.Targets...)
	bad.Targets[2].Spec = 7
	if _, _, err := decodeUpdate(bad); err == nil || !strings.Contains(err.Error(), "target c: spec 7") {
		t.Errorf("bad spec index: %v", err)
	}
	bad.Targets[2] = back.Targets[2]
	bad.Targets[1].Group = -1
	if _, _, err := decodeUpdate(bad); err == nil || !strings.Contains(err.Error(), "target b: group -1") {
		t.Errorf("bad group index: %v", err)
	}
}

// TestChildRefusesInvalidUpdate: the checker process refuses a set with a
// duplicate ID or an unusable spec, naming each target, and keeps none.
func TestChildRefusesInvalidUpdate(t *testing.T) {
	parent, child := net.Pipe()
	done := make(chan error, 1)
	go func() { done <- Serve(child, nil) }()
	ok := &healthcheck.Spec{Type: healthcheck.TypeTCP, Interval: time.Second, Timeout: time.Second, Rise: 1, Fall: 1}
	bad := &healthcheck.Spec{Type: healthcheck.TypeTCP, Interval: time.Second, Rise: 1, Fall: 1} // no timeout
	a := netip.MustParseAddrPort("10.0.0.1:80")
	req := encodeUpdate([]Target{{ID: "a", Addr: a, Spec: ok}, {ID: "a", Addr: a, Spec: ok}, {ID: "x", Addr: a, Spec: bad}}, nil)
	req.ID = 1
	if err := writeFrame(parent, req); err != nil {
		t.Fatal(err)
	}
	fr := newFrameReader(parent)
	var reply message
	if err := fr.read(&reply); err != nil {
		t.Fatal(err)
	}
	if reply.Reply != 1 || !strings.Contains(reply.Err, "target a: duplicate id") || !strings.Contains(reply.Err, "target x: interval and timeout") {
		t.Errorf("invalid set: %+v", reply)
	}
	if err := writeFrame(parent, request{ID: 2, Op: "snapshot"}); err != nil {
		t.Fatal(err)
	}
	if err := fr.read(&reply); err != nil || reply.Reply != 2 || len(reply.Snapshot) != 0 {
		t.Errorf("after a refused update: %+v %v", reply, err)
	}
	_ = parent.Close()
	if err := <-done; err != nil {
		t.Errorf("Serve: %v", err)
	}
}
