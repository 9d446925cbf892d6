package realserver

import (
	"fmt"
	"io/fs"
	"slices"
	"strings"
	"sync"
)

// Fake is an in-memory Kernel for tests: a set of interfaces with their
// addresses and the arp sysctls of each. It is safe for concurrent use.
type Fake struct {
	mu      sync.Mutex
	addrs   []Addr
	sysctls map[string]string
	// Fail, if set, is asked before every operation; a non-nil result is
	// returned instead of doing it. op is "list", "add IF PREFIX scope S",
	// "del IF PREFIX scope S" (S is host or global), "read KEY" or "write KEY VALUE".
	Fail func(op string) error
	// Ops records every operation that changed something, in order.
	Ops []string
}

var _ Kernel = (*Fake)(nil)

// NewFake returns a host with lo and the given interfaces, no addresses and
// every arp_ignore/arp_announce at 0 (the kernel's defaults).
func NewFake(ifaces ...string) *Fake {
	f := &Fake{sysctls: map[string]string{}}
	for _, i := range append([]string{"all", "default", "lo"}, ifaces...) {
		f.sysctls[confKey(i, "arp_ignore")] = "0"
		f.sysctls[confKey(i, "arp_announce")] = "0"
	}
	return f
}

func (f *Fake) fail(op string) error {
	if f.Fail == nil {
		return nil
	}
	return f.Fail(op)
}

func (f *Fake) hasIface(name string) bool {
	_, ok := f.sysctls[confKey(name, "arp_ignore")]
	return ok && name != "all" && name != "default"
}

// Addrs lists every address.
func (f *Fake) Addrs() ([]Addr, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if err := f.fail("list"); err != nil {
		return nil, err
	}
	return slices.Clone(f.addrs), nil
}

// AddAddr adds a or replaces its scope, like RTM_NEWADDR with NLM_F_REPLACE.
func (f *Fake) AddAddr(a Addr) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	op := fmt.Sprintf("add %s %s scope %s", a.Interface, a.Prefix, scopeName(a))
	if err := f.fail(op); err != nil {
		return err
	}
	if !f.hasIface(a.Interface) {
		return fmt.Errorf("interface %s: link not found", a.Interface)
	}
	f.Ops = append(f.Ops, op)
	for i, b := range f.addrs {
		if b.Interface == a.Interface && b.Prefix == a.Prefix {
			f.addrs[i] = a
			return nil
		}
	}
	f.addrs = append(f.addrs, a)
	return nil
}

// DelAddr removes a if it is there.
func (f *Fake) DelAddr(a Addr) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	op := fmt.Sprintf("del %s %s scope %s", a.Interface, a.Prefix, scopeName(a))
	if err := f.fail(op); err != nil {
		return err
	}
	f.Ops = append(f.Ops, op)
	f.addrs = slices.DeleteFunc(f.addrs, func(b Addr) bool {
		return b.Interface == a.Interface && b.Prefix == a.Prefix
	})
	return nil
}

// ReadSysctl returns a value, fs.ErrNotExist for an unknown key.
func (f *Fake) ReadSysctl(key string) (string, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if err := f.fail("read " + key); err != nil {
		return "", err
	}
	v, ok := f.sysctls[key]
	if !ok {
		return "", fmt.Errorf("read sysctl %s: %w", key, fs.ErrNotExist)
	}
	return v, nil
}

// WriteSysctl sets an existing key; like /proc/sys it cannot create one.
func (f *Fake) WriteSysctl(key, value string) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	op := "write " + key + " " + value
	if err := f.fail(op); err != nil {
		return err
	}
	if _, ok := f.sysctls[key]; !ok {
		return fmt.Errorf("write sysctl %s: %w", key, fs.ErrNotExist)
	}
	f.Ops = append(f.Ops, op)
	f.sysctls[key] = strings.TrimSpace(value)
	return nil
}

func scopeName(a Addr) string {
	if a.HostScope {
		return "host"
	}
	return "global"
}
