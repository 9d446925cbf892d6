package e2e

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path"
	"path/filepath"
	"strings"
	"time"

	"github.com/lvsha/lvsha/internal/testenv/vm"
)

// VMTimeout bounds a whole VM run of the scenario, boot included. A run
// takes well under a minute under TCG; the scenario's own waits are bounded
// well within this.
const VMTimeout = 6 * time.Minute

// VMCPUs is the guest's CPU count: two daemons, three web servers and a
// client share it, and with one emulated CPU a busy client starves the
// health checks.
const VMCPUs = 2

// VMOptions are the options of a VM run of the scenario (the caller sets
// Binary and Args, or lets vmtest do it).
func VMOptions(files map[string]string) vm.Options {
	return vm.Options{Files: files, Timeout: VMTimeout, CPUs: VMCPUs}
}

// ModuleRoot returns the directory of lvsha's go.mod (the host's checkout).
func ModuleRoot(ctx context.Context) (string, error) {
	out, err := exec.CommandContext(ctx, "go", "env", "GOMOD").Output()
	if err != nil {
		return "", fmt.Errorf("go env GOMOD: %w", err)
	}
	mod := strings.TrimSpace(string(out))
	if mod == "" || mod == os.DevNull {
		return "", fmt.Errorf("not inside the lvsha module (go env GOMOD is %q)", mod)
	}
	return filepath.Dir(mod), nil
}

// BuildLvsha builds cmd/lvsha statically into out, with the version from
// git describe as `make build` does.
func BuildLvsha(ctx context.Context, out string) error {
	version := "dev"
	if b, err := exec.CommandContext(ctx, "git", "describe", "--tags", "--always", "--dirty").Output(); err == nil {
		version = strings.TrimSpace(string(b))
	}
	return vm.BuildStatic(ctx, "github.com/lvsha/lvsha/cmd/lvsha", out, "-ldflags", "-X main.version="+version)
}

// HostBinaries builds, in dir, what a VM program's host side passes to
// the guest: lvsha from this checkout unless lvsha names one (which must
// then be static: the guest has no libraries), and the static program of
// package pkg. It returns both paths.
func HostBinaries(ctx context.Context, dir, lvsha, pkg string) (string, string, error) {
	if lvsha == "" {
		lvsha = filepath.Join(dir, "lvsha")
		if err := BuildLvsha(ctx, lvsha); err != nil {
			return "", "", err
		}
	} else if err := vm.IsStatic(lvsha); err != nil {
		return "", "", err
	}
	bin := filepath.Join(dir, path.Base(pkg))
	if err := vm.BuildStatic(ctx, pkg, bin); err != nil {
		return "", "", err
	}
	return lvsha, bin, nil
}

// GuestFiles maps the scenario's guest paths to host files: the lvsha
// binary and the example director configs of the checkout at root.
func GuestFiles(root, lvsha string) (map[string]string, error) {
	files := map[string]string{GuestLvsha: lvsha}
	for _, name := range []string{"director1.toml", "director2.toml"} {
		p := filepath.Join(root, "packaging", "examples", name)
		if _, err := os.Stat(p); err != nil {
			return nil, fmt.Errorf("example config: %w", err)
		}
		files[GuestExamples+"/"+name] = p
	}
	return files, nil
}
