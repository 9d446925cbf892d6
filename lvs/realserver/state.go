package realserver

import (
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"net/netip"
	"os"
	"path/filepath"
	"slices"

	"golang.org/x/sys/unix"

	"github.com/lvsha/lvsha/lvs/atomicfile"
)

// DefaultStateDir is where the state file lives unless Options says
// otherwise. It is in /run, not with the director's state in /var/lib, on
// purpose: a reboot resets the addresses and sysctls it describes and
// removes it with them, while a record that outlived the reboot would have
// down "restore" sysctls over the values the boot set. The packaged units
// keep /run/lvsha across their stops (RuntimeDirectoryPreserve=yes).
const DefaultStateDir = "/run/lvsha"

// StateFile is the name of the state file inside Options.StateDir.
const StateFile = "realserver.json"

// stateFileIn is the state file of dir ("" for DefaultStateDir): the one
// place that builds its path.
func stateFileIn(dir string) string {
	if dir == "" {
		dir = DefaultStateDir
	}
	return filepath.Join(dir, StateFile)
}

// state is what Up changed, and only that, so Down can undo exactly it.
// What Up found already done (a VIP with scope host on lo, an acceptable
// sysctl) is not here and Down leaves it. A second Up adds what it changes
// and keeps what is recorded, so the record always describes the host as it
// was before the first Up.
//
// A file written before rescoped existed has the same keys with a wider
// meaning (vips: every VIP Up ensured, sysctls: every managed key's value
// before); read the same way, Down does what it did then, except that it
// leaves a sysctl that no longer holds the value Up sets.
type state struct {
	// VIPs are the VIPs Up added to lo; Down removes them.
	VIPs []netip.Addr `json:"vips,omitempty"`
	// Rescoped are the IPv4 VIPs that were on lo as /32 with scope global before
	// Up gave them scope host, with their label and flags; Down gives them
	// their scope back.
	Rescoped []rescoped `json:"rescoped,omitempty"`
	// Sysctls maps each key below /proc/sys that Up wrote to its value
	// before.
	Sysctls map[string]string `json:"sysctls,omitempty"`
}

// rescoped is a VIP on lo as it was before Up changed its scope to host.
type rescoped struct {
	VIP   netip.Addr `json:"vip"`
	Label string     `json:"label,omitempty"`
	Flags uint32     `json:"flags,omitempty"`
}

// addr is the address as it was before Up: scope global.
func (r rescoped) addr() Addr {
	return Addr{Interface: loopback, Prefix: netip.PrefixFrom(r.VIP, 32), Label: r.Label, Flags: r.Flags}
}

// records says whether v is in the record, added or rescoped.
func (s *state) records(v netip.Addr) bool {
	return slices.Contains(s.VIPs, v) || slices.ContainsFunc(s.Rescoped, func(r rescoped) bool { return r.VIP == v })
}

func (s *state) empty() bool {
	return len(s.VIPs) == 0 && len(s.Rescoped) == 0 && len(s.Sysctls) == 0
}

// readState returns the state and the file's raw bytes; a missing file is
// fs.ErrNotExist.
func readState(path string) (*state, []byte, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, nil, err
	}
	var s state
	if err := json.Unmarshal(b, &s); err != nil {
		return nil, b, fmt.Errorf("parse %s: %w", path, err)
	}
	for i, v := range s.VIPs {
		s.VIPs[i] = v.Unmap()
	}
	if s.Sysctls == nil {
		s.Sysctls = map[string]string{}
	}
	return &s, b, nil
}

// writeState writes s in a stable form (sorted), so an Up that records
// nothing new rewrites the same bytes.
func writeState(path string, s *state) error {
	slices.SortFunc(s.VIPs, netip.Addr.Compare)
	s.VIPs = slices.Compact(s.VIPs)
	slices.SortFunc(s.Rescoped, func(a, b rescoped) int { return a.VIP.Compare(b.VIP) })
	b, err := json.MarshalIndent(s, "", "  ")
	if err != nil {
		return err
	}
	return atomicfile.Write(path, append(b, '\n'), 0o644)
}

// restoreFile puts back the bytes a file had (nil: it did not exist).
func restoreFile(path string, old []byte) error {
	if old == nil {
		if err := os.Remove(path); err != nil && !errors.Is(err, fs.ErrNotExist) {
			return err
		}
		return nil
	}
	return atomicfile.Write(path, old, 0o644)
}

// lockState takes an exclusive lock next to the state file so two Up or Down
// runs at once cannot interleave their read-modify-write of it. The lock
// goes away with the process, so a crash never leaves it held.
func lockState(path string) (unlock func(), err error) {
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		return nil, err
	}
	f, err := os.OpenFile(path+".lock", os.O_RDWR|os.O_CREATE, 0o644)
	if err != nil {
		return nil, err
	}
	if err := unix.Flock(int(f.Fd()), unix.LOCK_EX); err != nil {
		f.Close()
		return nil, fmt.Errorf("lock %s: %w", f.Name(), err)
	}
	return func() { f.Close() }, nil
}
