package vm

import (
	"context"
	"debug/elf"
	"fmt"
	"os"
	"os/exec"
)

// BuildStatic builds a package of the module (an import path such as
// github.com/lvsha/lvsha/cmd/lvsha) into out with CGO_ENABLED=0, so it runs
// in the VM's busybox guest. flags go to go build.
func BuildStatic(ctx context.Context, pkg, out string, flags ...string) error {
	args := append([]string{"build", "-trimpath", "-o", out}, flags...)
	cmd := exec.CommandContext(ctx, "go", append(args, pkg)...)
	cmd.Env = append(os.Environ(), "CGO_ENABLED=0")
	if b, err := cmd.CombinedOutput(); err != nil {
		return fmt.Errorf("go build %s: %w\n%s", pkg, err, b)
	}
	return IsStatic(out)
}

// IsStatic returns an error unless path is an ELF executable without a
// program interpreter (a static binary the guest can run).
func IsStatic(path string) error {
	f, err := elf.Open(path)
	if err != nil {
		return fmt.Errorf("%s: %w", path, err)
	}
	defer f.Close()
	for _, p := range f.Progs {
		if p.Type == elf.PT_INTERP {
			return fmt.Errorf("%s is dynamically linked (build it with CGO_ENABLED=0)", path)
		}
	}
	return nil
}
