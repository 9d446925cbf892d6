package director

import (
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"maps"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"

	"github.com/lvsha/lvsha/conf"
	"github.com/lvsha/lvsha/lvs/atomicfile"
)

// The state directory (global.state_dir) keeps what must outlive the
// process: a crash, and a `systemctl restart`, which empties the unit's
// RuntimeDirectory. Its files:
const (
	// ownedFile lists the IPVS services the daemon owns, so one removed
	// from the config while it was stopped is still deleted.
	ownedFile = "ipvs-owned"
	// vipsFile records the VIPs each VRRP instance holds, and those of
	// [bgp], so VIPs a killed process never released can be removed
	// (vipRecord).
	vipsFile = "vips.json"
	// bgpRecordKey is [bgp]'s entry in vipsFile, beside the instances'
	// names; brackets, which no sane instance name has, keep it apart.
	bgpRecordKey = "[bgp]"
)

func stateFile(cfg *conf.Config, name string) string {
	return filepath.Join(cfg.Global.StateDir, name)
}

// oldOwnedFile is where lvsha kept the owned services before state_dir:
// next to the control socket, in the RuntimeDirectory.
func oldOwnedFile(cfg *conf.Config) string {
	return strings.TrimSuffix(cfg.Global.ControlSocket, ".sock") + ".ipvs-owned"
}

// adoptOldOwned moves the owned services file of an older lvsha to path, if
// path does not exist yet, so the first start after an upgrade still knows
// which services are its own.
func adoptOldOwned(path, old string, log *slog.Logger) {
	if _, err := os.Stat(path); !errors.Is(err, os.ErrNotExist) {
		return
	}
	b, err := os.ReadFile(old)
	if err != nil {
		if !errors.Is(err, os.ErrNotExist) {
			log.Warn("ipvs: cannot read the owned services file of an older lvsha", "file", old, "err", err)
		}
		return
	}
	if err := atomicfile.Write(path, b, 0o644); err != nil {
		log.Warn("ipvs: cannot move the owned services file to the state directory", "from", old, "err", err)
		return
	}
	_ = os.Remove(old)
	log.Info("ipvs: moved the owned services file to the state directory", "from", old, "to", path)
}

// heldVIPs are the VIPs one VRRP instance holds on an interface.
type heldVIPs struct {
	Interface string         `json:"interface"`
	VIPs      []netip.Prefix `json:"vips"`
}

// vipRecord keeps in a file the VIPs each VRRP instance holds (by instance
// name), and those [bgp] holds (bgpRecordKey). A process killed while master leaves its VIPs on the interface,
// answering ARP for an address the other director now holds; the record
// lets its next start, or `lvsha cleanup` after it, remove them whatever
// the config says by then.
//
// Instances report from their real-time loops, which must not wait for
// a disk: the file is written by a goroutine of its own. An instance
// reports before it adds its VIPs, so only a crash in the milliseconds
// before a takeover is written can leave a VIP unrecorded (and an instance
// removes the VIPs of its own config when it starts anyway).
type vipRecord struct {
	path  string
	log   *slog.Logger
	dirty chan struct{} // capacity 1: the writer writes the newest state
	quit  chan struct{}
	done  chan struct{}

	mu   sync.Mutex
	held map[string]heldVIPs
}

// newVIPRecord starts from what path records: after the start-up cleanup,
// that is what it could not remove, which stays recorded for the next try.
func newVIPRecord(path string, log *slog.Logger) *vipRecord {
	held, err := readVIPRecord(path)
	if err != nil {
		log.Warn("vrrp: ignoring the unreadable record of the VIPs held", "err", err)
		held = map[string]heldVIPs{}
	}
	r := &vipRecord{path: path, log: log, held: held,
		dirty: make(chan struct{}, 1), quit: make(chan struct{}), done: make(chan struct{})}
	go r.run()
	return r
}

// recorder is instance's vrrp.WithVIPRecorder function.
func (r *vipRecord) recorder(instance string) func(iface string, vips []netip.Prefix, held bool) {
	return func(iface string, vips []netip.Prefix, held bool) {
		r.mu.Lock()
		if held && len(vips) > 0 {
			r.held[instance] = heldVIPs{Interface: iface, VIPs: slices.Clone(vips)}
		} else {
			delete(r.held, instance)
		}
		r.mu.Unlock()
		select {
		case r.dirty <- struct{}{}:
		default:
		}
	}
}

func (r *vipRecord) run() {
	defer close(r.done)
	for {
		select {
		case <-r.dirty:
			r.write()
		case <-r.quit:
			select {
			case <-r.dirty:
				r.write()
			default:
			}
			return
		}
	}
}

func (r *vipRecord) write() {
	r.mu.Lock()
	b, err := json.MarshalIndent(r.held, "", "  ")
	r.mu.Unlock()
	if err == nil {
		err = atomicfile.Write(r.path, append(b, '\n'), 0o644)
	}
	if err != nil {
		r.log.Error("vrrp: cannot record the VIPs held; a crash may leave them behind", "err", err)
	}
}

// close writes what is still pending and stops the writer.
func (r *vipRecord) close() {
	close(r.quit)
	<-r.done
}

// readVIPRecord reads a record; a missing file is an empty one.
func readVIPRecord(path string) (map[string]heldVIPs, error) {
	held := map[string]heldVIPs{}
	b, err := os.ReadFile(path)
	if errors.Is(err, os.ErrNotExist) {
		return held, nil
	}
	if err != nil {
		return nil, err
	}
	if err := json.Unmarshal(b, &held); err != nil {
		return nil, fmt.Errorf("parse %s: %w", path, err)
	}
	return held, nil
}

// RemoveLeftoverVIPs removes from their interfaces the VIPs the record in
// stateDir says VRRP instances held (each removal logged), then empties the
// record. It is for when no instance runs: at the daemon's start, before
// its instances, and in `lvsha cleanup` after it stopped. A VIP no longer
// on its interface, or an interface gone, is nothing to do; what could not
// be removed stays recorded and is the error. It returns how many VIPs it
// removed.
func RemoveLeftoverVIPs(stateDir string, log *slog.Logger) (int, error) {
	path := filepath.Join(stateDir, vipsFile)
	held, err := readVIPRecord(path)
	if err != nil {
		return 0, fmt.Errorf("leftover VIPs: %w", err)
	}
	if len(held) == 0 {
		return 0, nil
	}
	h, err := netlink.NewHandle(unix.NETLINK_ROUTE)
	if err != nil {
		return 0, fmt.Errorf("leftover VIPs: netlink: %w", err)
	}
	defer h.Close()
	removed := 0
	var errs []error
	for _, name := range slices.Sorted(maps.Keys(held)) {
		n, err := removeVIPs(h, name, held[name], log)
		removed += n
		if err != nil {
			errs = append(errs, fmt.Errorf("instance %s: %w", name, err))
			continue
		}
		delete(held, name)
	}
	b, err := json.MarshalIndent(held, "", "  ")
	if err == nil {
		err = atomicfile.Write(path, append(b, '\n'), 0o644)
	}
	if err != nil {
		errs = append(errs, err)
	}
	if err := errors.Join(errs...); err != nil {
		return removed, fmt.Errorf("leftover VIPs: %w", err)
	}
	return removed, nil
}

// removeVIPs removes one instance's recorded VIPs that are still on its
// interface, whatever their prefix length there.
func removeVIPs(h *netlink.Handle, instance string, hv heldVIPs, log *slog.Logger) (int, error) {
	link, err := h.LinkByName(hv.Interface)
	if err != nil {
		if _, gone := err.(netlink.LinkNotFoundError); gone {
			log.Info("leftover VIPs: interface gone, and its addresses with it", "instance", instance, "interface", hv.Interface)
			return 0, nil
		}
		return 0, fmt.Errorf("interface %s: %w", hv.Interface, err)
	}
	var list []netlink.Addr
	for range 5 {
		list, err = h.AddrList(link, netlink.FAMILY_ALL) // IPv6 instances' VIPs too
		if !errors.Is(err, netlink.ErrDumpInterrupted) {
			break
		}
	}
	if err != nil {
		return 0, fmt.Errorf("list addresses of %s: %w", hv.Interface, err)
	}
	n := 0
	var errs []error
	for _, a := range list {
		ip, ok := netip.AddrFromSlice(a.IP)
		ip = ip.Unmap()
		if !ok || !slices.ContainsFunc(hv.VIPs, func(v netip.Prefix) bool { return v.Addr() == ip }) {
			continue
		}
		log.Warn("removing a VIP a previous run left", "instance", instance, "interface", hv.Interface, "vip", a.IPNet.String())
		if err := h.AddrDel(link, &a); err != nil && !errors.Is(err, unix.EADDRNOTAVAIL) {
			errs = append(errs, fmt.Errorf("remove %s from %s: %w", a.IPNet, hv.Interface, err))
			continue
		}
		n++
	}
	return n, errors.Join(errs...)
}

// controlAnswers says whether a daemon answers on the control socket.
func controlAnswers(path string) bool {
	c, err := net.DialTimeout("unix", path, time.Second)
	if err != nil {
		return false
	}
	_ = c.Close()
	return true
}

// Running says whether an lvsha daemon answers on cfg's control socket:
// `lvsha cleanup` must not take VIPs from a live master.
func Running(cfg *conf.Config) bool {
	return controlAnswers(cfg.Global.ControlSocket)
}
