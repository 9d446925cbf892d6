// Package logging builds lvsha's slog loggers from the config's log level
// and format, the same way in the daemon and in its checker process.
package logging

import (
	"fmt"
	"io"
	"log/slog"
)

// New builds a logger: text (the default, for journald and
// terminals) or JSON (for log shippers).
func New(w io.Writer, level, format string) (*slog.Logger, error) {
	var lv slog.Level
	if err := lv.UnmarshalText([]byte(level)); err != nil {
		return nil, fmt.Errorf("log level %q: want debug, info, warn or error", level)
	}
	opts := &slog.HandlerOptions{Level: lv}
	switch format {
	case "text", "":
		return slog.New(slog.NewTextHandler(w, opts)), nil
	case "json":
		return slog.New(slog.NewJSONHandler(w, opts)), nil
	}
	return nil, fmt.Errorf("log format %q: want text or json", format)
}
