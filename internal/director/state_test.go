package director

import (
	"context"
	"fmt"
	"log/slog"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/lvsha/lvsha/conf"
	"github.com/lvsha/lvsha/lvs"
)

const twoServicesConfig = `
[[virtual_server]]
address = "10.99.0.1:80"
[[virtual_server.real_server]]
address = "10.99.1.1:80"

[[virtual_server]]
address = "10.99.0.2:80"
[[virtual_server.real_server]]
address = "10.99.1.1:80"
`

// stateConfig loads a director config with the given state directory and
// a control socket in a directory of its own, as each start under systemd
// gets a RuntimeDirectory made afresh.
func stateConfig(t *testing.T, stateDir, body string) *conf.Config {
	t.Helper()
	run := t.TempDir()
	file := filepath.Join(run, "lvsha.toml")
	src := fmt.Sprintf("[global]\nrealtime_priority = 0\ncontrol_socket = %q\nstate_dir = %q\n%s", filepath.Join(run, "lvsha.sock"), stateDir, body)
	if err := os.WriteFile(file, []byte(src), 0o644); err != nil {
		t.Fatal(err)
	}
	cfg, _, err := conf.Load(file)
	if err != nil {
		t.Fatal(err)
	}
	return cfg
}

// runUntil runs a daemon over k until cond holds, then stops it.
func runUntil(t *testing.T, cfg *conf.Config, k *fakeIPVS, log *slog.Logger, what string, cond func() bool) {
	t.Helper()
	d := New(cfg, log, Options{OpenIPVS: func() (lvs.Kernel, func(), error) { return k, func() {}, nil }})
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- d.Run(ctx) }()
	waitFor(t, what, cond)
	cancel()
	if err := <-done; err != nil {
		t.Fatalf("Run: %v", err)
	}
}

func inKernel(k *fakeIPVS, key lvs.Key) bool {
	for _, e := range k.table.Entries() {
		if e.Service.Key == key {
			return true
		}
	}
	return false
}

// TestRestartRemovesServiceDroppedFromConfig: a service removed from the
// config while lvsha was stopped is deleted by the next start, though the
// control socket's directory (systemd's RuntimeDirectory) was made afresh:
// which services are its own is kept in the state directory.
func TestRestartRemovesServiceDroppedFromConfig(t *testing.T) {
	state := filepath.Join(t.TempDir(), "state")
	k := newFakeIPVS(t)
	log := slog.New(slog.DiscardHandler)
	runUntil(t, stateConfig(t, state, twoServicesConfig), k, log, "both services in the kernel", func() bool {
		return inKernel(k, okKey) && inKernel(k, refusedKey)
	})
	if b, err := os.ReadFile(filepath.Join(state, ownedFile)); err != nil || string(b) != "tcp/10.99.0.1:80\ntcp/10.99.0.2:80\n" {
		t.Fatalf("owned services file: %q %v", b, err)
	}
	// The second service is gone from the config; the kernel kept it.
	one := twoServicesConfig[:strings.LastIndex(twoServicesConfig, "[[virtual_server]]")]
	runUntil(t, stateConfig(t, state, one), k, log, "the dropped service deleted", func() bool {
		return inKernel(k, okKey) && !inKernel(k, refusedKey)
	})
}

// TestOwnedFileFromOlderLvsha: an lvsha from before state_dir kept the
// owned services next to its control socket. The first start with a state
// directory without the file reads it there, so a service removed from the
// config at the upgrade is still deleted, and moves it.
func TestOwnedFileFromOlderLvsha(t *testing.T) {
	state := filepath.Join(t.TempDir(), "state")
	k := newFakeIPVS(t)
	log := slog.New(slog.DiscardHandler)
	// The older run: both services made, then its file moved back to
	// where an older lvsha had it.
	first := stateConfig(t, state, twoServicesConfig)
	runUntil(t, first, k, log, "both services in the kernel", func() bool {
		return inKernel(k, okKey) && inKernel(k, refusedKey)
	})
	cfg := stateConfig(t, state, twoServicesConfig[:strings.LastIndex(twoServicesConfig, "[[virtual_server]]")])
	old := oldOwnedFile(cfg)
	if err := os.Rename(filepath.Join(state, ownedFile), old); err != nil {
		t.Fatal(err)
	}
	runUntil(t, cfg, k, log, "the dropped service deleted", func() bool {
		return inKernel(k, okKey) && !inKernel(k, refusedKey)
	})
	if b, err := os.ReadFile(filepath.Join(state, ownedFile)); err != nil || string(b) != "tcp/10.99.0.1:80\n" {
		t.Errorf("owned services file in the state directory: %q %v", b, err)
	}
	if _, err := os.Stat(old); !os.IsNotExist(err) {
		t.Errorf("the old file is still there: %v", err)
	}
}

// TestVIPRecordFile: the record starts from the file; what instances
// report is in it once the writer has run, and close writes what is still
// pending; an empty or missing
// record makes RemoveLeftoverVIPs do nothing (no netlink needed).
func TestVIPRecordFile(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, vipsFile)
	// What a start-up cleanup could not remove stays recorded.
	if err := os.WriteFile(path, []byte(`{"VI_0": {"interface": "eth9", "vips": ["10.0.9.1/32"]}}`), 0o644); err != nil {
		t.Fatal(err)
	}
	r := newVIPRecord(path, slog.New(slog.DiscardHandler))
	vi1, vi2 := r.recorder("VI_1"), r.recorder("VI_2")
	vi1("eth0", []netip.Prefix{netip.MustParsePrefix("10.0.0.100/24")}, true)
	vi2("eth1", []netip.Prefix{netip.MustParsePrefix("10.0.1.100/32"), netip.MustParsePrefix("10.0.1.101/32")}, true)
	waitFor(t, "the three instances in the file", func() bool {
		held, err := readVIPRecord(path)
		return err == nil && len(held) == 3
	})
	vi2("eth1", []netip.Prefix{netip.MustParsePrefix("10.0.1.100/32"), netip.MustParsePrefix("10.0.1.101/32")}, false)
	r.close()
	held, err := readVIPRecord(path)
	if err != nil || len(held) != 2 || held["VI_1"].Interface != "eth0" || fmt.Sprint(held["VI_1"].VIPs) != "[10.0.0.100/24]" ||
		held["VI_0"].Interface != "eth9" {
		t.Fatalf("record after close: %+v %v", held, err)
	}

	empty := t.TempDir()
	if n, err := RemoveLeftoverVIPs(empty, slog.New(slog.DiscardHandler)); n != 0 || err != nil {
		t.Errorf("no record: %d %v", n, err)
	}
	if err := os.WriteFile(filepath.Join(empty, vipsFile), []byte("{}\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	if n, err := RemoveLeftoverVIPs(empty, slog.New(slog.DiscardHandler)); n != 0 || err != nil {
		t.Errorf("empty record: %d %v", n, err)
	}
	if err := os.WriteFile(filepath.Join(empty, vipsFile), []byte("{"), 0o644); err != nil {
		t.Fatal(err)
	}
	if _, err := RemoveLeftoverVIPs(empty, slog.New(slog.DiscardHandler)); err == nil || !strings.Contains(err.Error(), "parse") {
		t.Errorf("torn record: %v", err)
	}
}
