// Command soak is lvsha's chaos soak: two real lvsha directors (VRRPv3 at
// 100 ms adverts, a virtual service with HTTP checks of two real servers),
// a client pinging the VIP every 10 ms and a third host forging adverts, in
// network namespaces on one bridge. For a set time it injects, at random:
// master link flaps, SIGKILL and restart of either director, SIGHUP with a
// valid and with an invalid config, SIGKILL of the checker process, a real
// server stopping and starting, the director's eth0 deleted and re-created,
// and malformed and VRID-colliding adverts. All along it checks:
//   - at most one running director holds the VIP, except while a split
//     heals (Master_Down_Interval after a fault that can split, then one
//     advert interval, + margin);
//   - the client reaches the VIP, except during a failover, bounded by
//     Master_Down_Interval + margin;
//   - a stopped real server is reported down in status within
//     fall x interval + timeout (+ margin);
//   - every forged advert is dropped and counted under its reason;
//   - the pair settles after each fault, reloads change no VRRP state;
//   - fds, goroutines and RSS of each daemon stay flat.
//
// Each violation is printed with its time and cause, and a table at the end
// counts faults and violations per kind with the worst outage. It then
// isolates one director (a split) as a negative control that the checker
// must flag. Needs root; `make soak SOAK=30m`, and a 60-second run is part
// of `make test` (soak_test.go).
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"syscall"
	"time"
)

func main() {
	if err := mainErr(); err != nil {
		fmt.Fprintln(os.Stderr, "soak:", err)
		os.Exit(1)
	}
}

func mainErr() error {
	var o options
	flag.StringVar(&o.bin, "lvsha", "", "lvsha binary (default: go build ./cmd/lvsha)")
	flag.DurationVar(&o.duration, "d", 5*time.Minute, "how long to inject faults")
	seed := flag.Int64("seed", 0, "random seed (0: from the clock; the run prints it)")
	flag.BoolVar(&o.keep, "keep", false, "keep the work directory (configs and director logs)")
	flag.Parse()
	if os.Geteuid() != 0 {
		return errors.New("needs root (network namespaces)")
	}
	o.seed = uint64(*seed)
	if o.seed == 0 {
		o.seed = uint64(time.Now().UnixNano())
	}
	o.control = true
	if o.bin == "" {
		dir, err := os.MkdirTemp("", "lvsha-soak-bin")
		if err != nil {
			return err
		}
		defer os.RemoveAll(dir)
		o.bin = filepath.Join(dir, "lvsha")
		if out, err := exec.Command("go", "build", "-o", o.bin, "./cmd/lvsha").CombinedOutput(); err != nil {
			return fmt.Errorf("go build ./cmd/lvsha (run from the repository root or pass -lvsha): %w\n%s", err, out)
		}
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	res, err := run(ctx, o)
	if err != nil {
		return err
	}
	res.report(os.Stdout)
	return res.verdict()
}

// verdict is nil when the run kept every promise and the negative control
// was flagged.
func (r *result) verdict() error {
	var errs []error
	if n := len(r.violations); n > 0 {
		errs = append(errs, fmt.Errorf("%d invariant violation(s)", n))
	}
	if r.injected[kSplit] > 0 && len(r.control) == 0 {
		errs = append(errs, errors.New("the negative control (a split) was not flagged: the checker is blind"))
	}
	return errors.Join(errs...)
}
