package process

import (
	"errors"
	"fmt"
	"os/exec"
	"runtime"
	"sync"
	"unsafe"

	"golang.org/x/sys/unix"
)

// Caps is a set of capabilities, bit n for capability number n.
type Caps uint64

// The capabilities a child of lvsha (a notify command, an exec check) loses
// unless its config keeps them: lvsha needs CAP_NET_ADMIN and CAP_NET_RAW
// for VIPs, IPVS and its raw sockets, and CAP_SETPCAP to take them from its
// children; a script that checks or reports needs none of them.
const childDropped = Caps(1<<unix.CAP_NET_ADMIN | 1<<unix.CAP_NET_RAW | 1<<unix.CAP_SETPCAP)

// ChildStarter returns how lvsha starts a child: under normal scheduling
// whatever the caller runs under, and with the capabilities in
// childDropped taken away except those in keep.
//
// Linux keeps the scheduling policy and the capability sets per thread, and
// a child inherits those of the thread that forks it. So every start goes
// to a spawner: a goroutine locked to an OS thread of its own, set once to
// SCHED_OTHER and to the reduced sets, that lives as long as the process.
// Dropping a capability from the bounding set cannot be undone, which is
// why the thread is never handed back to the runtime; and because it never
// exits, a child's Pdeathsig still fires only when this process dies (it
// fires when the forking thread exits). Starts are serialised on that
// thread; a fork with CLONE_VFORK takes well under a millisecond.
func ChildStarter(keep Caps) func(*exec.Cmd) error {
	return func(cmd *exec.Cmd) error {
		s, err := spawnerFor(keep & childDropped)
		if err != nil {
			return fmt.Errorf("start %s: %w", cmd.Path, err)
		}
		done := make(chan error, 1)
		s <- spawnRequest{cmd, done}
		return <-done
	}
}

// SpawnerName is the name (comm) of a spawner's thread.
const SpawnerName = "lvsha-spawn"

var spawnerName = []byte(SpawnerName + "\x00")

type spawnRequest struct {
	cmd  *exec.Cmd
	done chan<- error
}

var spawners struct {
	sync.Mutex
	byKeep map[Caps]chan<- spawnRequest
}

// spawnerFor returns the spawner for keep, starting it on first use. A
// reload that changes what notify commands keep gets another one; there are
// at most a handful, one per distinct keep.
func spawnerFor(keep Caps) (chan<- spawnRequest, error) {
	spawners.Lock()
	defer spawners.Unlock()
	if s, ok := spawners.byKeep[keep]; ok {
		return s, nil
	}
	reqs := make(chan spawnRequest)
	ready := make(chan error, 1)
	go func() {
		runtime.LockOSThread() // never unlocked: see ChildStarter
		// A name for ps -L and top -H: the one thread of the daemon
		// that is not real-time.
		_ = unix.Prctl(unix.PR_SET_NAME, uintptr(unsafe.Pointer(&spawnerName[0])), 0, 0, 0)
		err := unix.SchedSetAttr(0, &unix.SchedAttr{Size: unix.SizeofSchedAttr, Policy: unix.SCHED_NORMAL}, 0)
		if err != nil {
			err = fmt.Errorf("normal scheduling: %w", err)
		} else {
			err = restrictThread(childDropped &^ keep)
		}
		ready <- err
		if err != nil {
			return // the thread ends with this goroutine
		}
		for r := range reqs {
			r.done <- r.cmd.Start()
		}
	}()
	if err := <-ready; err != nil {
		return nil, fmt.Errorf("child process spawner: %w", err)
	}
	if spawners.byKeep == nil {
		spawners.byKeep = map[Caps]chan<- spawnRequest{}
	}
	spawners.byKeep[keep] = reqs
	return reqs, nil
}

// restrictThread takes drop from what a program exec'd by the calling
// thread can have. A program run by root gets its permitted set from the
// bounding and inheritable sets, one run by another user from the ambient
// set, so drop leaves all three; this thread's own permitted and effective
// sets stay as they are. Leaving the bounding set needs CAP_SETPCAP; a
// process without it that is not root has nothing to drop there (its
// children get only the ambient set), and one that is root is told so by
// CheckChildCaps.
func restrictThread(drop Caps) error {
	hdr := unix.CapUserHeader{Version: unix.LINUX_CAPABILITY_VERSION_3}
	var data [2]unix.CapUserData
	if err := unix.Capget(&hdr, &data[0]); err != nil {
		return fmt.Errorf("capget: %w", err)
	}
	data[0].Inheritable &^= uint32(drop)
	data[1].Inheritable &^= uint32(drop >> 32)
	// Lowering the inheritable set lowers the ambient set with it.
	if err := unix.Capset(&hdr, &data[0]); err != nil {
		return fmt.Errorf("capset: %w", err)
	}
	// CAP_SETPCAP last: dropping the others needs it.
	for _, c := range []int{unix.CAP_NET_ADMIN, unix.CAP_NET_RAW, unix.CAP_SETPCAP} {
		if drop&(1<<c) == 0 {
			continue
		}
		err := unix.Prctl(unix.PR_CAPBSET_DROP, uintptr(c), 0, 0, 0)
		if errors.Is(err, unix.EPERM) {
			continue // see CheckChildCaps
		}
		if err != nil {
			return fmt.Errorf("drop capability %d from the bounding set: %w", c, err)
		}
	}
	return nil
}

// CheckChildCaps returns an error when this process runs as root with
// CAP_NET_ADMIN or CAP_NET_RAW in its bounding set but without CAP_SETPCAP
// in effect: its children (exec'd as root, so given the bounding set) then
// keep those capabilities. The daemon logs it as a warning.
func CheckChildCaps() error {
	if unix.Geteuid() != 0 {
		return nil
	}
	hdr := unix.CapUserHeader{Version: unix.LINUX_CAPABILITY_VERSION_3}
	var data [2]unix.CapUserData
	if err := unix.Capget(&hdr, &data[0]); err != nil {
		return fmt.Errorf("capget: %w", err)
	}
	if data[0].Effective&(1<<unix.CAP_SETPCAP) != 0 {
		return nil
	}
	for _, c := range []int{unix.CAP_NET_ADMIN, unix.CAP_NET_RAW} {
		if in, err := unix.PrctlRetInt(unix.PR_CAPBSET_READ, uintptr(c), 0, 0, 0); err == nil && in == 1 {
			return errors.New("without CAP_SETPCAP, notify commands and exec checks run as root keep CAP_NET_ADMIN and CAP_NET_RAW")
		}
	}
	return nil
}
