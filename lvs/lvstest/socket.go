package lvstest

import (
	"encoding/binary"
	"errors"
	"fmt"
	"net/netip"
	"syscall"

	"github.com/lvsha/lvsha/lvs"
)

// socket is the fake generic netlink socket lvs.NewIPVS writes to.
type socket struct{ t *Table }

// Send decodes every request of one datagram, applies it and queues its
// replies, as the kernel does within one sendmsg.
func (s socket) Send(b []byte) error {
	t := s.t
	t.mu.Lock()
	defer t.mu.Unlock()
	n := 0
	for len(b) > 0 {
		if len(b) < nlmsgHdrLen {
			return syscall.EINVAL
		}
		l := int(binary.NativeEndian.Uint32(b))
		if l < nlmsgHdrLen || l > len(b) {
			return syscall.EINVAL
		}
		t.request(b[:l])
		n++
		b = b[min(len(b), (l+3)&^3):]
	}
	t.sends = append(t.sends, n)
	return nil
}

// Receive returns one queued reply; with none, EAGAIN, which is what the
// real socket's receive timeout gives.
func (s socket) Receive(b []byte) (int, error) {
	t := s.t
	t.mu.Lock()
	defer t.mu.Unlock()
	if len(t.replies) == 0 {
		return 0, syscall.EAGAIN
	}
	n := copy(b, t.replies[0])
	t.replies = t.replies[1:]
	return n, nil
}

// Constants of the kernel's side (linux/netlink.h, linux/genetlink.h,
// linux/ip_vs.h).
const (
	nlmsgHdrLen = 16
	nlmsgError  = 2
	nlmFRequest = 0x1
	nlmFAck     = 0x4
	nlmFCapped  = 0x100
	nlmFDump    = 0x300
	nlmsgDone   = 3

	genlIDCtrl         = 0x10
	ctrlCmdNewFamily   = 1
	ctrlCmdGetFamily   = 3
	ctrlAttrFamilyID   = 1
	ctrlAttrFamilyName = 2
	familyID           = 0x23 // any free id: production must look it up
	ipvsCmdNewService  = 1
	ipvsCmdSetService  = 2
	ipvsCmdDelService  = 3
	ipvsCmdNewDest     = 5
	ipvsCmdSetDest     = 6
	ipvsCmdDelDest     = 7
	ipvsCmdNewDaemon   = 9
	ipvsCmdDelDaemon   = 10
	ipvsCmdGetDaemon   = 11
	ipvsCmdAttrService = 1
	ipvsCmdAttrDaemon  = 3
	daemonAttrState    = 1
	daemonAttrIfn      = 2
	daemonAttrSyncID   = 3
	daemonAttrMaxLen   = 4
	daemonAttrGroup    = 5
	daemonAttrGroup6   = 6
	daemonAttrPort     = 7
	daemonAttrTTL      = 8
	stateMaster        = 1
	stateBackup        = 2
	ipvsCmdAttrDest    = 2
	svcAttrAF          = 1
	svcAttrProtocol    = 2
	svcAttrAddr        = 3
	svcAttrPort        = 4
	svcAttrFWMark      = 5
	svcAttrSchedName   = 6
	svcAttrFlags       = 7
	svcAttrTimeout     = 8
	svcAttrNetmask     = 9
	destAttrAddr       = 1
	destAttrPort       = 2
	destAttrFwdMethod  = 3
	destAttrWeight     = 4
	destAttrUThresh    = 5
	destAttrLThresh    = 6
	destAttrAF         = 11
	svcFlagPersistent  = 0x1
	svcSchedFlags      = 0x38 // IP_VS_SVC_F_SCHED1-3
	connFMasq          = 0
	connFTunnel        = 2
	connFDRoute        = 3
	afInet, afInet6    = 2, 10
	protoTCP, protoUDP = 6, 17
	maxWeight          = 1<<31 - 1
)

// request handles one netlink message and queues its replies.
func (t *Table) request(m []byte) {
	typ := binary.NativeEndian.Uint16(m[4:])
	flags := binary.NativeEndian.Uint16(m[6:])
	seq := binary.NativeEndian.Uint32(m[8:])
	var err error
	switch {
	case flags&nlmFRequest == 0 || len(m) < nlmsgHdrLen+4:
		err = syscall.EINVAL
	case typ == genlIDCtrl:
		err = t.getFamily(m, seq)
	case typ != familyID:
		err = syscall.ENOENT
	case m[nlmsgHdrLen] == ipvsCmdGetDaemon:
		if flags&nlmFDump == 0 {
			err = syscall.EOPNOTSUPP // the kernel has only a dumpit for it
			break
		}
		t.dumpDaemons(seq)
		return
	case m[nlmsgHdrLen] == ipvsCmdNewDaemon || m[nlmsgHdrLen] == ipvsCmdDelDaemon:
		err = t.daemon(m[nlmsgHdrLen], attrs(m[nlmsgHdrLen+4:]))
		if t.noAcks {
			return
		}
	default:
		err = t.ipvs(m[nlmsgHdrLen], attrs(m[nlmsgHdrLen+4:]))
		if t.noAcks {
			return
		}
	}
	// The kernel always acks an error; a success only when asked.
	if err != nil || flags&nlmFAck != 0 {
		t.ack(m, err)
	}
}

func (t *Table) getFamily(m []byte, seq uint32) error {
	if m[nlmsgHdrLen] != ctrlCmdGetFamily || string(attrs(m[nlmsgHdrLen+4:])[ctrlAttrFamilyName]) != "IPVS\x00" {
		return syscall.ENOENT
	}
	r := hdr(genlIDCtrl, 0, seq)
	r = append(r, ctrlCmdNewFamily, 2, 0, 0)
	r = putAttr(r, ctrlAttrFamilyName, []byte("IPVS\x00"))
	r = putAttr(r, ctrlAttrFamilyID, binary.NativeEndian.AppendUint16(nil, familyID))
	t.reply(r)
	return nil
}

// ack queues an NLMSG_ERROR reply: the errno (0 for success) and, as with
// NETLINK_CAP_ACK, only the request's header.
func (t *Table) ack(req []byte, err error) {
	code := int32(0)
	if err != nil {
		var e syscall.Errno
		if !errors.As(err, &e) {
			e = syscall.EIO
		}
		code = -int32(e)
	}
	r := hdr(nlmsgError, nlmFCapped, binary.NativeEndian.Uint32(req[8:]))
	r = binary.NativeEndian.AppendUint32(r, uint32(code))
	r = append(r, req[:nlmsgHdrLen]...)
	t.reply(r)
}

func hdr(typ, flags uint16, seq uint32) []byte {
	b := make([]byte, nlmsgHdrLen)
	binary.NativeEndian.PutUint16(b[4:], typ)
	binary.NativeEndian.PutUint16(b[6:], flags)
	binary.NativeEndian.PutUint32(b[8:], seq)
	return b
}

// reply fixes the message's length and queues it as its own datagram.
func (t *Table) reply(m []byte) {
	binary.NativeEndian.PutUint32(m, uint32(len(m)))
	t.replies = append(t.replies, m)
}

func putAttr(b []byte, typ uint16, p []byte) []byte {
	b = binary.NativeEndian.AppendUint16(b, uint16(4+len(p)))
	b = binary.NativeEndian.AppendUint16(b, typ)
	b = append(b, p...)
	for len(b)%4 != 0 {
		b = append(b, 0)
	}
	return b
}

// attrs splits netlink attributes by type (a malformed tail is dropped,
// which then shows as a missing attribute).
func attrs(b []byte) map[uint16][]byte {
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

func u16(b []byte) (uint16, bool) {
	if len(b) != 2 {
		return 0, false
	}
	return binary.NativeEndian.Uint16(b), true
}

func u32(b []byte) (uint32, bool) {
	if len(b) != 4 {
		return 0, false
	}
	return binary.NativeEndian.Uint32(b), true
}

var kindOfCmd = map[uint8]lvs.OpKind{
	ipvsCmdNewService: lvs.OpNewService, ipvsCmdSetService: lvs.OpUpdateService, ipvsCmdDelService: lvs.OpDelService,
	ipvsCmdNewDest: lvs.OpNewDest, ipvsCmdSetDest: lvs.OpUpdateDest, ipvsCmdDelDest: lvs.OpDelDest,
}

var callName = map[lvs.OpKind]string{
	lvs.OpNewService: "NewService", lvs.OpUpdateService: "UpdateService", lvs.OpDelService: "DelService",
	lvs.OpNewDest: "NewDestination", lvs.OpUpdateDest: "UpdateDestination", lvs.OpDelDest: "DelDestination",
}

// ipvs decodes one IPVS command, logs it, and applies it.
func (t *Table) ipvs(cmd uint8, top map[uint16][]byte) error {
	kind, ok := kindOfCmd[cmd]
	if !ok {
		return syscall.EOPNOTSUPP
	}
	svcFull := kind == lvs.OpNewService || kind == lvs.OpUpdateService
	svc, err := decodeService(top[ipvsCmdAttrService], svcFull)
	if err != nil {
		t.calls = append(t.calls, fmt.Sprintf("%s malformed: %v", callName[kind], err))
		return err
	}
	c := lvs.Change{Kind: kind, Service: svc}
	call := callName[kind] + " " + svc.Key.String()
	switch kind {
	case lvs.OpNewService, lvs.OpUpdateService:
		call += fmt.Sprintf(" %s timeout=%d", svc.Scheduler, svc.Timeout)
		if svc.SchedFlags != 0 {
			call += fmt.Sprintf(" flags=%#x", svc.SchedFlags)
		}
	case lvs.OpNewDest, lvs.OpUpdateDest, lvs.OpDelDest:
		d, err := decodeDest(top[ipvsCmdAttrDest], kind != lvs.OpDelDest)
		if err != nil {
			t.calls = append(t.calls, fmt.Sprintf("%s %v malformed: %v", callName[kind], svc.Key, err))
			return err
		}
		c.Dest = d
		call += " " + d.Addr.String()
		if kind != lvs.OpDelDest {
			call += fmt.Sprintf(" weight=%d %v", d.Weight, d.Forwarding)
		}
	}
	if err := t.call(call); err != nil {
		return err
	}
	return t.apply(c)
}

// decodeService reads a service's key and, if full, its settings, with the
// kernel's rule that a full service must carry every one of them.
func decodeService(b []byte, full bool) (lvs.KService, error) {
	var s lvs.KService
	if b == nil {
		return s, syscall.EINVAL
	}
	a := attrs(b)
	af, ok := u16(a[svcAttrAF])
	if !ok {
		return s, syscall.EINVAL
	}
	if fw, ok := a[svcAttrFWMark]; ok {
		m, ok := u32(fw)
		if !ok || m == 0 {
			return s, syscall.EINVAL
		}
		s.Key.FWMark, s.Key.FWMark6 = m, af == afInet6
	} else {
		proto, ok1 := u16(a[svcAttrProtocol])
		port, ok2 := a[svcAttrPort]
		addr, ok3 := addrOf(af, a[svcAttrAddr])
		if !ok1 || !ok2 || len(port) != 2 || !ok3 {
			return s, syscall.EINVAL
		}
		switch proto {
		case protoTCP:
			s.Key.Proto = lvs.TCP
		case protoUDP:
			s.Key.Proto = lvs.UDP
		default:
			return s, syscall.EAFNOSUPPORT
		}
		s.Key.Addr = netip.AddrPortFrom(addr, binary.BigEndian.Uint16(port))
	}
	if !full {
		return s, nil
	}
	sched, fl, to, nm := a[svcAttrSchedName], a[svcAttrFlags], a[svcAttrTimeout], a[svcAttrNetmask]
	timeout, ok1 := u32(to)
	mask, ok2 := u32(nm)
	if len(sched) == 0 || sched[len(sched)-1] != 0 || len(fl) != 8 || !ok1 || !ok2 {
		return s, syscall.EINVAL
	}
	want := uint32(0xFFFFFFFF)
	if af == afInet6 {
		want = 128
	}
	if mask != want {
		return s, syscall.EINVAL // lvs makes only single-address services
	}
	s.Scheduler = string(sched[:len(sched)-1])
	flags, flagMask := binary.NativeEndian.Uint32(fl), binary.NativeEndian.Uint32(fl[4:])
	// Read back, a service has a timeout only while it is persistent.
	if flags&flagMask&svcFlagPersistent != 0 {
		s.Timeout = timeout
	}
	s.SchedFlags = flags & flagMask & svcSchedFlags
	return s, nil
}

func decodeDest(b []byte, full bool) (lvs.KDest, error) {
	var d lvs.KDest
	if b == nil {
		return d, syscall.EINVAL
	}
	a := attrs(b)
	af := uint16(afInet)
	if len(a[destAttrAddr]) == 16 {
		af = afInet6
	}
	if v, ok := a[destAttrAF]; ok {
		if f, ok := u16(v); !ok || f != af {
			return d, syscall.EINVAL
		}
	}
	addr, ok := addrOf(af, a[destAttrAddr])
	port := a[destAttrPort]
	if !ok || len(port) != 2 {
		return d, syscall.EINVAL
	}
	d.Addr = netip.AddrPortFrom(addr, binary.BigEndian.Uint16(port))
	if !full {
		return d, nil
	}
	fwd, ok1 := u32(a[destAttrFwdMethod])
	w, ok2 := u32(a[destAttrWeight])
	_, ok3 := u32(a[destAttrUThresh])
	_, ok4 := u32(a[destAttrLThresh])
	if !ok1 || !ok2 || !ok3 || !ok4 || w > maxWeight {
		return d, syscall.EINVAL
	}
	switch fwd {
	case connFDRoute:
		d.Forwarding = lvs.DR
	case connFMasq:
		d.Forwarding = lvs.NAT
	case connFTunnel:
		d.Forwarding = lvs.Tunnel
	default:
		return d, syscall.EINVAL
	}
	d.Weight = int(w)
	return d, nil
}

func addrOf(af uint16, b []byte) (netip.Addr, bool) {
	switch {
	case af == afInet && len(b) == 4:
		return netip.AddrFrom4([4]byte(b)), true
	case af == afInet6 && len(b) == 16:
		return netip.AddrFrom16([16]byte(b)), true
	}
	return netip.Addr{}, false
}
