// Package rstest fakes the host that realserver mode changes: interfaces
// with their addresses and the arp sysctls of each, behind the same
// realserver.Kernel seam the real Host implements (rtnetlink for addresses,
// /proc/sys for sysctls). The namespace tests run the real Host.
package rstest

import (
	"fmt"
	"io/fs"
	"slices"
	"strings"
	"sync"

	"github.com/lvsha/lvsha/lvs/realserver"
)

// Host is an in-memory realserver.Kernel: a set of interfaces with their
// addresses and the arp sysctls of each. Its methods are safe for
// concurrent use; a test sets up and inspects Addresses and Sysctls
// directly while no Up, Down or Status runs.
type Host struct {
	mu sync.Mutex
	// Addresses are the addresses on every interface.
	Addresses []realserver.Addr
	// Sysctls maps a key below /proc/sys to its value; only the keys
	// New made exist.
	Sysctls map[string]string
	// Fail, if set, is asked before every operation; a non-nil result is
	// returned instead of doing it. op is "list", "add IF PREFIX scope S",
	// "del IF PREFIX scope S" (S is host or global; an add of an address
	// with a label or flags ends in " label L" and " flags 0xN"), "read
	// KEY" or "write KEY VALUE".
	Fail func(op string) error
	// Ops records every operation that changed something, in order.
	Ops []string
}

var _ realserver.Kernel = (*Host)(nil)

// ConfKey is the sysctl key of an interface's IPv4 setting. The fake spells
// it out itself, as the kernel does, rather than share realserver's.
func ConfKey(iface, name string) string { return "net/ipv4/conf/" + iface + "/" + name }

// New returns a host with lo and the given interfaces, no addresses and
// every arp_ignore/arp_announce at 0 (the kernel's defaults).
func New(ifaces ...string) *Host {
	f := &Host{Sysctls: map[string]string{}}
	for _, i := range append([]string{"all", "default", "lo"}, ifaces...) {
		f.Sysctls[ConfKey(i, "arp_ignore")] = "0"
		f.Sysctls[ConfKey(i, "arp_announce")] = "0"
	}
	return f
}

func (f *Host) fail(op string) error {
	if f.Fail == nil {
		return nil
	}
	return f.Fail(op)
}

func (f *Host) hasIface(name string) bool {
	_, ok := f.Sysctls[ConfKey(name, "arp_ignore")]
	return ok && name != "all" && name != "default"
}

// Addrs implements realserver.Kernel: it lists every address.
func (f *Host) Addrs() ([]realserver.Addr, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if err := f.fail("list"); err != nil {
		return nil, err
	}
	return slices.Clone(f.Addresses), nil
}

// AddAddr implements realserver.Kernel: it adds a. Like RTM_NEWADDR with
// NLM_F_REPLACE, it leaves an address with a's prefix already on the
// interface with its scope, label and flags.
func (f *Host) AddAddr(a realserver.Addr) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	op := fmt.Sprintf("add %s %s scope %s", a.Interface, a.Prefix, scopeName(a))
	if a.Label != "" {
		op += " label " + a.Label
	}
	if a.Flags != 0 {
		op += fmt.Sprintf(" flags %#x", a.Flags)
	}
	if err := f.fail(op); err != nil {
		return err
	}
	if !f.hasIface(a.Interface) {
		return fmt.Errorf("interface %s: link not found", a.Interface)
	}
	f.Ops = append(f.Ops, op)
	if slices.ContainsFunc(f.Addresses, func(b realserver.Addr) bool {
		return b.Interface == a.Interface && b.Prefix == a.Prefix
	}) {
		return nil
	}
	f.Addresses = append(f.Addresses, a)
	return nil
}

// DelAddr implements realserver.Kernel: it removes the address with a's
// prefix if it is there.
func (f *Host) DelAddr(a realserver.Addr) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	op := fmt.Sprintf("del %s %s scope %s", a.Interface, a.Prefix, scopeName(a))
	if err := f.fail(op); err != nil {
		return err
	}
	f.Ops = append(f.Ops, op)
	f.Addresses = slices.DeleteFunc(f.Addresses, func(b realserver.Addr) bool {
		return b.Interface == a.Interface && b.Prefix == a.Prefix
	})
	return nil
}

// ReadSysctl implements realserver.Kernel: it returns a value, fs.ErrNotExist for an unknown key.
func (f *Host) ReadSysctl(key string) (string, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if err := f.fail("read " + key); err != nil {
		return "", err
	}
	v, ok := f.Sysctls[key]
	if !ok {
		return "", fmt.Errorf("read sysctl %s: %w", key, fs.ErrNotExist)
	}
	return v, nil
}

// WriteSysctl implements realserver.Kernel: it sets an existing key; like /proc/sys it cannot create one.
func (f *Host) WriteSysctl(key, value string) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	op := "write " + key + " " + value
	if err := f.fail(op); err != nil {
		return err
	}
	if _, ok := f.Sysctls[key]; !ok {
		return fmt.Errorf("write sysctl %s: %w", key, fs.ErrNotExist)
	}
	f.Ops = append(f.Ops, op)
	f.Sysctls[key] = strings.TrimSpace(value)
	return nil
}

func scopeName(a realserver.Addr) string {
	if a.HostScope {
		return "host"
	}
	return "global"
}
