package vrrp

import (
	"errors"
	"fmt"
	"log/slog"
	"maps"
	"net/netip"
	"os/exec"
	"reflect"
	"slices"
	"sync"
	"time"
)

// Config is one virtual router instance. Every field is taken as it is:
// lvsha's conf package sets the defaults and checks the config's rules; New
// checks only what the protocol and the driver need.
type Config struct {
	Name           string
	Interface      string
	VRID           uint8 // 1..255
	Priority       uint8 // 1..255; 255 = address owner
	AdvertInterval time.Duration
	Version        int // 2 or 3
	// Preempt lets a higher-priority backup take over from a lower-priority
	// master.
	Preempt      bool
	PreemptDelay time.Duration
	VIPs         []netip.Prefix
	// UnicastSrc and UnicastPeers replace multicast with unicast adverts.
	UnicastSrc   netip.Addr
	UnicastPeers []netip.Addr
	// AuthPass is the VRRPv2 simple password (at most 8 bytes).
	AuthPass     string
	ChecksumMode ChecksumMode
	// GARPRepeat (at least 1) is the number of gratuitous ARPs per VIP in
	// one burst; GARPInterval is the pause between two of them; GARPDelay
	// (>0) sends a second burst that long after taking over; GARPRefresh
	// (>0) sends a burst that often while master.
	GARPRepeat   int
	GARPDelay    time.Duration
	GARPRefresh  time.Duration
	GARPInterval time.Duration
	Track        []TrackInterface
	// TrackFiles and TrackScripts name the files and scripts the instance
	// follows; their values come from the caller (SetTrackFile,
	// SetTrackScript), which reads the files and runs the scripts.
	TrackFiles   []TrackFile
	TrackScripts []TrackScript
	// Notify is a command run on every state change, without a shell, with
	// the instance name, new state and priority appended to its arguments.
	// NotifyTimeout (>0) bounds each run, and the wait for queued ones at
	// shutdown (at most 2s of it).
	Notify        []string
	NotifyTimeout time.Duration
}

// Status is a snapshot of an instance.
type Status struct {
	Name     string
	State    State
	Priority uint8
	Master   netip.Addr
	Since    time.Time
	Cause    string
	// AdvertsSent and AdvertsReceived count adverts sent and valid adverts
	// received; Dropped counts received packets refused, by reason (ttl,
	// checksum, version, length, vrid, auth, interval, own, peer,
	// vip_mismatch, ...).
	AdvertsSent     uint64
	AdvertsReceived uint64
	Dropped         map[string]uint64
	Transitions     uint64
	// GARPSuppressed counts the GARP bursts not sent in answer to
	// lower-priority adverts because one had gone out less than a second
	// before (each such advert is still answered with an advert).
	GARPSuppressed uint64
	// SendErrors counts adverts the socket refused to send; LastSendError
	// is the latest reason, empty once an advert goes out again.
	SendErrors    uint64
	LastSendError string
}

// ErrInterfaceReplaced ends Run when the instance's interface was deleted
// and made again (a new ifindex): its sockets and addresses belong to the
// old one. Run again at once: a new run opens the new interface.
var ErrInterfaceReplaced = errors.New("interface deleted and re-created")

// Instance runs one virtual router.
type Instance struct {
	cfg      Config
	log      *slog.Logger
	open     func() (*kernel, error)
	startCmd func(*exec.Cmd) error // of notify commands
	// recordVIPs hears of the VIPs the instance adds and removes; nil
	// when no one keeps a record.
	recordVIPs func(iface string, vips []netip.Prefix, held bool)
	// onState hears of every transition; nil when no one listens.
	onState func(State)
	// onOwnFault hears of every change of Machine.OwnFault; nil when no
	// one listens.
	onOwnFault func(cause string)

	// updates carries a reload's in-place changes to a running driver;
	// only the newest matters.
	updates chan Config
	// trackKick tells a running driver that tracked values changed; the
	// values themselves are in files and scripts (under mu), so a burst of
	// changes is one wake-up and the newest value always wins.
	trackKick chan struct{}

	mu          sync.Mutex
	status      Status
	files       map[string]int64
	scripts     map[string]bool
	groupFault  string
	groupBackup string // a pending GroupBackup's cause, "" none
}

// Option sets how an Instance runs where that is not configuration.
type Option func(*Instance)

// WithCommandStarter starts notify commands with start instead of
// exec.Cmd.Start: the director passes one that starts them under normal
// scheduling, so a busy script does not compete with its real-time VRRP.
func WithCommandStarter(start func(*exec.Cmd) error) Option {
	return func(in *Instance) { in.startCmd = start }
}

// WithVIPRecorder calls record with held true before the instance adds its
// VIPs to iface, and with held false once it has removed them all (not
// after a removal failed: the VIP may still be there). vips leaves out the
// address adverts are sent from, which is the host's own. The director
// keeps this record on disk, so that VIPs a killed process never released
// can be removed by its next start or by a cleanup after it.
func WithVIPRecorder(record func(iface string, vips []netip.Prefix, held bool)) Option {
	return func(in *Instance) { in.recordVIPs = record }
}

// WithStateListener calls f with the new state at every transition (the
// shutdown's to Init included), from the instance's goroutine: f must not
// block. The director starts and stops the IPVS sync master with it.
func WithStateListener(f func(State)) Option {
	return func(in *Instance) { in.onState = f }
}

// WithOwnFaultListener calls f with Machine.OwnFault each time it changes
// ("" once the instance need not be in FAULT by its own link and tracking),
// from the instance's goroutine: f must not block. The director holds the
// other members of a sync group down with it (SetGroupFault).
func WithOwnFaultListener(f func(cause string)) Option {
	return func(in *Instance) { in.onOwnFault = f }
}

// New checks cfg and returns an instance ready to Run.
func New(cfg Config, log *slog.Logger, opts ...Option) (*Instance, error) {
	if log == nil {
		log = slog.Default()
	}
	if err := cfg.Validate(); err != nil {
		return nil, fmt.Errorf("vrrp instance %q: %w", cfg.Name, err)
	}
	in := &Instance{cfg: cfg, log: log.With("instance", cfg.Name), startCmd: (*exec.Cmd).Start}
	for _, o := range opts {
		o(in)
	}
	in.updates = make(chan Config, 1)
	in.trackKick = make(chan struct{}, 1)
	in.files, in.scripts = map[string]int64{}, map[string]bool{}
	in.open = func() (*kernel, error) { return openKernel(&in.cfg, in.log) }
	in.status = Status{Name: cfg.Name, State: Init, Priority: cfg.Priority, Dropped: map[string]uint64{}}
	return in, nil
}

// Validate says why the instance cannot run with c (what an advert or the
// kernel cannot carry), nil if it can. conf reports the same on a reload's
// -t, so a valid config never makes New fail.
func (c *Config) Validate() error {
	switch {
	case c.Interface == "":
		return errors.New("no interface")
	case c.VRID == 0:
		return errors.New("virtual_router_id must be 1..255")
	case c.Priority == 0:
		return errors.New("priority must be 1..255")
	case c.Version != 2 && c.Version != 3:
		return fmt.Errorf("version %d: must be 2 or 3", c.Version)
	case len(c.VIPs) == 0:
		return errors.New("no virtual_ipaddress")
	case len(c.VIPs) > MaxVIPs:
		return fmt.Errorf("more than %d virtual addresses", MaxVIPs)
	case len(c.AuthPass) > MaxAuthPass:
		return fmt.Errorf("auth_pass longer than %d bytes", MaxAuthPass)
	case c.AuthPass != "" && c.Version != 2:
		return errors.New("auth_pass needs version 2 (VRRPv3 has no authentication)")
	case c.GARPRepeat < 1:
		return errors.New("garp_master_repeat must be at least 1")
	case c.NotifyTimeout <= 0:
		return errors.New("notify timeout must be positive")
	}
	if err := CheckAdvertInterval(c.Version, c.AdvertInterval); err != nil {
		return fmt.Errorf("advert_interval %w", err)
	}
	// One instance is one address family, its first VIP's: an advert
	// carries addresses of one family, in packets of that family.
	fam := Family(c.VIPs[0].Addr())
	if fam == "IPv6" && c.Version != 3 {
		return fmt.Errorf("virtual address %s is IPv6: only VRRPv3 carries IPv6 (set version = 3)", c.VIPs[0])
	}
	for _, v := range c.VIPs {
		if Family(v.Addr()) == "invalid" {
			return fmt.Errorf("virtual address %s is neither IPv4 nor IPv6", v)
		}
		if Family(v.Addr()) != fam {
			return fmt.Errorf("virtual address %s is not %s like %s (one instance is one address family)", v, fam, c.VIPs[0])
		}
	}
	if c.UnicastSrc.IsValid() && Family(c.UnicastSrc) != fam {
		return fmt.Errorf("unicast_src_ip %s is not %s like the virtual addresses", c.UnicastSrc, fam)
	}
	for _, p := range c.UnicastPeers {
		if Family(p) != fam {
			return fmt.Errorf("unicast peer %s is not %s like the virtual addresses", p, fam)
		}
	}
	return nil
}

// Family names the address family of ip: "IPv4" or "IPv6" (an IPv4-mapped
// IPv6 address is neither, and no VRRP address).
func Family(ip netip.Addr) string {
	switch {
	case ip.Is4():
		return "IPv4"
	case ip.Is6() && !ip.Is4In6():
		return "IPv6"
	}
	return "invalid"
}

// MaxVIPs is the most addresses an advert carries: its count is one byte.
const MaxVIPs = 255

// MaxAuthPass is the longest VRRPv2 simple password: its 8-byte field.
const MaxAuthPass = len(Advert{}.AuthData)

// CheckAdvertInterval says why d cannot be the advert interval of a VRRP
// version (2 or 3) router, nil if it can: v3 carries centiseconds in 12
// bits, v2 whole seconds in 8.
func CheckAdvertInterval(version int, d time.Duration) error {
	const cs = 10 * time.Millisecond
	switch version {
	case 3:
		if d < cs || d > 4095*cs {
			return fmt.Errorf("%s is outside 10ms-40.95s (VRRPv3)", d)
		}
		if d%cs != 0 {
			return fmt.Errorf("%s is not a multiple of 10ms (VRRPv3 counts in centiseconds)", d)
		}
	case 2:
		if d < time.Second || d > 255*time.Second || d%time.Second != 0 {
			return fmt.Errorf("%s is not a whole number of seconds from 1s to 255s (VRRPv2)", d)
		}
	default:
		return fmt.Errorf("version %d: must be 2 or 3", version)
	}
	return nil
}

// InPlace reports whether an instance running with old can take new
// without a restart (Update): only the notify command, the GARP settings
// and the tracked interfaces differ. Anything else changes what the
// instance is on the wire and needs a new one.
func InPlace(old, new Config) bool {
	old.Notify, old.NotifyTimeout = new.Notify, new.NotifyTimeout
	old.GARPRepeat, old.GARPDelay, old.GARPRefresh, old.GARPInterval = new.GARPRepeat, new.GARPDelay, new.GARPRefresh, new.GARPInterval
	old.Track, old.TrackFiles, old.TrackScripts = new.Track, new.TrackFiles, new.TrackScripts
	return reflect.DeepEqual(old, new)
}

// Update hands a running instance the config of a reload that InPlace
// allows; its loop applies it between two events, without leaving its
// state. An instance not running takes it on its next Run.
func (in *Instance) Update(cfg Config) error {
	if err := cfg.Validate(); err != nil {
		return fmt.Errorf("vrrp instance %q: %w", cfg.Name, err)
	}
	select {
	case <-in.updates: // a newer one replaces it
	default:
	}
	in.updates <- cfg
	return nil
}

// SetTrackFile hands the instance the number now in the tracked file name.
// It never blocks: the instance's loop takes the newest value between two
// events. A value set before Run counts from the start.
func (in *Instance) SetTrackFile(name string, value int64) {
	in.mu.Lock()
	in.files[name] = value
	in.mu.Unlock()
	in.kickTrack()
}

// SetTrackScript hands the instance the state of the tracked script name
// (after its rise and fall counts), like SetTrackFile.
func (in *Instance) SetTrackScript(name string, ok bool) {
	in.mu.Lock()
	in.scripts[name] = ok
	in.mu.Unlock()
	in.kickTrack()
}

// SetGroupFault holds the instance in FAULT with cause as the reason while
// another member of its sync group is in FAULT; "" releases it. Like
// SetTrackFile it never blocks.
func (in *Instance) SetGroupFault(cause string) {
	in.mu.Lock()
	in.groupFault = cause
	in.mu.Unlock()
	in.kickTrack()
}

// StepDown makes a MASTER instance BACKUP (with a priority-0 advert) because
// another member of its sync group went from MASTER to BACKUP; an instance
// in another state ignores it. It never blocks.
func (in *Instance) StepDown(cause string) {
	in.mu.Lock()
	in.groupBackup = cause
	in.mu.Unlock()
	in.kickTrack()
}

func (in *Instance) kickTrack() {
	select {
	case in.trackKick <- struct{}{}:
	default: // one is pending: it reads the newest values
	}
}

// trackEvents returns the tracked values as events, in a stable order.
func (in *Instance) trackEvents() []Event {
	in.mu.Lock()
	defer in.mu.Unlock()
	var evs []Event
	for _, n := range slices.Sorted(maps.Keys(in.files)) {
		evs = append(evs, TrackFileValue{Name: n, Value: in.files[n]})
	}
	for _, n := range slices.Sorted(maps.Keys(in.scripts)) {
		evs = append(evs, TrackScriptResult{Name: n, OK: in.scripts[n]})
	}
	evs = append(evs, GroupFault{Cause: in.groupFault})
	if in.groupBackup != "" {
		evs = append(evs, GroupBackup{Cause: in.groupBackup})
		in.groupBackup = ""
	}
	return evs
}

// Status returns a snapshot of the instance.
func (in *Instance) Status() Status {
	in.mu.Lock()
	defer in.mu.Unlock()
	s := in.status
	s.Dropped = maps.Clone(in.status.Dropped)
	return s
}

func (in *Instance) count(f func(s *Status)) {
	in.mu.Lock()
	f(&in.status)
	in.mu.Unlock()
}
