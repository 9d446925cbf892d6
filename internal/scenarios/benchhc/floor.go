package main

import (
	"fmt"
	"net/netip"
	"runtime"
	"syscall"
	"time"
)

const rusageThread = 1 // RUSAGE_THREAD

// kernelFloor measures the CPU one HTTP probe costs with nothing but
// blocking system calls on one locked thread (socket, connect, write, read
// to EOF, close), one probe at a time: a reference for the kernel's share
// of a check on this machine (on loopback it includes the servers' side,
// which the kernel runs in the sending process). It is not a strict floor:
// a checker with many probes in flight sleeps and wakes less per probe.
// Returns the CPU per probe.
func kernelFloor(c config, n int) (time.Duration, error) {
	runtime.LockOSThread()
	defer runtime.UnlockOSThread()
	req := []byte("GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
	buf := make([]byte, 4096)
	var r0, r1 syscall.Rusage
	if err := syscall.Getrusage(rusageThread, &r0); err != nil {
		return 0, err
	}
	for i := range n {
		ap := c.addr(i % c.targets)
		if err := probe(ap, req, buf); err != nil {
			return 0, fmt.Errorf("floor probe %s: %w", ap, err)
		}
	}
	if err := syscall.Getrusage(rusageThread, &r1); err != nil {
		return 0, err
	}
	cpu := r1.Utime.Nano() + r1.Stime.Nano() - r0.Utime.Nano() - r0.Stime.Nano()
	return time.Duration(cpu / int64(n)), nil
}

func probe(ap netip.AddrPort, req, buf []byte) error {
	fd, err := syscall.Socket(syscall.AF_INET, syscall.SOCK_STREAM|syscall.SOCK_CLOEXEC, 0)
	if err != nil {
		return err
	}
	defer syscall.Close(fd)
	if err := syscall.Connect(fd, &syscall.SockaddrInet4{Port: int(ap.Port()), Addr: ap.Addr().As4()}); err != nil {
		return err
	}
	if _, err := syscall.Write(fd, req); err != nil {
		return err
	}
	for {
		n, err := syscall.Read(fd, buf)
		if err != nil {
			return err
		}
		if n == 0 {
			return nil
		}
	}
}
