package vm

import (
	"fmt"
	"os/exec"
	"strings"
)

// WithLibs returns the Files entries that carry a dynamically linked host
// executable and the shared libraries ldd lists for it (the dynamic loader
// included) into the guest, each at its host path.
func WithLibs(exe string) (map[string]string, error) {
	if p, err := exec.LookPath(exe); err == nil {
		exe = p
	}
	out, err := exec.Command("ldd", exe).Output()
	files := map[string]string{exe: exe}
	if err != nil {
		// ldd fails on static executables; those need nothing more.
		if strings.Contains(string(out), "not a dynamic executable") {
			return files, nil
		}
		return nil, fmt.Errorf("ldd %s: %w", exe, err)
	}
	for _, line := range strings.Split(string(out), "\n") {
		f := strings.Fields(line)
		switch {
		case len(f) >= 3 && f[1] == "=>" && strings.HasPrefix(f[2], "/"):
			files[f[2]] = f[2]
		case len(f) >= 1 && strings.HasPrefix(f[0], "/"):
			files[f[0]] = f[0]
		case len(f) >= 2 && f[1] == "=>" && (len(f) < 3 || f[2] == "not"):
			return nil, fmt.Errorf("ldd %s: %s not found", exe, f[0])
		}
	}
	return files, nil
}
