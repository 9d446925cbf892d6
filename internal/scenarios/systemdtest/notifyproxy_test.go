package systemdtest

import (
	"fmt"
	"os"
	"os/exec"
	"runtime"
	"strings"

	"golang.org/x/sys/unix"
)

// The start test puts notifyProxy between the daemon and systemd: a
// drop-in points the daemon's NOTIFY_SOCKET at proxySocket, and the proxy
// passes every message on to systemd's socket under the daemon's pid. On
// the first READY=1 it first stops the daemon (SIGSTOP), reads IPVS and
// lets it go on: what it reads is the table exactly as it was when the
// daemon said READY. Its thread runs SCHED_FIFO above the daemon's
// SCHED_RR, so it stops the daemon as soon as the datagram arrives, before
// the daemon takes another step; a READY sent even a moment before the
// table is programmed shows as services missing, where an ipvsadm run
// after systemctl start returns would be too late to see it.
const (
	proxySocket   = "/run/lvsha-test-notify"
	systemdSocket = "/run/systemd/notify"
	proxyDropIn   = "[Service]\nEnvironment=NOTIFY_SOCKET=" + proxySocket + "\n"
)

// readyTable is what the proxy saw at the first READY=1: the IPVS table,
// or an error.
type readyTable struct {
	table string
	err   error
}

// startNotifyProxy binds proxySocket and forwards from it until the test
// binary exits (the daemon started with the drop-in keeps the proxy's
// address for as long as it runs). The first READY=1 is reported on the
// returned channel.
func startNotifyProxy() (<-chan readyTable, error) {
	_ = os.Remove(proxySocket)
	in, err := unix.Socket(unix.AF_UNIX, unix.SOCK_DGRAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return nil, fmt.Errorf("notify proxy: %w", err)
	}
	if err := unix.Bind(in, &unix.SockaddrUnix{Name: proxySocket}); err != nil {
		unix.Close(in)
		return nil, fmt.Errorf("notify proxy: bind: %w", err)
	}
	if err := unix.SetsockoptInt(in, unix.SOL_SOCKET, unix.SO_PASSCRED, 1); err != nil {
		unix.Close(in)
		return nil, fmt.Errorf("notify proxy: SO_PASSCRED: %w", err)
	}
	out, err := unix.Socket(unix.AF_UNIX, unix.SOCK_DGRAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		unix.Close(in)
		return nil, fmt.Errorf("notify proxy: %w", err)
	}
	ready := make(chan readyTable, 1)
	started := make(chan error, 1)
	go func() {
		// Plain blocking system calls on a locked real-time thread: the
		// kernel wakes this very thread, no Go scheduler in between.
		runtime.LockOSThread()
		err := unix.SchedSetAttr(0, &unix.SchedAttr{Size: unix.SizeofSchedAttr, Policy: unix.SCHED_FIFO, Priority: 50}, 0)
		started <- err
		if err != nil {
			return
		}
		buf, oob := make([]byte, 4096), make([]byte, 256)
		first := true
		for {
			n, oobn, _, _, err := unix.Recvmsg(in, buf, oob, 0)
			if err == unix.EINTR {
				continue
			}
			if err != nil {
				return
			}
			cred := senderCred(oob[:oobn])
			msg := buf[:n]
			if first && cred != nil && strings.Contains("\n"+string(msg)+"\n", "\nREADY=1\n") {
				first = false
				ready <- tableWhileStopped(int(cred.Pid))
			}
			if cred == nil {
				continue // no sender to speak for
			}
			// Under the daemon's pid (root may name another process in
			// SCM_CREDENTIALS), so NotifyAccess=main accepts it.
			_ = unix.Sendmsg(out, msg, unix.UnixCredentials(cred), &unix.SockaddrUnix{Name: systemdSocket}, 0)
		}
	}()
	if err := <-started; err != nil {
		return nil, fmt.Errorf("notify proxy: SCHED_FIFO: %w", err)
	}
	return ready, nil
}

func senderCred(oob []byte) *unix.Ucred {
	msgs, err := unix.ParseSocketControlMessage(oob)
	if err != nil {
		return nil
	}
	for _, m := range msgs {
		if c, err := unix.ParseUnixCredentials(&m); err == nil {
			return c
		}
	}
	return nil
}

// tableWhileStopped stops pid, reads IPVS and lets pid go on.
func tableWhileStopped(pid int) readyTable {
	if err := unix.Kill(pid, unix.SIGSTOP); err != nil {
		return readyTable{err: fmt.Errorf("SIGSTOP %d: %w", pid, err)}
	}
	defer unix.Kill(pid, unix.SIGCONT)
	out, err := exec.Command("ipvsadm", "-Ln").CombinedOutput()
	if err != nil {
		return readyTable{err: fmt.Errorf("ipvsadm -Ln: %w: %s", err, out)}
	}
	return readyTable{table: string(out)}
}
