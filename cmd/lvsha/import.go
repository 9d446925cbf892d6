package main

import (
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"strings"

	"github.com/lvsha/lvsha/conf/keepalived"
)

const importUsage = `Usage: lvsha import [-o FILE] [--check] [--config-id ID] KEEPALIVED_CONF

Translates a keepalived.conf (and its includes) into lvsha's TOML, on
standard output or into FILE. Everything that was not carried over, or
was carried over differently, is a warning on standard error with the
keepalived file and line. --check exits 1 when there is any warning.
--config-id selects the @ID lines as keepalived's -i does (default: the
host name up to the first dot, keepalived's default).
`

// runImport is `lvsha import`.
func runImport(args []string, stdout, stderr io.Writer) int {
	fs := newFlagSet("lvsha import")
	var out, id string
	var check bool
	if h, err := os.Hostname(); err == nil {
		id, _, _ = strings.Cut(h, ".")
	}
	fs.StringVar(&out, "o", "", "")
	fs.BoolVar(&check, "check", false, "")
	fs.StringVar(&id, "config-id", id, "")
	// Flags may follow the file: `lvsha import keepalived.conf -o FILE`.
	var files []string
	for {
		if err := fs.Parse(args); err != nil {
			if errors.Is(err, flag.ErrHelp) {
				fmt.Fprint(stdout, importUsage)
				return exitOK
			}
			return importUsageErr(stderr, err.Error())
		}
		if fs.NArg() == 0 {
			break
		}
		files = append(files, fs.Arg(0))
		args = fs.Args()[1:]
	}
	if len(files) != 1 {
		return importUsageErr(stderr, "import takes one keepalived config file")
	}
	file := files[0]
	root, warnings, err := keepalived.ParseFile(file, keepalived.Options{ConfigID: id})
	for _, w := range warnings {
		fmt.Fprintln(stderr, w)
	}
	if err != nil {
		fmt.Fprintf(stderr, "lvsha: import: %v\n", err)
		return exitFail
	}
	res := keepalived.Translate(file, root)
	for _, w := range res.Warnings {
		fmt.Fprintln(stderr, w)
	}
	if len(res.Invalid) > 0 {
		// Say so rather than write a file the daemon would refuse.
		fmt.Fprintf(stderr, "lvsha: import: the translation is not a valid lvsha config (a config keepalived refuses too, such as a VRID used twice on one interface, or a bug of the import):\n%s\n", strings.Join(res.Invalid, "\n"))
		return exitFail
	}
	if out == "" {
		if _, err := stdout.Write(res.TOML); err != nil {
			fmt.Fprintf(stderr, "lvsha: import: %v\n", err)
			return exitFail
		}
	} else if err := writePrivate(out, res.TOML); err != nil {
		fmt.Fprintf(stderr, "lvsha: import: %v\n", err)
		return exitFail
	}
	n := len(warnings) + len(res.Warnings)
	fmt.Fprintf(stderr, "lvsha: import: %s: %s\n", file, plural(n, "warning"))
	if check && n > 0 {
		return exitFail
	}
	return exitOK
}

func importUsageErr(stderr io.Writer, msg string) int {
	fmt.Fprintf(stderr, "lvsha: %s\n\n%s", strings.Replace(msg, "flag provided but not defined:", "unknown flag", 1), importUsage)
	return exitUsage
}

// writePrivate writes a file only its owner can read, an existing one too:
// it may hold a VRRP password.
func writePrivate(path string, data []byte) error {
	if err := os.WriteFile(path, data, 0o600); err != nil {
		return err
	}
	return os.Chmod(path, 0o600)
}
