// Package daemon wires lvsha's parts into the director daemon: VRRP
// instances, health checks and the IPVS reconciler, the control socket that
// `lvsha status` asks, and reload on SIGHUP.
package daemon

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"sync"
	"time"

	"github.com/lvsha/lvsha/conf"
)

// Options are the daemon's settings that do not come from the config file.
type Options struct {
	Version string
	// Reload delivers a value for each reload request (SIGHUP).
	Reload <-chan os.Signal
}

// Daemon is a running director.
type Daemon struct {
	log  *slog.Logger
	opts Options

	mu      sync.Mutex
	cfg     *conf.Config
	started time.Time
}

// New returns a daemon for a validated config.
func New(cfg *conf.Config, log *slog.Logger, opts Options) *Daemon {
	return &Daemon{cfg: cfg, log: log, opts: opts}
}

// Run runs until ctx is done, then shuts everything down in order.
func (d *Daemon) Run(ctx context.Context) error {
	d.started = time.Now()
	cfg := d.config()
	d.log.Info("lvsha starting", "version", d.opts.Version, "config", cfg.File,
		"vrrp_instances", len(cfg.VRRP), "virtual_services", len(cfg.Services))

	ctl, err := d.listenControl(cfg.Global.ControlSocket)
	if err != nil {
		return err
	}
	srv := &http.Server{Handler: d.controlHandler(), ReadHeaderTimeout: 5 * time.Second}
	go func() {
		if err := srv.Serve(ctl); err != nil && !errors.Is(err, http.ErrServerClosed) {
			d.log.Error("control socket stopped", "err", err)
		}
	}()
	defer func() {
		_ = srv.Close()
		_ = os.Remove(cfg.Global.ControlSocket)
	}()

	for {
		select {
		case <-ctx.Done():
			d.log.Info("lvsha stopping", "cause", context.Cause(ctx))
			return nil
		case <-d.opts.Reload:
			d.reload()
		}
	}
}

func (d *Daemon) config() *conf.Config {
	d.mu.Lock()
	defer d.mu.Unlock()
	return d.cfg
}

// reload reads the config file again; an invalid file changes nothing.
func (d *Daemon) reload() {
	old := d.config()
	cfg, warnings, err := conf.Load(old.File)
	if err != nil {
		var inv *conf.InvalidError
		if errors.As(err, &inv) {
			for _, dg := range inv.Diags {
				d.log.Error("reload: config problem", "problem", dg.Format(old.File))
			}
		}
		d.log.Error("reload rejected: keeping the running config", "config", old.File, "err", err)
		return
	}
	for _, w := range warnings {
		d.log.Warn("reload: config warning", "warning", w.Format(old.File))
	}
	d.mu.Lock()
	d.cfg = cfg
	d.mu.Unlock()
	d.log.Info("reload applied", "config", cfg.File)
}

// listenControl opens the control socket, 0600 so only root can ask.
func (d *Daemon) listenControl(path string) (net.Listener, error) {
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		return nil, fmt.Errorf("control socket: %w", err)
	}
	// A socket left by a crashed run would make Listen fail; a live daemon
	// answers on it, so refuse to steal it.
	if c, err := net.DialTimeout("unix", path, time.Second); err == nil {
		_ = c.Close()
		return nil, fmt.Errorf("control socket %s: another lvsha is running", path)
	}
	_ = os.Remove(path)
	l, err := net.Listen("unix", path)
	if err != nil {
		return nil, fmt.Errorf("control socket: %w", err)
	}
	if err := os.Chmod(path, 0o600); err != nil {
		_ = l.Close()
		return nil, fmt.Errorf("control socket: %w", err)
	}
	return l, nil
}
