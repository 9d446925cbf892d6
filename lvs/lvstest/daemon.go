package lvstest

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"net/netip"
	"slices"
	"syscall"

	"github.com/lvsha/lvsha/lvs"
)

// The kernel's defaults for what a NEW_DAEMON request leaves out or sets
// to 0 (net/netfilter/ipvs/ip_vs_sync.c, start_sync_thread).
var defaultGroup = netip.AddrFrom4([4]byte{224, 0, 0, 81})

const (
	defaultPort = 8848
	defaultTTL  = 1
	// defaultMaxLen is the kernel's size for a 1500-byte MTU: the MTU less
	// the IPv4 and UDP headers.
	defaultMaxLen = 1500 - 20 - 8
)

// Daemons returns the sync daemons running in the fake kernel, master first;
// unlike the lvs.IPVS call it is not logged.
func (t *Table) Daemons() []lvs.SyncDaemon {
	t.mu.Lock()
	defer t.mu.Unlock()
	return t.sortedDaemons()
}

// StartDaemonBehind starts a daemon as someone else would (ipvsadm, or a
// killed lvsha's leftover): not logged, with the kernel's defaults and
// EEXIST.
func (t *Table) StartDaemonBehind(d lvs.SyncDaemon) error {
	t.mu.Lock()
	defer t.mu.Unlock()
	return t.startDaemon(d)
}

func (t *Table) sortedDaemons() []lvs.SyncDaemon {
	out := slices.Clone(t.daemons)
	slices.SortFunc(out, func(a, b lvs.SyncDaemon) int { return int(a.State) - int(b.State) })
	return out
}

func (t *Table) startDaemon(d lvs.SyncDaemon) error {
	if slices.ContainsFunc(t.daemons, func(x lvs.SyncDaemon) bool { return x.State == d.State }) {
		return syscall.EEXIST
	}
	if !d.Group.IsValid() {
		d.Group = defaultGroup
	}
	if d.Port == 0 {
		d.Port = defaultPort
	}
	if d.TTL == 0 {
		d.TTL = defaultTTL
	}
	if d.MaxLen == 0 {
		d.MaxLen = defaultMaxLen
	}
	t.daemons = append(t.daemons, d)
	return nil
}

// daemon decodes a NEW_DAEMON or DEL_DAEMON request, with the kernel's
// rules: NEW needs state, interface and sync id, DEL needs the state.
func (t *Table) daemon(cmd uint8, top map[uint16][]byte) error {
	name := "NewDaemon"
	if cmd == ipvsCmdDelDaemon {
		name = "DelDaemon"
	}
	nested, ok := top[ipvsCmdAttrDaemon]
	if !ok {
		t.calls = append(t.calls, name+" malformed: no daemon attribute")
		return syscall.EINVAL
	}
	a := attrs(nested)
	st, ok := u32(a[daemonAttrState])
	if !ok || (st != stateMaster && st != stateBackup) {
		t.calls = append(t.calls, name+" malformed: state")
		return syscall.EINVAL
	}
	d := lvs.SyncDaemon{State: lvs.SyncState(st)}
	if cmd == ipvsCmdDelDaemon {
		if err := t.call(fmt.Sprintf("DelDaemon %v", d.State)); err != nil {
			return err
		}
		i := slices.IndexFunc(t.daemons, func(x lvs.SyncDaemon) bool { return x.State == d.State })
		if i < 0 {
			return syscall.ESRCH
		}
		t.daemons = slices.Delete(t.daemons, i, i+1)
		return nil
	}
	ifn, okI := a[daemonAttrIfn]
	id, okS := u32(a[daemonAttrSyncID])
	if !okI || len(ifn) < 2 || len(ifn) > 16 || ifn[len(ifn)-1] != 0 || bytes.IndexByte(ifn, 0) != len(ifn)-1 || !okS {
		t.calls = append(t.calls, name+" malformed: interface or sync id")
		return syscall.EINVAL
	}
	d.Interface, d.SyncID = string(ifn[:len(ifn)-1]), uint8(id)
	if v, ok := a[daemonAttrMaxLen]; ok {
		if d.MaxLen, ok = u16(v); !ok {
			return syscall.EINVAL
		}
	}
	if v, ok := a[daemonAttrGroup]; ok {
		if len(v) != 4 {
			return syscall.EINVAL
		}
		d.Group = netip.AddrFrom4([4]byte(v))
		if !d.Group.IsMulticast() {
			return syscall.EINVAL
		}
	} else if v, ok := a[daemonAttrGroup6]; ok {
		if len(v) != 16 {
			return syscall.EINVAL
		}
		d.Group = netip.AddrFrom16([16]byte(v))
		if !d.Group.IsMulticast() {
			return syscall.EINVAL
		}
	}
	if v, ok := a[daemonAttrPort]; ok {
		if d.Port, ok = u16(v); !ok {
			return syscall.EINVAL
		}
	}
	if v, ok := a[daemonAttrTTL]; ok {
		if len(v) != 1 {
			return syscall.EINVAL
		}
		d.TTL = v[0]
	}
	if err := t.call("NewDaemon " + d.String()); err != nil {
		return err
	}
	return t.startDaemon(d)
}

// dumpDaemons answers a GET_DAEMON dump: one message per daemon, then
// NLMSG_DONE, as the kernel's dumpit does.
func (t *Table) dumpDaemons(seq uint32) {
	if err := t.call("Daemons"); err != nil {
		r := hdr(nlmsgError, 0, seq)
		var e syscall.Errno
		if !errors.As(err, &e) {
			e = syscall.EIO
		}
		r = binary.NativeEndian.AppendUint32(r, uint32(-int32(e)))
		r = append(r, make([]byte, nlmsgHdrLen)...)
		t.reply(r)
		return
	}
	for _, d := range t.sortedDaemons() {
		r := hdr(familyID, 0x2 /* NLM_F_MULTI */, seq)
		r = append(r, ipvsCmdNewDaemon, 1, 0, 0)
		var n []byte
		n = putAttr(n, daemonAttrState, binary.NativeEndian.AppendUint32(nil, uint32(d.State)))
		n = putAttr(n, daemonAttrIfn, append([]byte(d.Interface), 0))
		n = putAttr(n, daemonAttrSyncID, binary.NativeEndian.AppendUint32(nil, uint32(d.SyncID)))
		n = putAttr(n, daemonAttrMaxLen, binary.NativeEndian.AppendUint16(nil, d.MaxLen))
		n = putAttr(n, daemonAttrPort, binary.NativeEndian.AppendUint16(nil, d.Port))
		n = putAttr(n, daemonAttrTTL, []byte{d.TTL})
		if d.Group.Is4() {
			n = putAttr(n, daemonAttrGroup, d.Group.AsSlice())
		} else {
			n = putAttr(n, daemonAttrGroup6, d.Group.AsSlice())
		}
		r = putAttr(r, ipvsCmdAttrDaemon, n)
		t.reply(r)
	}
	r := hdr(nlmsgDone, 0x2, seq)
	r = binary.NativeEndian.AppendUint32(r, 0)
	t.reply(r)
}
