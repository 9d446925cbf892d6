package lvs

import (
	"bufio"
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net/netip"
	"os"
	"runtime"
	"syscall"

	"golang.org/x/sys/unix"
)

// SyncState is the role of a kernel sync daemon (IP_VS_STATE_*).
type SyncState uint32

// Sync daemon roles. The kernel runs at most one of each per network
// namespace.
const (
	SyncMaster SyncState = 1
	SyncBackup SyncState = 2
)

func (s SyncState) String() string {
	switch s {
	case SyncMaster:
		return "master"
	case SyncBackup:
		return "backup"
	}
	return fmt.Sprintf("state(%d)", uint32(s))
}

// SyncDaemon is one of the kernel's connection sync daemons: a master
// multicasts the connection table's changes, a backup receives them into its
// own table. The values are taken as they are (conf applies the defaults):
// MaxLen 0 lets the kernel size the datagrams from the interface's MTU.
type SyncDaemon struct {
	State     SyncState
	Interface string // multicast interface, at most 15 bytes
	SyncID    uint8  // the kernel takes a u32 but carries 8 bits on the wire
	MaxLen    uint16 // UDP payload; 0 = the kernel's choice
	Group     netip.Addr
	Port      uint16
	TTL       uint8
}

func (d SyncDaemon) String() string {
	return fmt.Sprintf("%v %s syncid=%d maxlen=%d group=%v port=%d ttl=%d",
		d.State, d.Interface, d.SyncID, d.MaxLen, d.Group, d.Port, d.TTL)
}

// Matches says whether a running daemon (got, as the kernel reports it)
// does what d asks. A MaxLen of 0 leaves the size to the kernel, which
// reports the size it chose, so any size matches it.
func (d SyncDaemon) Matches(got SyncDaemon) bool {
	if d.MaxLen == 0 {
		got.MaxLen = 0
	}
	return d == got
}

// SyncControl starts, stops and lists the kernel's sync daemons of one
// network namespace. IPVS is the real one.
type SyncControl interface {
	StartDaemon(d SyncDaemon) error
	StopDaemon(s SyncState) error
	Daemons() ([]SyncDaemon, error)
}

// IPVS generic netlink constants of the sync daemons (include/uapi/linux/
// ip_vs.h). Linux 2.6.28 to 4.2 know only the first three daemon
// attributes and ignore the others (their nested parse is not strict), so
// on those kernels group, port, TTL and maxlen silently keep the kernel's
// defaults; 4.3 added them.
const (
	ipvsCmdNewDaemon  = 9
	ipvsCmdDelDaemon  = 10
	ipvsCmdGetDaemon  = 11
	ipvsCmdAttrDaemon = 3

	ipvsDaemonAttrState      = 1 // u32
	ipvsDaemonAttrMcastIfn   = 2 // NUL-terminated string, < 16 bytes
	ipvsDaemonAttrSyncID     = 3 // u32
	ipvsDaemonAttrSyncMaxLen = 4 // u16
	ipvsDaemonAttrMcastGroup = 5 // in_addr, network order
	ipvsDaemonAttrMcastGrp6  = 6 // in6_addr
	ipvsDaemonAttrMcastPort  = 7 // u16, host order (the kernel converts it)
	ipvsDaemonAttrMcastTTL   = 8 // u8

	// ifNameMax is IP_VS_IFNAME_MAXLEN (16) with room for the NUL.
	ifNameMax = 15
)

func (d SyncDaemon) valid() error {
	if d.State != SyncMaster && d.State != SyncBackup {
		return fmt.Errorf("sync daemon: state %d is not master or backup", d.State)
	}
	if d.Interface == "" || len(d.Interface) > ifNameMax {
		return fmt.Errorf("sync daemon: interface %q must be 1-%d bytes", d.Interface, ifNameMax)
	}
	if d.Group.IsValid() && !d.Group.IsMulticast() {
		return fmt.Errorf("sync daemon: group %v is not a multicast address", d.Group)
	}
	return nil
}

func daemonAttrs(b []byte, d SyncDaemon, full bool) []byte {
	return nest(b, ipvsCmdAttrDaemon, func(b []byte) []byte {
		b = attr(b, ipvsDaemonAttrState, putU32(nil, uint32(d.State)))
		if !full {
			return b
		}
		b = attr(b, ipvsDaemonAttrMcastIfn, append([]byte(d.Interface), 0))
		b = attr(b, ipvsDaemonAttrSyncID, putU32(nil, uint32(d.SyncID)))
		// The kernel reads 0 as "its default" for each of these: sending
		// 0 and leaving the attribute out are the same.
		if d.MaxLen != 0 {
			b = attr(b, ipvsDaemonAttrSyncMaxLen, putU16(nil, d.MaxLen))
		}
		switch {
		case d.Group.Is4():
			b = attr(b, ipvsDaemonAttrMcastGroup, d.Group.AsSlice())
		case d.Group.Is6():
			b = attr(b, ipvsDaemonAttrMcastGrp6, d.Group.AsSlice())
		}
		if d.Port != 0 {
			b = attr(b, ipvsDaemonAttrMcastPort, putU16(nil, d.Port))
		}
		if d.TTL != 0 {
			b = attr(b, ipvsDaemonAttrMcastTTL, []byte{d.TTL})
		}
		return b
	})
}

// StartDaemon implements SyncControl: the kernel answers EEXIST if a daemon
// of that state runs already and ENODEV if the interface does not exist.
func (k *IPVS) StartDaemon(d SyncDaemon) error {
	if err := d.valid(); err != nil {
		return err
	}
	if err := k.w.request(ipvsCmdNewDaemon, func(b []byte) []byte { return daemonAttrs(b, d, true) }); err != nil {
		return fmt.Errorf("lvs: start %v sync daemon on %s: %w", d.State, d.Interface, err)
	}
	return nil
}

// StopDaemon implements SyncControl: the kernel answers ESRCH if no daemon
// of that state runs.
func (k *IPVS) StopDaemon(s SyncState) error {
	err := k.w.request(ipvsCmdDelDaemon, func(b []byte) []byte { return daemonAttrs(b, SyncDaemon{State: s}, false) })
	if errors.Is(err, errNoAck) {
		// A master stopped before its thread first ran makes the kernel
		// answer EINTR, for which netlink sends no ack at all; the
		// daemon is gone all the same. The listing says.
		ds, lerr := k.Daemons()
		if _, running := findDaemon(ds, s); lerr == nil && !running {
			return nil
		}
	}
	if err != nil {
		return fmt.Errorf("lvs: stop %v sync daemon: %w", s, err)
	}
	return nil
}

// Daemons implements SyncControl: the daemons running, as the kernel
// reports them (with the values it chose for those it was not given).
func (k *IPVS) Daemons() ([]SyncDaemon, error) {
	var out []SyncDaemon
	var perr error
	err := k.w.dump(ipvsCmdGetDaemon, func(data []byte) {
		d, err := parseDaemon(data)
		if err != nil {
			perr = err
			return
		}
		out = append(out, d)
	})
	if err == nil {
		err = perr
	}
	if err != nil {
		return nil, fmt.Errorf("lvs: list sync daemons: %w", err)
	}
	return out, nil
}

// parseDaemon decodes one GET_DAEMON reply (genl header and attributes).
func parseDaemon(data []byte) (SyncDaemon, error) {
	var d SyncDaemon
	if len(data) < 4 {
		return d, errors.New("short sync daemon message")
	}
	nested, ok := attrMap(data[4:])[ipvsCmdAttrDaemon]
	if !ok {
		return d, errors.New("sync daemon message without a daemon")
	}
	a := attrMap(nested)
	if v := a[ipvsDaemonAttrState]; len(v) == 4 {
		d.State = SyncState(binary.NativeEndian.Uint32(v))
	}
	if v := a[ipvsDaemonAttrMcastIfn]; len(v) > 0 {
		d.Interface = string(bytes.TrimRight(v, "\x00"))
	}
	if v := a[ipvsDaemonAttrSyncID]; len(v) == 4 {
		d.SyncID = uint8(binary.NativeEndian.Uint32(v))
	}
	if v := a[ipvsDaemonAttrSyncMaxLen]; len(v) == 2 {
		d.MaxLen = binary.NativeEndian.Uint16(v)
	}
	if v, ok := netip.AddrFromSlice(a[ipvsDaemonAttrMcastGroup]); ok && v.Is4() {
		d.Group = v
	}
	if v, ok := netip.AddrFromSlice(a[ipvsDaemonAttrMcastGrp6]); ok && v.Is6() {
		d.Group = v
	}
	if v := a[ipvsDaemonAttrMcastPort]; len(v) == 2 {
		d.Port = binary.NativeEndian.Uint16(v)
	}
	if v := a[ipvsDaemonAttrMcastTTL]; len(v) == 1 {
		d.TTL = v[0]
	}
	if d.State != SyncMaster && d.State != SyncBackup {
		return d, fmt.Errorf("sync daemon with state %d", d.State)
	}
	return d, nil
}

// attrMap splits netlink attributes by type (the nested and byte-order
// flags masked off); a malformed tail ends the list.
func attrMap(b []byte) map[uint16][]byte {
	m := map[uint16][]byte{}
	for len(b) >= 4 {
		l := int(binary.NativeEndian.Uint16(b))
		if l < 4 || l > len(b) {
			break
		}
		m[binary.NativeEndian.Uint16(b[2:])&0x3fff] = b[4:l]
		b = b[min(len(b), (l+3)&^3):]
	}
	return m
}

// errNoAck: the kernel sent no ack for a request. It handles a request
// within the sendmsg that carries it and queues the ack before that
// returns, so an empty receive queue (the socket does not block) after it
// means none is coming: netlink sends none when the handler returns EINTR.
var errNoAck = errors.New("no ack from the kernel")

// request sends one acked IPVS request and waits for its ack.
func (w *genlWriter) request(cmd uint8, fill func([]byte) []byte) error {
	b, seq := w.message(w.out[:0], w.family, cmd, fill)
	w.out = b
	if err := w.sock.Send(b); err != nil {
		return fmt.Errorf("netlink send: %w", err)
	}
	for {
		var res error
		done := false
		err := w.recv(func(typ uint16, s uint32, data []byte) {
			if s == seq && typ == unix.NLMSG_ERROR {
				res, done = ackErr(data), true
			}
		})
		if errors.Is(err, syscall.EAGAIN) {
			return errNoAck
		}
		if err != nil {
			return fmt.Errorf("netlink ack: %w", err)
		}
		if done {
			return res
		}
	}
}

// dump sends a dump request and calls f with the payload (genl header on)
// of each reply until the kernel's NLMSG_DONE.
func (w *genlWriter) dump(cmd uint8, f func(data []byte)) error {
	b, seq := w.message(w.out[:0], w.family, cmd, func(b []byte) []byte { return b })
	// A dump is NLM_F_DUMP without NLM_F_ACK: it ends with NLMSG_DONE.
	binary.NativeEndian.PutUint16(b[6:], unix.NLM_F_REQUEST|unix.NLM_F_DUMP)
	w.out = b
	if err := w.sock.Send(b); err != nil {
		return fmt.Errorf("netlink send: %w", err)
	}
	for {
		var res error
		done := false
		err := w.recv(func(typ uint16, s uint32, data []byte) {
			if s != seq || done {
				return
			}
			switch typ {
			case unix.NLMSG_DONE:
				done = true
			case unix.NLMSG_ERROR:
				res, done = ackErr(data), true
			case w.family:
				f(data)
			}
		})
		if err != nil {
			return fmt.Errorf("netlink dump: %w", err)
		}
		if done {
			return res
		}
	}
}

// ConnEntries counts the entries of the calling thread's network
// namespace's IPVS connection table (connections and persistence
// templates, local and synced) from /proc/net/ip_vs_conn. The kernel has
// no counter for it over netlink (GET_INFO gives the hash table's size,
// not its fill), and the real servers' active/inactive counters leave out
// templates and entries of services lvsha does not own. The file costs a
// line per entry, read only when status or metrics ask.
func ConnEntries() (int, error) {
	// /proc/net follows the process's first thread; a goroutine of a
	// test may sit in another namespace on a locked thread.
	runtime.LockOSThread()
	defer runtime.UnlockOSThread()
	f, err := os.Open("/proc/thread-self/net/ip_vs_conn")
	if err != nil {
		return 0, fmt.Errorf("lvs: connection entries: %w", err)
	}
	defer f.Close()
	n, err := countLines(f)
	if err != nil {
		return 0, fmt.Errorf("lvs: connection entries: %w", err)
	}
	return max(n-1, 0), nil // the header line
}

func countLines(r io.Reader) (int, error) {
	br := bufio.NewReaderSize(r, 64<<10)
	n := 0
	for {
		_, err := br.ReadSlice('\n')
		switch {
		case err == nil:
			n++
		case errors.Is(err, bufio.ErrBufferFull):
		case errors.Is(err, io.EOF):
			return n, nil
		default:
			return n, err
		}
	}
}

// ApplySync makes the kernel run exactly the daemons of want (at most one
// per state): one that runs and Matches is left alone, so connections
// being synced see no gap, and a daemon a killed lvsha left is adopted;
// one that differs is stopped and started again; one not wanted is
// stopped. It returns what it changed, for logs. A daemon started by
// someone else between the listing and the start (EEXIST) is replaced.
func ApplySync(c SyncControl, want []SyncDaemon) ([]string, error) {
	have, err := c.Daemons()
	if err != nil {
		return nil, err
	}
	var done []string
	var errs []error
	for _, st := range []SyncState{SyncMaster, SyncBackup} {
		w, wok := findDaemon(want, st)
		h, hok := findDaemon(have, st)
		if wok && hok && w.Matches(h) {
			continue
		}
		if hok {
			if err := c.StopDaemon(st); err != nil && !errors.Is(err, syscall.ESRCH) {
				errs = append(errs, err)
				continue
			}
			done = append(done, "stopped "+h.String())
		}
		if !wok {
			continue
		}
		err := c.StartDaemon(w)
		if errors.Is(err, syscall.EEXIST) {
			if err = c.StopDaemon(st); err == nil || errors.Is(err, syscall.ESRCH) {
				err = c.StartDaemon(w)
			}
		}
		if err != nil {
			errs = append(errs, err)
			continue
		}
		done = append(done, "started "+w.String())
	}
	return done, errors.Join(errs...)
}

func findDaemon(ds []SyncDaemon, st SyncState) (SyncDaemon, bool) {
	for _, d := range ds {
		if d.State == st {
			return d, true
		}
	}
	return SyncDaemon{}, false
}
