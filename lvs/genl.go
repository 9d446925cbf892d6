package lvs

import (
	"encoding/binary"
	"errors"
	"fmt"
	"syscall"

	"github.com/vishvananda/netlink/nl"
	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"
)

// Change is one write to the kernel's IPVS table (see Kernel.Write).
type Change struct {
	Kind    OpKind
	Service KService // only the Key for destination changes and deletes
	Dest    KDest    // destination changes; only Addr for deletes
}

// Socket is a generic netlink socket: Send writes one datagram (here many
// requests), Receive reads one datagram into b. OpenIPVS uses a real one;
// lvstest fakes it so that tests run the encoder and batching below.
type Socket interface {
	Send(b []byte) error
	Receive(b []byte) (int, error)
}

// IPVS generic netlink constants (include/uapi/linux/ip_vs.h).
const (
	ipvsCmdNewService = 1
	ipvsCmdSetService = 2
	ipvsCmdDelService = 3
	ipvsCmdNewDest    = 5
	ipvsCmdSetDest    = 6
	ipvsCmdDelDest    = 7

	ipvsCmdAttrService = 1
	ipvsCmdAttrDest    = 2

	ipvsSvcAttrAF        = 1
	ipvsSvcAttrProtocol  = 2
	ipvsSvcAttrAddr      = 3
	ipvsSvcAttrPort      = 4
	ipvsSvcAttrFWMark    = 5
	ipvsSvcAttrSchedName = 6
	ipvsSvcAttrFlags     = 7
	ipvsSvcAttrTimeout   = 8
	ipvsSvcAttrNetmask   = 9

	// flagPersistent is the service flag for persistence (IP_VS_SVC_F_PERSISTENT).
	flagPersistent = 0x1

	ipvsDestAttrAddr      = 1
	ipvsDestAttrPort      = 2
	ipvsDestAttrFwdMethod = 3
	ipvsDestAttrWeight    = 4
	ipvsDestAttrUThresh   = 5
	ipvsDestAttrLThresh   = 6
	ipvsDestAttrAF        = 11

	genlCtrlID            = 0x10
	genlCtrlCmdGetFamily  = 3
	genlCtrlAttrFamilyID  = 1
	genlCtrlAttrFamilyNam = 2

	// Changes per sendmsg. The kernel runs a whole batch inside one
	// sendmsg and queues one ack per change: the batch must fit the
	// receive buffer (acks are ~1 KiB of skb each).
	batchMax      = BatchMax
	batchMaxBytes = 48 << 10
)

// genlWriter sends IPVS changes over its own generic netlink socket, many
// per sendmsg. moby/ipvs makes one round trip (and a 64 KiB buffer) per
// change; programming 10,000 real servers that way is most of the cost.
type genlWriter struct {
	sock   Socket
	family uint16
	seq    uint32
	out    []byte
	in     []byte
}

func newGenlWriter(sock Socket) (*genlWriter, error) {
	w := &genlWriter{sock: sock, in: make([]byte, 64<<10)}
	if err := w.resolveFamily(); err != nil {
		return nil, err
	}
	return w, nil
}

// fdSocket is the real Socket.
type fdSocket struct {
	sock *nl.NetlinkSocket
	fd   int
}

// openSocket opens a generic netlink socket in the network namespace at
// nsPath ("" for the caller's), set up for batches of acked requests.
func openSocket(nsPath string) (*fdSocket, error) {
	ns := netns.None()
	if nsPath != "" {
		var err error
		if ns, err = netns.GetFromPath(nsPath); err != nil {
			return nil, fmt.Errorf("netns %s: %w", nsPath, err)
		}
		defer ns.Close()
	}
	sock, err := nl.GetNetlinkSocketAt(ns, netns.None(), unix.NETLINK_GENERIC)
	if err != nil {
		return nil, fmt.Errorf("generic netlink socket: %w", err)
	}
	s := &fdSocket{sock: sock, fd: sock.GetFd()}
	// Error acks carry only the failed request's header, not all of it.
	_ = unix.SetsockoptInt(s.fd, unix.SOL_NETLINK, unix.NETLINK_CAP_ACK, 1)
	// Room for a whole batch of acks; FORCE needs CAP_NET_ADMIN, which
	// programming IPVS needs anyway.
	_ = unix.SetsockoptInt(s.fd, unix.SOL_SOCKET, unix.SO_RCVBUFFORCE, 4<<20)
	// The socket does not block (vishvananda/netlink opens it so), and
	// needs no receive timeout: the kernel queues a request's ack within
	// the sendmsg that carries it, and each further part of a dump within
	// the recvmsg that takes the one before, so an empty queue means no
	// more is coming (errNoAck).
	return s, nil
}

func (s *fdSocket) Send(b []byte) error {
	return unix.Sendto(s.fd, b, 0, &unix.SockaddrNetlink{Family: unix.AF_NETLINK})
}

func (s *fdSocket) Receive(b []byte) (int, error) {
	n, _, err := unix.Recvfrom(s.fd, b, 0)
	return n, err
}

func (s *fdSocket) close() { s.sock.Close() }

func putU16(b []byte, v uint16) []byte { return binary.NativeEndian.AppendUint16(b, v) }
func putU32(b []byte, v uint32) []byte { return binary.NativeEndian.AppendUint32(b, v) }

// attr appends one netlink attribute, padded to 4 bytes.
func attr(b []byte, typ uint16, payload []byte) []byte {
	b = putU16(b, uint16(4+len(payload)))
	b = putU16(b, typ)
	b = append(b, payload...)
	for len(b)%4 != 0 {
		b = append(b, 0)
	}
	return b
}

// nest appends a nested attribute whose content fill appends.
func nest(b []byte, typ uint16, fill func([]byte) []byte) []byte {
	start := len(b)
	b = append(b, 0, 0, 0, 0)
	b = fill(b)
	binary.NativeEndian.PutUint16(b[start:], uint16(len(b)-start))
	binary.NativeEndian.PutUint16(b[start+2:], typ)
	return b
}

// message appends a generic netlink request (with NLM_F_ACK) and returns
// the buffer and the request's sequence number.
func (w *genlWriter) message(b []byte, family uint16, cmd uint8, fill func([]byte) []byte) ([]byte, uint32) {
	w.seq++
	start := len(b)
	b = append(b, make([]byte, unix.SizeofNlMsghdr)...)
	b = append(b, cmd, 1, 0, 0) // genlmsghdr: cmd, version 1
	b = fill(b)
	binary.NativeEndian.PutUint32(b[start:], uint32(len(b)-start))
	binary.NativeEndian.PutUint16(b[start+4:], family)
	binary.NativeEndian.PutUint16(b[start+6:], unix.NLM_F_REQUEST|unix.NLM_F_ACK)
	binary.NativeEndian.PutUint32(b[start+8:], w.seq)
	return b, w.seq
}

// recv reads one datagram and calls f for each message in it.
func (w *genlWriter) recv(f func(typ uint16, seq uint32, data []byte)) error {
	n, err := w.sock.Receive(w.in)
	if err != nil {
		return err
	}
	b := w.in[:n]
	for len(b) >= unix.SizeofNlMsghdr {
		l := int(binary.NativeEndian.Uint32(b))
		if l < unix.SizeofNlMsghdr || l > len(b) {
			return errors.New("malformed netlink message")
		}
		f(binary.NativeEndian.Uint16(b[4:]), binary.NativeEndian.Uint32(b[8:]), b[unix.SizeofNlMsghdr:l])
		b = b[min(len(b), (l+3)&^3):]
	}
	return nil
}

// ackErr decodes an NLMSG_ERROR payload: 0 is an ack.
func ackErr(data []byte) error {
	if len(data) < 4 {
		return errors.New("short netlink ack")
	}
	if e := int32(binary.NativeEndian.Uint32(data)); e != 0 {
		return syscall.Errno(-e)
	}
	return nil
}

func (w *genlWriter) resolveFamily() error {
	b, seq := w.message(w.out[:0], genlCtrlID, genlCtrlCmdGetFamily, func(b []byte) []byte {
		return attr(b, genlCtrlAttrFamilyNam, []byte("IPVS\x00"))
	})
	if err := w.sock.Send(b); err != nil {
		return fmt.Errorf("resolve IPVS family: %w", err)
	}
	var ferr error
	for acked := false; !acked; {
		err := w.recv(func(typ uint16, s uint32, data []byte) {
			if s != seq {
				return
			}
			switch typ {
			case unix.NLMSG_ERROR:
				ferr, acked = ackErr(data), true
			case genlCtrlID:
				for a := data[4:]; len(a) >= 4; {
					l := int(binary.NativeEndian.Uint16(a))
					if l < 4 || l > len(a) {
						break
					}
					if binary.NativeEndian.Uint16(a[2:]) == genlCtrlAttrFamilyID && l >= 6 {
						w.family = binary.NativeEndian.Uint16(a[4:])
					}
					a = a[min(len(a), (l+3)&^3):]
				}
			}
		})
		if err != nil {
			return fmt.Errorf("resolve IPVS family: %w", err)
		}
	}
	if ferr != nil || w.family == 0 {
		return fmt.Errorf("resolve IPVS family (is ip_vs loaded?): %v", ferr)
	}
	return nil
}

func svcAttrs(b []byte, s KService, full bool) []byte {
	return nest(b, ipvsCmdAttrService, func(b []byte) []byte {
		if s.Key.FWMark != 0 {
			b = attr(b, ipvsSvcAttrAF, putU16(nil, keyFamily(s.Key)))
			b = attr(b, ipvsSvcAttrFWMark, putU32(nil, s.Key.FWMark))
		} else {
			a := s.Key.Addr.Addr()
			b = attr(b, ipvsSvcAttrAF, putU16(nil, family(a)))
			proto := uint16(unix.IPPROTO_TCP)
			if s.Key.Proto == UDP {
				proto = unix.IPPROTO_UDP
			}
			b = attr(b, ipvsSvcAttrProtocol, putU16(nil, proto))
			b = attr(b, ipvsSvcAttrAddr, a.AsSlice())
			b = attr(b, ipvsSvcAttrPort, binary.BigEndian.AppendUint16(nil, s.Key.Addr.Port()))
		}
		if !full {
			return b
		}
		b = attr(b, ipvsSvcAttrSchedName, append([]byte(s.Scheduler), 0))
		flags := s.SchedFlags
		if s.Timeout > 0 {
			flags |= flagPersistent
		}
		b = attr(b, ipvsSvcAttrFlags, putU32(putU32(nil, flags), 0xFFFFFFFF))
		b = attr(b, ipvsSvcAttrTimeout, putU32(nil, s.Timeout))
		return attr(b, ipvsSvcAttrNetmask, putU32(nil, netmask(s.Key)))
	})
}

func destAttrs(b []byte, d KDest, full bool) []byte {
	return nest(b, ipvsCmdAttrDest, func(b []byte) []byte {
		a := d.Addr.Addr()
		b = attr(b, ipvsDestAttrAddr, a.AsSlice())
		b = attr(b, ipvsDestAttrPort, binary.BigEndian.AppendUint16(nil, d.Addr.Port()))
		b = attr(b, ipvsDestAttrAF, putU16(nil, family(a)))
		if !full {
			return b
		}
		// Every field on every update: the forwarding method included.
		b = attr(b, ipvsDestAttrFwdMethod, putU32(nil, fwdFlags[d.Forwarding]))
		b = attr(b, ipvsDestAttrWeight, putU32(nil, uint32(d.Weight)))
		b = attr(b, ipvsDestAttrUThresh, putU32(nil, 0))
		return attr(b, ipvsDestAttrLThresh, putU32(nil, 0))
	})
}

var changeCmd = map[OpKind]uint8{
	OpNewService: ipvsCmdNewService, OpUpdateService: ipvsCmdSetService, OpDelService: ipvsCmdDelService,
	OpNewDest: ipvsCmdNewDest, OpUpdateDest: ipvsCmdSetDest, OpDelDest: ipvsCmdDelDest,
}

// write sends the changes in batches and collects one ack per change.
func (w *genlWriter) write(cs []Change) []error {
	errs := make([]error, len(cs))
	for start := 0; start < len(cs); {
		b := w.out[:0]
		first := w.seq + 1
		end := start
		for end < len(cs) && end-start < batchMax && len(b) < batchMaxBytes {
			c := cs[end]
			cmd, ok := changeCmd[c.Kind]
			if !ok {
				errs[end] = fmt.Errorf("unknown change %v", c.Kind)
				w.seq++ // keep seq = first + index
				end++
				continue
			}
			b, _ = w.message(b, w.family, cmd, func(b []byte) []byte {
				switch c.Kind {
				case OpNewService, OpUpdateService:
					return svcAttrs(b, c.Service, true)
				case OpDelService:
					return svcAttrs(b, c.Service, false)
				}
				b = svcAttrs(b, c.Service, false)
				return destAttrs(b, c.Dest, c.Kind != OpDelDest)
			})
			end++
		}
		w.out = b
		pending := 0
		for i := start; i < end; i++ {
			if errs[i] == nil {
				pending++
			}
		}
		if err := w.sock.Send(b); err != nil {
			for i := start; i < end; i++ {
				if errs[i] == nil {
					errs[i] = fmt.Errorf("netlink send: %w", err)
				}
			}
			start = end
			continue
		}
		acked := make([]bool, end-start)
		for pending > 0 {
			err := w.recv(func(typ uint16, seq uint32, data []byte) {
				i := int(seq - first)
				if typ != unix.NLMSG_ERROR || seq < first || i >= end-start || acked[i] {
					return
				}
				acked[i] = true
				errs[start+i] = ackErr(data)
				pending--
			})
			if err != nil {
				// Lost acks (timeout, ENOBUFS): the outcome is unknown,
				// so report failure; the reconciler re-reads the kernel.
				for i := range acked {
					if !acked[i] && errs[start+i] == nil {
						errs[start+i] = fmt.Errorf("netlink ack: %w", err)
					}
				}
				break
			}
		}
		start = end
	}
	return errs
}

// BatchMax is the most changes IPVS.Write sends in one sendmsg.
const BatchMax = 128
