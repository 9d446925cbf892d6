package main

import (
	"fmt"
	"io"
	"log/slog"

	"github.com/lvsha/lvsha/conf"
	"github.com/lvsha/lvsha/internal/director"
)

// runCleanup removes the VIPs a director that is no longer running left on
// its interfaces (it was killed, or it crashed and stays down), as the
// state directory records them: the unit's ExecStopPost, so a node that
// stays down does not keep answering for an address its peer now holds.
func runCleanup(args []string, stdout, stderr io.Writer) int {
	fs := newFlagSet("lvsha cleanup")
	file := conf.DefaultConfigFile
	fs.StringVar(&file, "f", file, "")
	fs.StringVar(&file, "config", file, "")
	if err := fs.Parse(args); err != nil {
		return usageErr(stderr, err.Error())
	}
	if fs.NArg() > 0 {
		return usageErr(stderr, fmt.Sprintf("cleanup: unexpected argument %q", fs.Arg(0)))
	}
	cfg, _, err := conf.Load(file)
	if err != nil {
		// A stop must clean up even when the file was broken since the
		// start: fall back to where the defaults keep the state.
		fmt.Fprintf(stderr, "lvsha: cleanup: %v\n", err)
		if cfg, _, err = conf.Parse(file, nil); err != nil {
			fmt.Fprintf(stderr, "lvsha: cleanup: %v\n", err)
			return exitFail
		}
		fmt.Fprintf(stderr, "lvsha: cleanup: using the default state_dir %s\n", cfg.Global.StateDir)
	}
	if director.Running(cfg) {
		fmt.Fprintf(stderr, "lvsha: cleanup: lvsha is running (it answers on %s); its VIPs are its own\n", cfg.Global.ControlSocket)
		return exitFail
	}
	log := slog.New(slog.NewTextHandler(stderr, &slog.HandlerOptions{Level: slog.LevelInfo}))
	n, err := director.RemoveLeftoverVIPs(cfg.Global.StateDir, log)
	fmt.Fprintf(stdout, "cleanup: removed %s\n", plural(n, "leftover VIP"))
	if err != nil {
		fmt.Fprintf(stderr, "lvsha: cleanup: %v\n", err)
		return exitFail
	}
	return exitOK
}
