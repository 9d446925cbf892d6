package checker

import (
	"flag"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"os/signal"
	"syscall"

	"github.com/lvsha/lvsha/healthcheck"
	"github.com/lvsha/lvsha/internal/logging"
	"github.com/lvsha/lvsha/internal/process"
)

// ChildArg is the hidden subcommand of lvsha that runs the checker
// process: `lvsha checker`, started by the daemon only.
const ChildArg = "checker"

// Command returns how the daemon starts its checker: this very binary
// (/proc/self/exe, so a package upgrade replacing the file on disk does not
// pair a running daemon with a new checker) as `lvsha checker`, logging at
// the daemon's level and format to the daemon's stderr.
func Command(logLevel, logFormat string) func() *exec.Cmd {
	return func() *exec.Cmd {
		cmd := exec.Command("/proc/self/exe", ChildArg, "-log-level", logLevel, "-log-format", logFormat)
		cmd.Args[0] = os.Args[0] // what ps shows
		cmd.Stderr = os.Stderr
		return cmd
	}
}

// RunChildIfAsked runs the checker and exits when this process was started
// as one (os.Args[1] is ChildArg). Test binaries call it from TestMain, so
// that a daemon under test can start the test binary as its checker.
func RunChildIfAsked() {
	if len(os.Args) > 1 && os.Args[1] == ChildArg {
		os.Exit(Main(os.Args[2:], os.Stderr, process.Checker))
	}
}

// Main is the checker process: it serves the daemon on fd 3 until the
// daemon closes it. It returns the exit code. settings applies the
// process settings (process.Checker) once the process knows it is a
// checker; an error there is logged, not fatal.
func Main(args []string, stderr io.Writer, settings func() error) int {
	fs := flag.NewFlagSet("lvsha "+ChildArg, flag.ContinueOnError)
	fs.SetOutput(stderr)
	level := fs.String("log-level", "info", "")
	format := fs.String("log-format", "text", "")
	if err := fs.Parse(args); err != nil {
		return 2
	}
	log, err := logging.New(stderr, *level, *format)
	if err != nil {
		fmt.Fprintf(stderr, "lvsha %s: %v\n", ChildArg, err)
		return 2
	}
	log = log.With("process", ChildArg)
	f := os.NewFile(3, "daemon")
	conn, err := net.FileConn(f)
	if err != nil {
		fmt.Fprintf(stderr, "lvsha %s: this is lvsha's health checker process, started by the lvsha daemon only (no daemon socket on fd 3: %v)\n", ChildArg, err)
		return 2
	}
	_ = f.Close()
	// The daemon stops first and closes the socket; a signal sent to the
	// whole group (Ctrl-C, systemd stopping the unit) must not make the
	// checker exit on its own and look like a crash.
	signal.Ignore(syscall.SIGTERM, syscall.SIGINT, syscall.SIGHUP)
	if err := settings(); err != nil {
		log.Warn("cannot leave the daemon's real-time scheduling; checks will cost more CPU", "err", err)
	}
	// Exec checks get none of the daemon's network capabilities; the
	// checker itself keeps what it was started with.
	if err := Serve(conn, log, healthcheck.WithCommandStarter(process.ChildStarter(0))); err != nil {
		log.Error("health checker stopped", "err", err)
		return 1
	}
	return 0
}
