package lvs

import (
	"errors"
	"fmt"
	"net/netip"
	"os"
	"slices"
	"strconv"
	"strings"

	"github.com/lvsha/lvsha/lvs/atomicfile"
)

// ParseKey parses the form Key.String produces: tcp/VIP:PORT, udp/VIP:PORT
// fwmark/N or fwmark6/N.
func ParseKey(s string) (Key, error) {
	kind, rest, ok := strings.Cut(s, "/")
	if !ok {
		return Key{}, fmt.Errorf("service key %q: want tcp/ADDR:PORT, udp/ADDR:PORT, fwmark/N or fwmark6/N", s)
	}
	var k Key
	switch kind {
	case "fwmark", "fwmark6":
		n, err := strconv.ParseUint(rest, 10, 32)
		if err != nil || n == 0 {
			return Key{}, fmt.Errorf("service key %q: bad fwmark", s)
		}
		k.FWMark, k.FWMark6 = uint32(n), kind == "fwmark6"
		return k, nil
	case "tcp":
		k.Proto = TCP
	case "udp":
		k.Proto = UDP
	default:
		return Key{}, fmt.Errorf("service key %q: unknown protocol %q", s, kind)
	}
	ap, err := netip.ParseAddrPort(rest)
	if err != nil {
		return Key{}, fmt.Errorf("service key %q: %w", s, err)
	}
	k.Addr = ap
	return k, nil
}

// OwnedKeys returns the services the reconciler owns, sorted.
func (r *Reconciler) OwnedKeys() []Key {
	keys := make([]Key, 0, len(r.owned))
	for k := range r.owned {
		keys = append(keys, k)
	}
	slices.SortFunc(keys, func(a, b Key) int { return strings.Compare(a.String(), b.String()) })
	return keys
}

// PersistOwned keeps the set of owned services in a file (the daemon's is
// in its state directory, /var/lib/lvsha/ipvs-owned by default, which a
// restart keeps), loading what a previous run left there. Without
// it, a service removed from the config while lvsha was stopped would stay
// in the kernel for ever, since a new process would not know it was ours.
// Write failures later are logged, not fatal.
func (r *Reconciler) PersistOwned(path string) error {
	b, err := os.ReadFile(path)
	if err != nil && !errors.Is(err, os.ErrNotExist) {
		return fmt.Errorf("lvs: owned services state: %w", err)
	}
	for _, line := range strings.Fields(string(b)) {
		k, err := ParseKey(line)
		if err != nil {
			r.log.Warn("ipvs: ignoring bad line in state file", "file", path, "err", err)
			continue
		}
		r.owned[k] = true
	}
	r.statePath = path
	r.savedOwned = strings.Join(keyStrings(r.OwnedKeys()), "\n")
	return nil
}

func keyStrings(keys []Key) []string {
	s := make([]string, len(keys))
	for i, k := range keys {
		s[i] = k.String()
	}
	return s
}

// saveOwned writes the owned set when it changed since the last write.
func (r *Reconciler) saveOwned() {
	if r.statePath == "" {
		return
	}
	cur := strings.Join(keyStrings(r.OwnedKeys()), "\n")
	if cur == r.savedOwned {
		return
	}
	if err := atomicfile.Write(r.statePath, []byte(cur+"\n"), 0o644); err != nil {
		r.log.Error("ipvs: cannot save owned services", "file", r.statePath, "err", err)
		return
	}
	r.savedOwned = cur
}
