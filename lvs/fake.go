package lvs

import (
	"fmt"
	"net/netip"
	"slices"
	"strings"
	"syscall"
)

// Fake is an in-memory Kernel for tests. It behaves like IPVS where it
// matters to the reconciler (EEXIST, ENOENT, order kept) and counts calls.
type Fake struct {
	svcs  []KService
	dests map[Key][]KDest
	// Calls logs every call as "Method key [dest]".
	Calls []string
	// Fail, if set, is consulted before every call; a non-nil error fails
	// the call without changing anything.
	Fail func(call string) error
}

// NewFake returns an empty fake kernel.
func NewFake() *Fake { return &Fake{dests: map[Key][]KDest{}} }

// Writes counts the calls that change state.
func (f *Fake) Writes() int {
	n := 0
	for _, c := range f.Calls {
		if !strings.HasPrefix(c, "Services") && !strings.HasPrefix(c, "Destinations") {
			n++
		}
	}
	return n
}

// Reset forgets the logged calls.
func (f *Fake) Reset() { f.Calls = nil }

func (f *Fake) call(format string, args ...any) error {
	c := fmt.Sprintf(format, args...)
	f.Calls = append(f.Calls, c)
	if f.Fail != nil {
		return f.Fail(c)
	}
	return nil
}

func (f *Fake) find(k Key) int {
	return slices.IndexFunc(f.svcs, func(s KService) bool { return s.Key == k })
}

// Services implements Kernel.
func (f *Fake) Services() ([]KService, error) {
	if err := f.call("Services"); err != nil {
		return nil, err
	}
	return slices.Clone(f.svcs), nil
}

// Destinations implements Kernel.
func (f *Fake) Destinations(k Key) ([]KDest, error) {
	if err := f.call("Destinations %v", k); err != nil {
		return nil, err
	}
	if f.find(k) < 0 {
		return nil, syscall.ESRCH
	}
	return slices.Clone(f.dests[k]), nil
}

// NewService implements Kernel.
func (f *Fake) NewService(s KService) error {
	if err := f.call("NewService %v", s.Key); err != nil {
		return err
	}
	if f.find(s.Key) >= 0 {
		return syscall.EEXIST
	}
	if !slices.Contains(Schedulers, s.Scheduler) {
		return syscall.ENOENT
	}
	f.svcs = append(f.svcs, s)
	return nil
}

// UpdateService implements Kernel.
func (f *Fake) UpdateService(s KService) error {
	if err := f.call("UpdateService %v", s.Key); err != nil {
		return err
	}
	i := f.find(s.Key)
	if i < 0 {
		return syscall.ESRCH
	}
	f.svcs[i] = s
	return nil
}

// DelService implements Kernel.
func (f *Fake) DelService(k Key) error {
	if err := f.call("DelService %v", k); err != nil {
		return err
	}
	i := f.find(k)
	if i < 0 {
		return syscall.ESRCH
	}
	f.svcs = slices.Delete(f.svcs, i, i+1)
	delete(f.dests, k)
	return nil
}

func (f *Fake) findDest(k Key, a netip.AddrPort) int {
	return slices.IndexFunc(f.dests[k], func(d KDest) bool { return d.Addr == a })
}

// NewDestination implements Kernel.
func (f *Fake) NewDestination(k Key, d KDest) error {
	if err := f.call("NewDestination %v %v", k, d.Addr); err != nil {
		return err
	}
	if f.find(k) < 0 {
		return syscall.ESRCH
	}
	if f.findDest(k, d.Addr) >= 0 {
		return syscall.EEXIST
	}
	f.dests[k] = append(f.dests[k], d)
	return nil
}

// UpdateDestination implements Kernel.
func (f *Fake) UpdateDestination(k Key, d KDest) error {
	if err := f.call("UpdateDestination %v %v", k, d.Addr); err != nil {
		return err
	}
	if f.find(k) < 0 {
		return syscall.ESRCH
	}
	i := f.findDest(k, d.Addr)
	if i < 0 {
		return syscall.ENOENT
	}
	f.dests[k][i] = d
	return nil
}

// DelDestination implements Kernel.
func (f *Fake) DelDestination(k Key, a netip.AddrPort) error {
	if err := f.call("DelDestination %v %v", k, a); err != nil {
		return err
	}
	if f.find(k) < 0 {
		return syscall.ESRCH
	}
	i := f.findDest(k, a)
	if i < 0 {
		return syscall.ENOENT
	}
	f.dests[k] = slices.Delete(f.dests[k], i, i+1)
	return nil
}
