// Package lvstest fakes the kernel's IPVS table for tests, in the way
// mdlayher's nltest fakes a netlink socket: New returns the production
// lvs.IPVS, whose writes go through its real encoder and batching onto a fake
// generic netlink socket. The fake decodes each request as the kernel would,
// applies it to an in-memory table and answers with one ack per request, so
// a test sees exactly the changes production sends and a wrong attribute, a
// lost request or a wrong ack mapping shows in the table or the errors.
//
// The decoder is written from include/uapi/linux/ip_vs.h and
// net/netfilter/ipvs/ip_vs_ctl.c, not from lvs's encoder, and keeps its own
// copy of the constants: sharing them would let a wrong constant pass.
//
// Reads (Services, Destinations) are the table's own methods: production
// reads through moby/ipvs, whose socket cannot be replaced; the VM tests
// cover that path.
package lvstest

import (
	"fmt"
	"net/netip"
	"slices"
	"strings"
	"sync"
	"syscall"
	"testing"

	"github.com/lvsha/lvsha/lvs"
)

// Table is an in-memory IPVS table behind a fake generic netlink socket. It
// is safe for concurrent use (a daemon's loop writes while a test reads).
type Table struct {
	mu      sync.Mutex
	entries []Entry
	calls   []string
	sends   []int
	replies [][]byte
	fail    func(call string) error
	noAcks  bool
	daemons []lvs.SyncDaemon
}

// Entry is one virtual service of the table with its real servers.
type Entry struct {
	Service lvs.KService
	Dests   []lvs.KDest
}

// New returns an empty table and the production kernel over it.
func New(tb testing.TB) (*Table, *lvs.IPVS) {
	tb.Helper()
	t := &Table{}
	k, err := lvs.NewIPVS(t, socket{t})
	if err != nil {
		tb.Fatalf("lvstest: %v", err)
	}
	t.Reset() // the family lookup is not one of the test's calls
	return t, k
}

// SetFail makes every later call ask f first: a non-nil result fails the
// call (a write is acked with its errno, EIO if it has none) and changes
// nothing. call is as Calls shows it.
func (t *Table) SetFail(f func(call string) error) {
	t.mu.Lock()
	defer t.mu.Unlock()
	t.fail = f
}

// LoseAcks makes the table apply later write requests but answer none of
// them, as when acks are lost (the receive buffer overflowed): the writer
// cannot know what happened.
func (t *Table) LoseAcks(lose bool) {
	t.mu.Lock()
	defer t.mu.Unlock()
	t.noAcks = lose
}

// Calls returns every read and every write request the table received, in
// order, as "Services", "Destinations KEY", "NewService KEY SCHED
// timeout=N", "UpdateService ...", "DelService KEY", "NewDestination KEY
// ADDR weight=W FWD", "UpdateDestination ...", "DelDestination KEY ADDR",
// and for the sync daemons "NewDaemon " + lvs.SyncDaemon.String() (as
// decoded, before the kernel's defaults), "DelDaemon STATE" and "Daemons".
func (t *Table) Calls() []string {
	t.mu.Lock()
	defer t.mu.Unlock()
	return slices.Clone(t.calls)
}

// Writes counts the write requests among Calls.
func (t *Table) Writes() int {
	t.mu.Lock()
	defer t.mu.Unlock()
	n := 0
	for _, c := range t.calls {
		if !strings.HasPrefix(c, "Services") && !strings.HasPrefix(c, "Destinations") {
			n++
		}
	}
	return n
}

// Sends returns the number of requests in each datagram sent, in order.
func (t *Table) Sends() []int {
	t.mu.Lock()
	defer t.mu.Unlock()
	return slices.Clone(t.sends)
}

// Reset forgets the logged calls and datagrams.
func (t *Table) Reset() {
	t.mu.Lock()
	defer t.mu.Unlock()
	t.calls, t.sends = nil, nil
}

// Entries returns a copy of the table, in the order services were made;
// unlike Services it is not logged and cannot fail.
func (t *Table) Entries() []Entry {
	t.mu.Lock()
	defer t.mu.Unlock()
	out := make([]Entry, len(t.entries))
	for i, e := range t.entries {
		out[i] = Entry{e.Service, slices.Clone(e.Dests)}
	}
	return out
}

// Dump renders the table in a stable form, one service a line:
// "KEY SCHED t=TIMEOUT: ADDR/WEIGHT/FWD ...", lines sorted.
func (t *Table) Dump() string {
	var lines []string
	for _, e := range t.Entries() {
		l := fmt.Sprintf("%v %s t=%d:", e.Service.Key, e.Service.Scheduler, e.Service.Timeout)
		for _, d := range e.Dests {
			l += fmt.Sprintf(" %v/%d/%v", d.Addr, d.Weight, d.Forwarding)
		}
		lines = append(lines, l)
	}
	slices.Sort(lines)
	return strings.Join(lines, "\n")
}

// Drift makes a change as someone else would (ipvsadm, another process):
// not logged, not subject to SetFail.
func (t *Table) Drift(c lvs.Change) error {
	t.mu.Lock()
	defer t.mu.Unlock()
	return t.apply(c)
}

// SetConns sets a real server's connection counters.
func (t *Table) SetConns(k lvs.Key, a netip.AddrPort, active, inactive int) error {
	t.mu.Lock()
	defer t.mu.Unlock()
	i := t.find(k)
	if i < 0 {
		return syscall.ESRCH
	}
	j := t.findDest(i, a)
	if j < 0 {
		return syscall.ENOENT
	}
	t.entries[i].Dests[j].ActiveConns, t.entries[i].Dests[j].InactConns = active, inactive
	return nil
}

func (t *Table) call(c string) error {
	t.calls = append(t.calls, c)
	if t.fail != nil {
		return t.fail(c)
	}
	return nil
}

// Services implements lvs.Reader.
func (t *Table) Services() ([]lvs.KService, error) {
	t.mu.Lock()
	defer t.mu.Unlock()
	if err := t.call("Services"); err != nil {
		return nil, err
	}
	out := make([]lvs.KService, len(t.entries))
	for i, e := range t.entries {
		out[i] = e.Service
	}
	return out, nil
}

// Destinations implements lvs.Reader.
func (t *Table) Destinations(k lvs.Key) ([]lvs.KDest, error) {
	t.mu.Lock()
	defer t.mu.Unlock()
	if err := t.call("Destinations " + k.String()); err != nil {
		return nil, err
	}
	i := t.find(k)
	if i < 0 {
		return nil, syscall.ESRCH
	}
	return slices.Clone(t.entries[i].Dests), nil
}

func (t *Table) find(k lvs.Key) int {
	return slices.IndexFunc(t.entries, func(e Entry) bool { return e.Service.Key == k })
}

func (t *Table) findDest(i int, a netip.AddrPort) int {
	return slices.IndexFunc(t.entries[i].Dests, func(d lvs.KDest) bool { return d.Addr == a })
}

// apply changes the table as the kernel does, with the kernel's errors.
func (t *Table) apply(c lvs.Change) error {
	k := c.Service.Key
	i := t.find(k)
	switch c.Kind {
	case lvs.OpNewService, lvs.OpUpdateService:
		if !slices.Contains(lvs.Schedulers, c.Service.Scheduler) {
			return syscall.ENOENT // no such scheduler module
		}
		if c.Kind == lvs.OpNewService {
			if i >= 0 {
				return syscall.EEXIST
			}
			t.entries = append(t.entries, Entry{Service: lvs.KService{Key: k, Scheduler: c.Service.Scheduler, Timeout: c.Service.Timeout, SchedFlags: c.Service.SchedFlags}})
			return nil
		}
		if i < 0 {
			return syscall.ESRCH
		}
		t.entries[i].Service.Scheduler, t.entries[i].Service.Timeout, t.entries[i].Service.SchedFlags = c.Service.Scheduler, c.Service.Timeout, c.Service.SchedFlags
		return nil
	}
	if i < 0 {
		return syscall.ESRCH
	}
	if c.Kind == lvs.OpDelService {
		t.entries = slices.Delete(t.entries, i, i+1)
		return nil
	}
	j := t.findDest(i, c.Dest.Addr)
	switch c.Kind {
	case lvs.OpNewDest:
		if j >= 0 {
			return syscall.EEXIST
		}
		t.entries[i].Dests = append(t.entries[i].Dests, lvs.KDest{Addr: c.Dest.Addr, Weight: c.Dest.Weight, Forwarding: c.Dest.Forwarding})
	case lvs.OpUpdateDest:
		if j < 0 {
			return syscall.ENOENT
		}
		d := &t.entries[i].Dests[j]
		d.Weight, d.Forwarding = c.Dest.Weight, c.Dest.Forwarding
	case lvs.OpDelDest:
		if j < 0 {
			return syscall.ENOENT
		}
		t.entries[i].Dests = slices.Delete(t.entries[i].Dests, j, j+1)
	default:
		return syscall.EINVAL
	}
	return nil
}
