package main

import (
	"bytes"
	"strings"
	"testing"
	"time"

	"github.com/lvsha/lvsha/internal/director/control"
)

func TestPrintStatus(t *testing.T) {
	st := &control.Status{
		Version: "v1", Config: "/etc/lvsha/lvsha.toml", Started: time.Unix(0, 0).UTC(),
		Checker: &control.CheckerStatus{Pid: 4321, Restarts: 2},
		VRRP: []control.VRRPStatus{{Name: "VI_1", Interface: "ens33", VRID: 51, State: "MASTER", Priority: 150,
			Master: "192.168.94.132", Since: time.Unix(3600, 0).UTC(), LastCause: "master down timer expired"}},
		Services: []control.ServiceStatus{{Key: "TCP 192.168.94.200:80", Scheduler: "rr", Forwarding: "dr", InKernel: true,
			Reals: []control.RealStatus{
				{Address: "192.168.94.134:80", Weight: 1, KernelWeight: 1, ActiveConns: 3, InactiveConns: 12, Health: "up", LastResult: "ok", LastError: "connection refused"},
				{Address: "192.168.94.135:80", Weight: 1, KernelWeight: 0, Health: "down", LastResult: "status 503", LastError: "status 503"},
				{Address: "192.168.94.136:80", Weight: 2, KernelWeight: -1, Health: "unchecked"},
			}},
			{Key: "TCP 192.168.94.201:80", Scheduler: "twos", Forwarding: "dr",
				Error: "lvs: add-service tcp/192.168.94.201:80 (twos): no such file or directory",
				Reals: []control.RealStatus{{Address: "192.168.94.134:80", Weight: 1, KernelWeight: -1, Health: "up"}}}},
	}
	var b bytes.Buffer
	printStatus(&b, st)
	// Columns are aligned with spaces; compare rows with the runs folded.
	var rows []string
	for _, l := range strings.Split(b.String(), "\n") {
		rows = append(rows, strings.Join(strings.Fields(l), " "))
	}
	out := strings.Join(rows, "\n")
	for _, want := range []string{
		"health checker process restarted 2 times (now pid 4321)",
		"VI_1 ens33 51 MASTER 150 192.168.94.132 01:00:00 master down timer expired",
		"\nTCP 192.168.94.200:80 rr\n",
		"-> 192.168.94.134:80 Route 1/1 3 12 up ok connection refused",
		"-> 192.168.94.135:80 Route 1/0 0 0 down status 503 -",
		"-> 192.168.94.136:80 Route 2/- 0 0 unchecked - -",
		"\nTCP 192.168.94.201:80 twos (missing in kernel) kernel refused it: lvs: add-service tcp/192.168.94.201:80 (twos): no such file or directory\n",
	} {
		if !strings.Contains(out, want) {
			t.Errorf("status output lacks %q:\n%s", want, out)
		}
	}
}

// TestPrintStatusSendErrors: an instance whose adverts fail says so under
// the VRRP table; one that sends again does not.
func TestPrintStatusSendErrors(t *testing.T) {
	st := &control.Status{VRRP: []control.VRRPStatus{
		{Name: "VI_1", Interface: "eth0", VRID: 51, State: "MASTER", SendErrors: 4, LastSendError: "sendto: no such device"},
		{Name: "VI_2", Interface: "eth0", VRID: 52, State: "BACKUP", SendErrors: 2},
	}}
	var b strings.Builder
	printStatus(&b, st)
	if !strings.Contains(b.String(), "  VI_1: adverts not sent (4 so far): sendto: no such device\n") {
		t.Errorf("no send error line:\n%s", b.String())
	}
	if strings.Contains(b.String(), "VI_2: adverts not sent") {
		t.Errorf("a recovered instance shown as failing:\n%s", b.String())
	}
}

// TestPrintStatusSync: the sync daemons and the connection entries.
func TestPrintStatusSync(t *testing.T) {
	st := &control.Status{Sync: &control.SyncStatus{Instance: "VI_1", ConnEntries: 42, Daemons: []control.SyncDaemonStatus{
		{State: "master", Interface: "eth0", SyncID: 51, Group: "224.0.0.81", Port: 8848, TTL: 1, MaxLen: 1472},
		{State: "backup", Interface: "eth0", SyncID: 51, Group: "224.0.0.81", Port: 8848, TTL: 1, MaxLen: 1472},
	}}}
	var b strings.Builder
	printStatus(&b, st)
	var rows []string
	for _, l := range strings.Split(b.String(), "\n") {
		rows = append(rows, strings.Join(strings.Fields(l), " "))
	}
	out := strings.Join(rows, "\n")
	for _, want := range []string{
		"Connection sync (master follows VI_1), 42 connection entries:",
		"master eth0 51 224.0.0.81 8848 1 1472",
		"backup eth0 51 224.0.0.81 8848 1 1472",
	} {
		if !strings.Contains(out, want) {
			t.Errorf("status output lacks %q:\n%s", want, out)
		}
	}
	st.Sync = &control.SyncStatus{ConnEntries: -1, Daemons: []control.SyncDaemonStatus{}, Error: "open IPVS: no module"}
	b.Reset()
	printStatus(&b, st)
	for _, want := range []string{"unknown connection entries", "error: open IPVS: no module", "no sync daemon running"} {
		if !strings.Contains(b.String(), want) {
			t.Errorf("status output lacks %q:\n%s", want, b.String())
		}
	}
}

func TestPrintStatusBGP(t *testing.T) {
	at := time.Date(2026, 11, 30, 1, 2, 3, 0, time.UTC)
	st := &control.Status{Version: "v", BGP: &control.BGPStatus{ASN: 65001, RouterID: "10.0.0.1",
		Neighbors: []control.BGPNeighborStatus{{Address: "10.0.0.254", ASN: 65000, State: "established", Since: at, HoldTime: 3},
			{Address: "10.0.0.253", ASN: 65000, State: "active"}},
		VIPs:         []control.BGPVIPStatus{{Prefix: "10.99.0.1/32", Announced: true}, {Prefix: "10.99.0.2/32", Reason: "quorum lost: tcp/10.99.0.2:80"}},
		LastWithdraw: &control.BGPWithdraw{Prefix: "10.99.0.2/32", Reason: "quorum lost: tcp/10.99.0.2:80", At: at}, Withdrawals: 2}}
	var b strings.Builder
	printStatus(&b, st)
	for _, want := range []string{
		"BGP (AS 65001, router id 10.0.0.1):",
		"  10.0.0.254  65000  established  01:02:03  3s",
		"  10.0.0.253  65000  active       -         -",
		"  10.99.0.1/32  yes        -",
		"  10.99.0.2/32  no         quorum lost: tcp/10.99.0.2:80",
		"  last withdrawal (2 so far): 10.99.0.2/32 at 01:02:03: quorum lost: tcp/10.99.0.2:80",
	} {
		if !strings.Contains(b.String(), want) {
			t.Errorf("status lacks %q:\n%s", want, b.String())
		}
	}
}
