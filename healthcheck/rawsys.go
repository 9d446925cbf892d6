package healthcheck

import (
	"net/netip"
	"syscall"
	"unsafe"
)

// The reactor's system calls on its non-blocking sockets go through
// RawSyscall: none of them can block, and the runtime's Syscall wrapper
// costs more than many of them. It marks the thread as in a system call,
// and one that runs past 20 µs (a connect or close often does on a busy
// machine) makes sysmon hand the P to a new thread and wake it: with
// 10,000 checks a second that was a tenth of the checker's CPU. A raw call
// holds the P for its few microseconds instead. The reactor never waits in
// epoll_wait (see reactor).

func errnoErr(e syscall.Errno) error {
	if e == 0 {
		return nil
	}
	return e
}

func rawSocket(family, typ, proto int) (int, error) {
	fd, _, e := syscall.RawSyscall(syscall.SYS_SOCKET, uintptr(family), uintptr(typ), uintptr(proto))
	if e != 0 {
		return -1, e
	}
	return int(fd), nil
}

// rawConnect starts connecting fd to addr (an IPv6 zone must already be
// resolved to zoneID).
func rawConnect(fd int, addr netip.AddrPort, zoneID uint32) error {
	ip := addr.Addr().Unmap()
	var (
		p unsafe.Pointer
		n uintptr
	)
	if ip.Is4() {
		sa := syscall.RawSockaddrInet4{Family: syscall.AF_INET, Addr: ip.As4()}
		putPort(&sa.Port, addr.Port())
		p, n = unsafe.Pointer(&sa), unsafe.Sizeof(sa)
	} else {
		sa := syscall.RawSockaddrInet6{Family: syscall.AF_INET6, Addr: ip.As16(), Scope_id: zoneID}
		putPort(&sa.Port, addr.Port())
		p, n = unsafe.Pointer(&sa), unsafe.Sizeof(sa)
	}
	_, _, e := syscall.RawSyscall(syscall.SYS_CONNECT, uintptr(fd), uintptr(p), n)
	return errnoErr(e)
}

// putPort stores a port in network byte order.
func putPort(dst *uint16, port uint16) {
	b := (*[2]byte)(unsafe.Pointer(dst))
	b[0], b[1] = byte(port>>8), byte(port)
}

func rawSend(fd int, b []byte, flags int) (int, error) {
	if len(b) == 0 {
		return 0, nil
	}
	n, _, e := syscall.RawSyscall6(syscall.SYS_SENDTO, uintptr(fd), uintptr(unsafe.Pointer(&b[0])), uintptr(len(b)), uintptr(flags), 0, 0)
	if e != 0 {
		return 0, e
	}
	return int(n), nil
}

func rawRead(fd int, b []byte) (int, error) {
	if len(b) == 0 {
		return 0, nil
	}
	n, _, e := syscall.RawSyscall(syscall.SYS_READ, uintptr(fd), uintptr(unsafe.Pointer(&b[0])), uintptr(len(b)))
	if e != 0 {
		return 0, e
	}
	return int(n), nil
}

func rawClose(fd int) {
	_, _, _ = syscall.RawSyscall(syscall.SYS_CLOSE, uintptr(fd), 0, 0)
}

func rawSockError(fd int) (int, error) {
	var v int32
	l := uint32(unsafe.Sizeof(v))
	_, _, e := syscall.RawSyscall6(syscall.SYS_GETSOCKOPT, uintptr(fd), syscall.SOL_SOCKET, syscall.SO_ERROR,
		uintptr(unsafe.Pointer(&v)), uintptr(unsafe.Pointer(&l)), 0)
	if e != 0 {
		return 0, e
	}
	return int(v), nil
}

func rawEpollCtl(epfd, op, fd int, ev *syscall.EpollEvent) error {
	_, _, e := syscall.RawSyscall6(syscall.SYS_EPOLL_CTL, uintptr(epfd), uintptr(op), uintptr(fd), uintptr(unsafe.Pointer(ev)), 0, 0)
	return errnoErr(e)
}

// rawEpollWait returns the events ready now (no waiting); an error counts
// as none.
func rawEpollWait(epfd int, events []syscall.EpollEvent) int {
	n, _, e := syscall.RawSyscall6(syscall.SYS_EPOLL_PWAIT, uintptr(epfd), uintptr(unsafe.Pointer(&events[0])), uintptr(len(events)), 0, 0, 0)
	if e != 0 {
		return 0
	}
	return int(n)
}
