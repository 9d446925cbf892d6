package director

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"maps"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"sync"
	"time"
	"unsafe"

	"golang.org/x/sys/unix"

	"github.com/lvsha/lvsha/conf"
	"github.com/lvsha/lvsha/healthcheck"
	"github.com/lvsha/lvsha/vrrp"
)

// tracker reads the config's tracked files and runs its tracked scripts,
// each in goroutines of its own, and hands every change to the VRRP
// instances (vrrp.Instance.SetTrackFile, SetTrackScript never block): a
// slow script or file system never holds an instance's loop.
type tracker struct {
	log   *slog.Logger
	start func(*exec.Cmd) error // of scripts: normal scheduling, no capabilities
	// changed hears of every new value, after it is recorded.
	changed func()

	mu      sync.Mutex
	files   map[string]int64 // by track_file name
	scripts map[string]bool  // by track_script name, once it has a result

	// Owned by update and stop (the daemon's goroutine).
	fileCfg   []conf.TrackFile
	stopFiles func()
	runners   map[string]*scriptRunner
}

type scriptRunner struct {
	cfg  conf.TrackScript
	stop func()
}

func newTracker(log *slog.Logger, start func(*exec.Cmd) error, changed func()) *tracker {
	return &tracker{log: log, start: start, changed: changed,
		files: map[string]int64{}, scripts: map[string]bool{}, runners: map[string]*scriptRunner{}}
}

// replay hands inst every value known now: a new instance starts from them.
func (t *tracker) replay(inst *vrrp.Instance) {
	if t == nil {
		return
	}
	t.mu.Lock()
	defer t.mu.Unlock()
	for n, v := range t.files {
		inst.SetTrackFile(n, v)
	}
	for n, ok := range t.scripts {
		inst.SetTrackScript(n, ok)
	}
}

// update starts what cfg tracks and stops what it no longer does. A
// script whose command and timing are unchanged keeps running, and keeps
// its state: a reload must not make a failing script succeed again.
func (t *tracker) update(ctx context.Context, cfg *conf.Config) {
	if !slices.Equal(cfg.TrackFiles, t.fileCfg) {
		if t.stopFiles != nil {
			t.stopFiles()
			t.stopFiles = nil
		}
		t.fileCfg = slices.Clone(cfg.TrackFiles)
		if len(cfg.TrackFiles) > 0 {
			t.stopFiles = t.watchFiles(ctx, cfg.TrackFiles)
		}
	}
	want := map[string]conf.TrackScript{}
	for _, s := range cfg.TrackScripts {
		want[s.Name] = s
	}
	for name, r := range t.runners {
		if s, ok := want[name]; !ok || !sameRun(s, r.cfg) {
			r.stop()
			delete(t.runners, name)
			if !ok {
				t.mu.Lock()
				delete(t.scripts, name)
				t.mu.Unlock()
			}
		}
	}
	for _, s := range cfg.TrackScripts {
		if _, ok := t.runners[s.Name]; ok {
			continue
		}
		rctx, cancel := context.WithCancel(ctx)
		done := make(chan struct{})
		go func() {
			defer close(done)
			t.runScript(rctx, s)
		}()
		t.runners[s.Name] = &scriptRunner{cfg: s, stop: func() { cancel(); <-done }}
	}
}

// sameRun says whether two scripts run alike (their weights are the
// instances' business).
func sameRun(a, b conf.TrackScript) bool {
	return slices.Equal(a.Argv, b.Argv) && a.Interval == b.Interval && a.Timeout == b.Timeout && a.Rise == b.Rise && a.Fall == b.Fall
}

// stop stops every watcher and script, and waits for them.
func (t *tracker) stop() {
	if t.stopFiles != nil {
		t.stopFiles()
		t.stopFiles = nil
	}
	for name, r := range t.runners {
		r.stop()
		delete(t.runners, name)
	}
}

// snapshot returns the current values (for status).
func (t *tracker) snapshot() (files map[string]int64, scripts map[string]bool) {
	t.mu.Lock()
	defer t.mu.Unlock()
	return maps.Clone(t.files), maps.Clone(t.scripts)
}

func (t *tracker) setFile(name string, v int64) {
	t.mu.Lock()
	old, known := t.files[name]
	t.files[name] = v
	t.mu.Unlock()
	if !known || old != v {
		t.log.Info("tracked file", "track_file", name, "value", v)
		t.changed()
	}
}

func (t *tracker) setScript(name string, ok bool) {
	t.mu.Lock()
	old, known := t.scripts[name]
	t.scripts[name] = ok
	t.mu.Unlock()
	if !known || old != ok {
		t.changed()
	}
}

// runScript runs s every interval until ctx ends. Its first result counts
// at once (keepalived does the same); after that it takes rise successes
// or fall failures in a row to change. A run that outlives the timeout is
// killed with its process group and counts as a failure.
func (t *tracker) runScript(ctx context.Context, s conf.TrackScript) {
	var succ, fail int
	known, good := false, false
	for {
		began := time.Now()
		rctx, cancel := context.WithTimeout(ctx, s.Timeout.D())
		err := healthcheck.RunCommand(rctx, s.Argv, nil, t.start)
		cancel()
		if ctx.Err() != nil {
			return
		}
		if err == nil {
			succ, fail = succ+1, 0
		} else {
			succ, fail = 0, fail+1
		}
		next := good
		switch {
		case !known:
			next = err == nil
		case err == nil && succ >= s.Rise:
			next = true
		case err != nil && fail >= s.Fall:
			next = false
		}
		if !known || next != good {
			if next {
				t.log.Info("tracked script succeeding", "track_script", s.Name)
			} else {
				t.log.Warn("tracked script failing", "track_script", s.Name, "err", err)
			}
		}
		known, good = true, next
		t.setScript(s.Name, good)
		select {
		case <-ctx.Done():
			return
		case <-time.After(max(s.Interval.D()-time.Since(began), 0)):
		}
	}
}

// fileRetry is how often a watcher tries again to watch a directory that
// does not exist (yet): the one case inotify cannot tell of.
const fileRetry = 2 * time.Second

// watchFiles reads the files now, then again whenever inotify reports a
// change in their directories; it returns how to stop it.
func (t *tracker) watchFiles(ctx context.Context, files []conf.TrackFile) (stop func()) {
	ctx, cancel := context.WithCancel(ctx)
	done := make(chan struct{})
	go func() {
		defer close(done)
		if err := t.watch(ctx, files); err != nil && ctx.Err() == nil {
			t.log.Error("tracked files: cannot watch; no longer following them", "err", err)
		}
	}()
	return func() { cancel(); <-done }
}

func (t *tracker) watch(ctx context.Context, files []conf.TrackFile) error {
	byDir := map[string][]conf.TrackFile{}
	for _, f := range files {
		d := filepath.Dir(f.Path)
		byDir[d] = append(byDir[d], f)
	}
	fd, err := unix.InotifyInit1(unix.IN_NONBLOCK | unix.IN_CLOEXEC)
	if err != nil {
		return fmt.Errorf("inotify: %w", err)
	}
	// os.File puts a non-blocking descriptor in the runtime's poller: a
	// read waits without a thread, and a deadline wakes it.
	f := os.NewFile(uintptr(fd), "inotify")
	defer f.Close()
	stopRead := context.AfterFunc(ctx, func() { _ = f.SetReadDeadline(time.Now()) })
	defer stopRead()

	wds := map[int]string{}        // watch descriptor: directory
	unwatched := map[string]bool{} // directories to watch when they exist
	for d := range byDir {
		unwatched[d] = true
	}
	const mask = unix.IN_CLOSE_WRITE | unix.IN_MOVED_TO | unix.IN_MOVED_FROM | unix.IN_CREATE | unix.IN_DELETE |
		unix.IN_DELETE_SELF | unix.IN_MOVE_SELF | unix.IN_ONLYDIR
	buf := make([]byte, 64*(unix.SizeofInotifyEvent+unix.NAME_MAX+1))
	dirty := maps.Clone(unwatched) // directories whose files to read
	for {
		for d := range unwatched {
			if wd, err := unix.InotifyAddWatch(fd, d, mask); err == nil {
				wds[wd] = d
				delete(unwatched, d)
			}
		}
		// Read after watching: a change between the two is not lost.
		for d := range dirty {
			for _, tf := range byDir[d] {
				t.setFile(tf.Name, t.readFile(tf.Path))
			}
		}
		clear(dirty)
		// A missing directory cannot be watched: look for it again (and
		// read its files) every fileRetry until it exists.
		deadline := time.Time{}
		if len(unwatched) > 0 {
			deadline = time.Now().Add(fileRetry)
		}
		_ = f.SetReadDeadline(deadline)
		// After the deadline is set: a cancel from now on sets its own.
		if ctx.Err() != nil {
			return nil
		}
		n, err := f.Read(buf)
		if errors.Is(err, os.ErrDeadlineExceeded) {
			if ctx.Err() != nil {
				return nil
			}
			maps.Copy(dirty, unwatched)
			continue
		}
		if err != nil {
			return fmt.Errorf("inotify read: %w", err)
		}
		for off := 0; off+unix.SizeofInotifyEvent <= n; {
			ev := (*unix.InotifyEvent)(unsafe.Pointer(&buf[off]))
			off += unix.SizeofInotifyEvent + int(ev.Len)
			if ev.Mask&unix.IN_Q_OVERFLOW != 0 {
				for d := range byDir {
					dirty[d] = true
				}
			}
			d, ok := wds[int(ev.Wd)]
			if !ok {
				continue
			}
			dirty[d] = true
			if ev.Mask&(unix.IN_IGNORED|unix.IN_DELETE_SELF|unix.IN_MOVE_SELF) != 0 {
				// The directory went: its files are missing now; watch
				// it again when it is back.
				_, _ = unix.InotifyRmWatch(fd, uint32(ev.Wd))
				delete(wds, int(ev.Wd))
				unwatched[d] = true
			}
		}
	}
}

// readFile returns the number a tracked file holds: 0 when the file is
// missing, unreadable or holds no number (keepalived reads these as 0).
func (t *tracker) readFile(path string) int64 {
	f, err := os.Open(path)
	if err != nil {
		if !errors.Is(err, os.ErrNotExist) {
			t.log.Warn("tracked file unreadable; counting 0", "path", path, "err", err)
		}
		return 0
	}
	defer f.Close()
	b, err := io.ReadAll(io.LimitReader(f, 64))
	if err != nil {
		t.log.Warn("tracked file unreadable; counting 0", "path", path, "err", err)
		return 0
	}
	fields := bytes.Fields(b)
	if len(fields) == 0 {
		return 0
	}
	v, err := strconv.ParseInt(string(fields[0]), 10, 64)
	if err != nil {
		t.log.Warn("tracked file holds no number; counting 0", "path", path, "content", string(fields[0]))
		return 0
	}
	return v
}
