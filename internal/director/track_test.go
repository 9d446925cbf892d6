package director

import (
	"context"
	"log/slog"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/lvsha/lvsha/conf"
)

func testTracker(t *testing.T) (*tracker, chan struct{}) {
	t.Helper()
	ch := make(chan struct{}, 100)
	tr := newTracker(slog.New(slog.DiscardHandler), nil, func() {
		select {
		case ch <- struct{}{}:
		default:
		}
	})
	t.Cleanup(tr.stop)
	return tr, ch
}

func waitValue[T comparable](t *testing.T, what string, get func() (T, bool), want T) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for time.Now().Before(deadline) {
		if v, ok := get(); ok && v == want {
			return
		}
		time.Sleep(5 * time.Millisecond)
	}
	v, ok := get()
	t.Fatalf("%s: %v (known %v), want %v", what, v, ok, want)
}

// TestTrackFileWatch: the value follows the file through inotify, a
// missing file (and a missing directory) is 0, and a directory made later
// is found.
func TestTrackFileWatch(t *testing.T) {
	tr, _ := testTracker(t)
	dir := filepath.Join(t.TempDir(), "run")
	path := filepath.Join(dir, "drain")
	file := func() (int64, bool) { f, _ := tr.snapshot(); v, ok := f["drain"]; return v, ok }

	tr.update(context.Background(), &conf.Config{TrackFiles: []conf.TrackFile{{Name: "drain", Path: path, Weight: 1}}})
	waitValue(t, "missing directory", file, 0)
	if err := os.Mkdir(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(path, []byte("-254\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	waitValue(t, "after the directory appeared", file, -254)
	// From now on the directory is watched: a change shows well within
	// the retry period.
	start := time.Now()
	if err := os.WriteFile(path, []byte("  17 trailing words\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	waitValue(t, "rewritten", file, 17)
	if d := time.Since(start); d > fileRetry/2 {
		t.Errorf("a change took %v to be seen: polled, not watched?", d)
	}
	if err := os.WriteFile(path, []byte("junk"), 0o644); err != nil {
		t.Fatal(err)
	}
	waitValue(t, "no number", file, 0)
	// Replaced by a rename, as editors and config tools do.
	tmp := filepath.Join(dir, ".drain.tmp")
	if err := os.WriteFile(tmp, []byte("-60"), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.Rename(tmp, path); err != nil {
		t.Fatal(err)
	}
	waitValue(t, "renamed over", file, -60)
	if err := os.Remove(path); err != nil {
		t.Fatal(err)
	}
	waitValue(t, "removed", file, 0)
	// The whole directory goes and comes back.
	if err := os.RemoveAll(dir); err != nil {
		t.Fatal(err)
	}
	if err := os.Mkdir(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(path, []byte("5"), 0o644); err != nil {
		t.Fatal(err)
	}
	waitValue(t, "directory re-created", file, 5)
}

// TestTrackScriptRun: rise and fall count results in a row after the
// first, which counts at once; a hanging script is killed with its group
// at the timeout and counts as failing.
func TestTrackScriptRun(t *testing.T) {
	tr, _ := testTracker(t)
	dir := t.TempDir()
	flag := filepath.Join(dir, "ok")
	pidFile := filepath.Join(dir, "pid")
	script := filepath.Join(dir, "check")
	// ok: exit 0 while the flag file exists; hang: a child that sleeps.
	if err := os.WriteFile(script, []byte("#!/bin/sh\nif [ \"$1\" = hang ]; then sleep 60 & echo $! > "+pidFile+"; wait; fi\n[ -e "+flag+" ]\n"), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(flag, nil, 0o644); err != nil {
		t.Fatal(err)
	}
	script1 := func() (bool, bool) { _, s := tr.snapshot(); v, ok := s["s"]; return v, ok }
	iv := conf.Duration(20 * time.Millisecond)
	tr.update(context.Background(), &conf.Config{TrackScripts: []conf.TrackScript{
		{Name: "s", Argv: []string{script}, Interval: iv, Timeout: conf.Duration(time.Second), Rise: 2, Fall: 3},
	}})
	waitValue(t, "first result", script1, true)
	if err := os.Remove(flag); err != nil {
		t.Fatal(err)
	}
	start := time.Now()
	waitValue(t, "failing", script1, false)
	if d := time.Since(start); d < 2*iv.D() {
		t.Errorf("failing after %v: fall 3 at %v needs at least 2 intervals more", d, iv)
	}

	// A reload that changes only weights keeps the runner and its state.
	tr.update(context.Background(), &conf.Config{TrackScripts: []conf.TrackScript{
		{Name: "s", Argv: []string{script}, Interval: iv, Timeout: conf.Duration(time.Second), Rise: 2, Fall: 3, Weight: -60},
	}})
	if v, _ := script1(); v {
		t.Fatal("a weight-only reload reset the script's state")
	}

	// Hang: killed at the 300ms timeout, with its child; failing.
	tr.update(context.Background(), &conf.Config{TrackScripts: []conf.TrackScript{
		{Name: "h", Argv: []string{script, "hang"}, Interval: conf.Duration(time.Second), Timeout: conf.Duration(300 * time.Millisecond), Rise: 1, Fall: 1},
	}})
	hang := func() (bool, bool) { _, s := tr.snapshot(); v, ok := s["h"]; return v, ok }
	start = time.Now()
	waitValue(t, "hanging script failing", hang, false)
	if d := time.Since(start); d < 250*time.Millisecond || d > 2*time.Second {
		t.Errorf("hanging script failed after %v, want about the 300ms timeout", d)
	}
	if _, known := script1(); known {
		t.Error("a removed script keeps its value")
	}
	b, err := os.ReadFile(pidFile)
	if err != nil {
		t.Fatal(err)
	}
	pid, _ := strconv.Atoi(strings.TrimSpace(string(b)))
	waitValue(t, "the hanging script's child killed", func() (bool, bool) {
		return syscall.Kill(pid, 0) == syscall.ESRCH || isZombie(pid), true
	}, true)
}

func isZombie(pid int) bool {
	b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/stat")
	return err == nil && strings.Contains(string(b), ") Z ")
}
