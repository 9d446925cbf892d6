package realserver

import (
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"net/netip"
	"os"
	"path/filepath"

	"golang.org/x/sys/unix"

	"github.com/lvsha/lvsha/lvs/atomicfile"
)

// StateFile is the name of the state file inside Options.StateDir.
const StateFile = "realserver.json"

// state is what Up remembers for Down: the sysctl values found before the
// first Up changed anything, and the VIPs it put on lo.
type state struct {
	VIPs []netip.Addr `json:"vips"`
	// Sysctls maps a key below /proc/sys to its value before the first Up.
	Sysctls map[string]string `json:"sysctls"`
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
	if s.Sysctls == nil {
		s.Sysctls = map[string]string{}
	}
	return &s, b, nil
}

func writeState(path string, s *state) error {
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
