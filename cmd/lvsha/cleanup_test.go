package main

import (
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// cleanupConfig writes a config whose state directory holds record.
func cleanupConfig(t *testing.T, record string) (file, sock, state string) {
	t.Helper()
	dir := t.TempDir()
	file, sock, state = filepath.Join(dir, "lvsha.toml"), filepath.Join(dir, "lvsha.sock"), filepath.Join(dir, "state")
	if err := os.WriteFile(file, fmt.Appendf(nil, "[global]\ncontrol_socket = %q\nstate_dir = %q\n", sock, state), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.MkdirAll(state, 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(state, "vips.json"), []byte(record), 0o644); err != nil {
		t.Fatal(err)
	}
	return file, sock, state
}

// TestCleanupRefusesRunningDaemon: while a daemon answers on the control
// socket its VIPs are its own; cleanup leaves them and the record alone.
func TestCleanupRefusesRunningDaemon(t *testing.T) {
	const record = `{"VI_1": {"interface": "lvsha-none0", "vips": ["192.0.2.10/32"]}}`
	file, sock, state := cleanupConfig(t, record)
	l, err := net.Listen("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	code, _, errOut := runCLI("cleanup", "-f", file)
	if code != exitFail || !strings.Contains(errOut, "lvsha is running") {
		t.Errorf("exit %d, stderr %q", code, errOut)
	}
	if b, _ := os.ReadFile(filepath.Join(state, "vips.json")); string(b) != record {
		t.Errorf("record changed to %q", b)
	}
}

// TestCleanupInterfaceGone: a recorded VIP on an interface that no longer
// exists went with it; the record is emptied.
func TestCleanupInterfaceGone(t *testing.T) {
	file, _, state := cleanupConfig(t, `{"VI_1": {"interface": "lvsha-none0", "vips": ["192.0.2.10/32"]}}`)
	code, out, errOut := runCLI("cleanup", "-f", file)
	if code != exitOK || out != "cleanup: removed 0 leftover VIPs\n" || !strings.Contains(errOut, "interface gone") {
		t.Errorf("exit %d, stdout %q, stderr %q", code, out, errOut)
	}
	if b, _ := os.ReadFile(filepath.Join(state, "vips.json")); strings.TrimSpace(string(b)) != "{}" {
		t.Errorf("record after cleanup %q", b)
	}
}
