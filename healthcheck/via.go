package healthcheck

import (
	"context"
	"fmt"
	"net/netip"
	"os"
	"syscall"
)

// Via sends a target's check to a virtual address instead of the real
// server's own, through the kernel's direct routing: the check's socket
// carries Mark (SO_MARK, which needs CAP_NET_ADMIN), and the caller has an
// IPVS firewall-mark service for Mark whose one destination is the real
// server. IPVS looks fwmark services up first on locally sent packets, so
// the connection to VIP:port reaches that server by its MAC, as a client's
// would: it passes only if the server accepts packets for the VIP and
// listens on VIP:port. The zero Via checks the real server directly.
type Via struct {
	VIP  netip.Addr `json:"vip"`
	Mark uint32     `json:"mark"`
}

// set reports whether v routes checks through a VIP.
func (v Via) set() bool { return v.Mark != 0 }

// dialVia is how one check connects when it goes through a VIP: the mark,
// and the real server whose route gives the source address.
type dialVia struct {
	mark uint32
	real netip.Addr
}

type viaKey struct{}

// withVia gives a goroutine checker's dial its via (none when zero).
func withVia(ctx context.Context, v dialVia) context.Context {
	if v.mark == 0 {
		return ctx
	}
	return context.WithValue(ctx, viaKey{}, v)
}

func viaFrom(ctx context.Context) dialVia {
	v, _ := ctx.Value(viaKey{}).(dialVia)
	return v
}

// viaSetup marks fd and binds it to the address the kernel would use as
// source toward the real server. The bind matters on the master, where the
// VIP is local: connecting to a local address picks that address (the VIP)
// as source, and the real server, holding the VIP on its lo, would answer
// itself. From the director's own address the reply comes back over the
// wire, from the VIP, which the director then accepts only with
// accept_local on that interface (the director sets it).
func viaSetup(fd int, v dialVia) error {
	if err := syscall.SetsockoptInt(fd, syscall.SOL_SOCKET, syscall.SO_MARK, int(v.mark)); err != nil {
		return os.NewSyscallError("setsockopt SO_MARK", err)
	}
	src, err := sourceToward(v.real)
	if err != nil {
		return err
	}
	var sa syscall.Sockaddr
	if src.Is4() {
		sa = &syscall.SockaddrInet4{Addr: src.As4()}
	} else {
		sa = &syscall.SockaddrInet6{Addr: src.As16()}
	}
	if err := syscall.Bind(fd, sa); err != nil {
		return os.NewSyscallError("bind", err)
	}
	return nil
}

// sourceToward asks the kernel which source address it would use to reach
// dst: a connected UDP socket sends nothing and carries the route's choice.
func sourceToward(dst netip.Addr) (netip.Addr, error) {
	family := syscall.AF_INET6
	var sa syscall.Sockaddr = &syscall.SockaddrInet6{Port: 9, Addr: dst.As16()}
	if dst.Unmap().Is4() {
		family = syscall.AF_INET
		sa = &syscall.SockaddrInet4{Port: 9, Addr: dst.Unmap().As4()}
	}
	fd, err := syscall.Socket(family, syscall.SOCK_DGRAM|syscall.SOCK_CLOEXEC, 0)
	if err != nil {
		return netip.Addr{}, os.NewSyscallError("socket", err)
	}
	defer syscall.Close(fd)
	if err := syscall.Connect(fd, sa); err != nil {
		return netip.Addr{}, fmt.Errorf("route to %s: %w", dst, err)
	}
	got, err := syscall.Getsockname(fd)
	if err != nil {
		return netip.Addr{}, os.NewSyscallError("getsockname", err)
	}
	switch a := got.(type) {
	case *syscall.SockaddrInet4:
		return netip.AddrFrom4(a.Addr), nil
	case *syscall.SockaddrInet6:
		return netip.AddrFrom16(a.Addr), nil
	}
	return netip.Addr{}, fmt.Errorf("route to %s: no source address", dst)
}
