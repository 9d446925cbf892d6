package lvs_test

import (
	"errors"
	"net/netip"
	"syscall"
	"testing"

	"github.com/lvsha/lvsha/lvs"
)

// TestKernelRefusedService: a real kernel that lacks a scheduler (twos on
// the VM's 6.1) refuses that service alone: the rr service beside it is
// made and follows a verdict, the refusal is reported per service, and
// the retry after it re-reads only the refused service.
func TestKernelRefusedService(t *testing.T) {
	needVM(t)
	k, other := freshIPVS(t, "ref")
	c := &lvs.Counting{Kernel: k}
	r := lvs.NewReconciler(c, nil)
	twos := lvs.Key{Proto: lvs.TCP, Addr: netip.MustParseAddrPort("192.168.94.201:80")}
	table := func(web2Up bool) []lvs.Service {
		return []lvs.Service{
			{Key: tcp80, Scheduler: "rr", Reals: []lvs.Real{{Addr: web1, Weight: 1, Up: true}, {Addr: web2, Weight: 2, Up: web2Up}}},
			{Key: twos, Scheduler: "twos", Reals: []lvs.Real{{Addr: web1, Weight: 1, Up: true}}},
		}
	}
	check := func(step string, rep lvs.Report, err error, want string) {
		t.Helper()
		if err == nil || len(rep.Failed) != 1 || !errors.Is(rep.Failed[twos], syscall.ENOENT) {
			t.Fatalf("%s: err %v, failed %v; want the twos service alone refused (ENOENT)", step, err, rep.Failed)
		}
		if got := dumpKernel(t, other); got != want {
			t.Fatalf("%s: table %q, want %q", step, got, want)
		}
	}
	rep, err := r.Apply(table(true))
	check("first apply", rep, err, "tcp/192.168.94.200:80 rr t=0: 192.168.94.134:80/1/dr 192.168.94.135:80/2/dr")

	c.Reads = 0
	rep, err = r.Apply(table(false))
	check("verdict", rep, err, "tcp/192.168.94.200:80 rr t=0: 192.168.94.134:80/1/dr 192.168.94.135:80/0/dr")
	// The retry re-read the service list only: the refused service is not
	// in the kernel, and the rr one was not read again.
	if c.Reads != 1 {
		t.Errorf("%d reads for the verdict, want 1", c.Reads)
	}
}
