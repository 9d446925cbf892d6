package lvs_test

import (
	"net/netip"
	"testing"

	"github.com/lvsha/lvsha/lvs"
	"github.com/lvsha/lvsha/lvs/lvstest"
)

var (
	vip   = netip.MustParseAddrPort("192.168.94.200:80")
	web1  = netip.MustParseAddrPort("192.168.94.134:80")
	web2  = netip.MustParseAddrPort("192.168.94.135:80")
	sorry = netip.MustParseAddrPort("192.168.94.250:80")
	tcp80 = lvs.Key{Proto: lvs.TCP, Addr: vip}
)

func seed() lvs.Service {
	return lvs.Service{Key: tcp80, Scheduler: "rr", Forwarding: lvs.DR, Quorum: 1,
		Reals: []lvs.Real{{Addr: web1, Weight: 1, Up: true}, {Addr: web2, Weight: 1, Up: true}}}
}

// newReconciler returns a reconciler over production's IPVS kernel on an
// empty fake table.
func newReconciler(t testing.TB) (*lvstest.Table, *lvs.Reconciler) {
	f, k := lvstest.New(t)
	return f, lvs.NewReconciler(k, nil)
}

func mustApply(t *testing.T, r *lvs.Reconciler, svcs ...lvs.Service) lvs.Report {
	t.Helper()
	rep, err := r.Apply(svcs)
	if err != nil {
		t.Fatalf("apply: %v", err)
	}
	return rep
}

// drift changes the table behind the reconciler's back.
func drift(t *testing.T, f *lvstest.Table, cs ...lvs.Change) {
	t.Helper()
	for _, c := range cs {
		if err := f.Drift(c); err != nil {
			t.Fatalf("drift %v: %v", c, err)
		}
	}
}
