package lvs_test

import (
	"net/netip"
	"slices"
	"testing"

	"github.com/lvsha/lvsha/lvs"
	"github.com/lvsha/lvsha/lvs/lvstest"
)

func benchTable(nSvc, nReal int) []lvs.Service {
	svcs := make([]lvs.Service, nSvc)
	r := 0
	for i := range svcs {
		s := lvs.Service{Key: lvs.Key{Proto: lvs.TCP, Addr: netip.AddrPortFrom(netip.AddrFrom4([4]byte{10, 1, byte(i >> 8), byte(i)}), 80)}, Scheduler: "wlc"}
		for range nReal {
			s.Reals = append(s.Reals, lvs.Real{Addr: netip.AddrPortFrom(netip.AddrFrom4([4]byte{10, 2, byte(r >> 8), byte(r)}), 80), Weight: 1, Up: true})
			r++
		}
		svcs[i] = s
	}
	return svcs
}

// BenchmarkReloadOneWeight is the CPU cost of a reload of a 1,000 x 10
// table that changes one weight (the kernel side is lvstest's table).
func BenchmarkReloadOneWeight(b *testing.B) {
	f, r := newReconciler(b)
	a := benchTable(1000, 10)
	if _, err := r.Apply(a); err != nil {
		b.Fatal(err)
	}
	c := slices.Clone(a)
	c[500].Reals = slices.Clone(c[500].Reals)
	c[500].Reals[3].Weight = 5
	f.Reset()
	b.ReportAllocs()
	for i := 0; b.Loop(); i++ {
		next := a
		if i%2 == 0 {
			next = c
		}
		if _, err := r.Apply(next); err != nil {
			b.Fatal(err)
		}
	}
	b.ReportMetric(float64(len(f.Calls()))/float64(b.N), "calls/op")
}

// BenchmarkColdApply is the CPU cost of programming 1,000 x 10 from empty.
func BenchmarkColdApply(b *testing.B) {
	a := benchTable(1000, 10)
	b.ReportAllocs()
	for b.Loop() {
		_, k := lvstest.New(b)
		if _, err := lvs.NewReconciler(k, nil).Apply(a); err != nil {
			b.Fatal(err)
		}
	}
}
