package lvs

import (
	"errors"
	"fmt"
	"log/slog"
	"net/netip"
	"slices"
	"strings"
)

// OpKind is the kind of one change made to the kernel.
type OpKind uint8

// Kinds of change.
const (
	OpNewService OpKind = iota + 1
	OpUpdateService
	OpDelService
	OpNewDest
	OpUpdateDest
	OpDelDest
)

func (o OpKind) String() string {
	return [...]string{"?", "add-service", "update-service", "del-service", "add-dest", "update-dest", "del-dest"}[o]
}

// Op is one change made to the kernel.
type Op struct {
	Kind    OpKind
	Service Key
	Dest    netip.AddrPort // for destination ops
	Detail  string         // what changed, for logs
}

func (o Op) String() string {
	s := o.Kind.String() + " " + o.Service.String()
	if o.Dest.IsValid() {
		s += " -> " + o.Dest.String()
	}
	if o.Detail != "" {
		s += " (" + o.Detail + ")"
	}
	return s
}

// Report says what an Apply or Repair did.
type Report struct {
	// Ops are the changes made, in order.
	Ops []Op
	// Reads counts the list requests made (0 when the cache was trusted).
	Reads int
	// QuorumLost lists the services now served by their sorry server.
	QuorumLost []Key
	// Failed holds, for each service with a change the kernel refused in
	// the last attempt, the first refusal (e.g. a scheduler the kernel
	// lacks). The other services' changes were made all the same.
	Failed map[Key]error
}

func (r Report) String() string {
	var b strings.Builder
	fmt.Fprintf(&b, "%d changes, %d reads", len(r.Ops), r.Reads)
	for _, o := range r.Ops {
		b.WriteString("\n  " + o.String())
	}
	return b.String()
}

// kstate is what the reconciler believes one owned service looks like in
// the kernel.
type kstate struct {
	svc   KService
	dests map[netip.AddrPort]KDest
}

// Reconciler makes the kernel's IPVS table match the desired services. It
// keeps what it last wrote as a cache, so a reload issues only the calls
// for what changed (no reads); when a call fails, or on Repair, it re-reads
// the kernel and tries again. It is not safe for concurrent use: see Loop.
type Reconciler struct {
	k   Kernel
	log *slog.Logger
	// owned are the services this reconciler was given or created; a key
	// leaving the desired set is deleted from the kernel.
	owned   map[Key]bool
	cache   map[Key]*kstate // nil: must re-read the kernel
	desired []Service
	quorum  map[Key]bool // true while quorum is lost
	// Scratch space reused by every service of every Apply: a reload of a
	// big table should not allocate per service.
	scratchAddrs map[netip.AddrPort]bool
	scratchDests []KDest
	plan         []planned
	// statePath keeps owned across restarts (see PersistOwned).
	statePath, savedOwned string
}

// NewReconciler returns a reconciler over k. A nil log discards.
func NewReconciler(k Kernel, log *slog.Logger) *Reconciler {
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	return &Reconciler{k: k, log: log, owned: map[Key]bool{}, quorum: map[Key]bool{}, scratchAddrs: map[netip.AddrPort]bool{}}
}

// Apply makes the kernel match desired with the fewest calls: services and
// real servers that did not change are not touched. Owned services missing
// from desired are deleted. An invalid desired state changes nothing.
func (r *Reconciler) Apply(desired []Service) (Report, error) {
	seen := make(map[Key]bool, len(desired))
	for i := range desired {
		if err := desired[i].validate(r.scratchAddrs); err != nil {
			return Report{}, fmt.Errorf("lvs: %w", err)
		}
		if seen[desired[i].Key] {
			return Report{}, fmt.Errorf("lvs: service %v listed twice", desired[i].Key)
		}
		seen[desired[i].Key] = true
	}
	r.desired = slices.Clone(desired)
	var rep Report
	err := r.sync(&rep)
	if err != nil && r.cache != nil {
		// The kernel was not what we believed (someone changed it): read
		// it back and try once more. Only the services whose changes
		// failed: a change fails on its own service's state, and while
		// the kernel refuses one service, re-reading every other one on
		// each apply (each health verdict) would cost a dump per service.
		r.log.Warn("ipvs: apply failed, re-reading the kernel", "err", err)
		if len(rep.Failed) == 0 || r.reread(rep.Failed, &rep) != nil {
			r.cache = nil // read it all (a failed read is reported by sync)
		}
		err = r.sync(&rep)
	}
	return rep, err
}

// Repair re-reads the kernel and undoes any drift from the last applied
// state (services or real servers deleted or changed behind our back).
func (r *Reconciler) Repair() (Report, error) {
	r.cache = nil
	var rep Report
	err := r.sync(&rep)
	return rep, err
}

// target computes what the kernel should hold for s.
// The returned slice is ds's storage, reused across services.
func target(s *Service, ds []KDest) (KService, []KDest, bool) {
	ks := KService{Key: s.Key, Scheduler: s.Scheduler, Timeout: uint32(s.Persistence.Seconds()), SchedFlags: s.SchedFlags}
	ds = ds[:0]
	if s.Sorry.IsValid() && !s.HasQuorum() {
		return ks, append(ds, KDest{Addr: s.Sorry, Weight: 1, Forwarding: s.Forwarding}), true
	}
	for _, rs := range s.Reals {
		w := rs.Weight
		if !rs.Up {
			if s.OnFailure == Remove {
				continue
			}
			w = 0
		}
		ds = append(ds, KDest{Addr: rs.Addr, Weight: w, Forwarding: s.Forwarding})
	}
	if s.Scheduler == "mh" {
		// The kernel's Maglev table depends on the order destinations
		// were added (ip_vs_mh.c walks the list): directors that add
		// them in one order, whatever the config's, pick the same real
		// server for a flow.
		slices.SortFunc(ds, func(a, b KDest) int { return a.Addr.Compare(b.Addr) })
	}
	return ks, ds, false
}

// load reads the kernel state of the services we own or want. Foreign
// services are not even listed.
func (r *Reconciler) load(rep *Report) error {
	svcs, err := r.k.Services()
	rep.Reads++
	if err != nil {
		return fmt.Errorf("lvs: list services: %w", err)
	}
	want := map[Key]bool{}
	for k := range r.owned {
		want[k] = true
	}
	for i := range r.desired {
		want[r.desired[i].Key] = true
	}
	cache := map[Key]*kstate{}
	for _, s := range svcs {
		if !want[s.Key] {
			continue
		}
		st, err := r.read(s, rep)
		if err != nil {
			return err
		}
		cache[s.Key] = st
	}
	r.cache = cache
	return nil
}

// read reads the real servers of service s.
func (r *Reconciler) read(s KService, rep *Report) (*kstate, error) {
	ds, err := r.k.Destinations(s.Key)
	rep.Reads++
	if err != nil {
		return nil, fmt.Errorf("lvs: list destinations of %v: %w", s.Key, err)
	}
	st := &kstate{svc: s, dests: make(map[netip.AddrPort]KDest, len(ds))}
	for _, d := range ds {
		st.dests[d.Addr] = d
	}
	return st, nil
}

// reread replaces what the cache holds for the services keys with the
// kernel's state.
func (r *Reconciler) reread(keys map[Key]error, rep *Report) error {
	svcs, err := r.k.Services()
	rep.Reads++
	if err != nil {
		return fmt.Errorf("lvs: list services: %w", err)
	}
	for k := range keys {
		delete(r.cache, k)
	}
	for _, s := range svcs {
		if _, ok := keys[s.Key]; !ok {
			continue
		}
		st, err := r.read(s, rep)
		if err != nil {
			return err
		}
		r.cache[s.Key] = st
	}
	return nil
}

// planned is one change to make, with its report entry.
type planned struct {
	op Op
	ch Change
}

// sync plans every change against the cache, writes them in one Write,
// then updates the cache with what succeeded.
func (r *Reconciler) sync(rep *Report) error {
	defer r.saveOwned()
	rep.Failed = nil // Apply's second attempt reports only what still fails
	if r.cache == nil {
		if err := r.load(rep); err != nil {
			return err
		}
	}
	plan := r.plan[:0]
	// Services first created or changed, then deletions: on a move from one
	// key to another the new one is ready before the old one goes.
	wantKeys := make(map[Key]bool, len(r.desired))
	for i := range r.desired {
		s := &r.desired[i]
		wantKeys[s.Key] = true
		plan = r.planService(s, rep, plan)
	}
	var gone []Key
	for k := range r.owned {
		if !wantKeys[k] {
			gone = append(gone, k)
		}
	}
	slices.SortFunc(gone, func(a, b Key) int { return strings.Compare(a.String(), b.String()) })
	for _, k := range gone {
		if _, ok := r.cache[k]; ok {
			plan = append(plan, planned{Op{Kind: OpDelService, Service: k}, Change{Kind: OpDelService, Service: KService{Key: k}}})
		}
	}
	r.plan = plan
	if len(plan) == 0 {
		return nil
	}

	changes := make([]Change, len(plan))
	for i := range plan {
		changes[i] = plan[i].ch
	}
	results := r.k.Write(changes)
	var errs []error
	for i, p := range plan {
		if err := results[i]; err != nil {
			err = fmt.Errorf("lvs: %v: %w", p.op, err)
			errs = append(errs, err)
			if _, seen := rep.Failed[p.op.Service]; !seen {
				if rep.Failed == nil {
					rep.Failed = map[Key]error{}
				}
				rep.Failed[p.op.Service] = err
			}
			continue
		}
		rep.Ops = append(rep.Ops, p.op)
		r.commit(p.ch)
	}
	for _, k := range gone {
		if _, ok := r.cache[k]; !ok {
			delete(r.owned, k)
			delete(r.quorum, k)
		}
	}
	return errors.Join(errs...)
}

// commit records a change the kernel accepted in the cache.
func (r *Reconciler) commit(c Change) {
	k := c.Service.Key
	switch c.Kind {
	case OpNewService:
		r.cache[k] = &kstate{svc: c.Service, dests: map[netip.AddrPort]KDest{}}
		return
	case OpDelService:
		delete(r.cache, k)
		return
	}
	st, ok := r.cache[k]
	if !ok {
		return
	}
	switch c.Kind {
	case OpUpdateService:
		st.svc.Scheduler, st.svc.Timeout, st.svc.SchedFlags = c.Service.Scheduler, c.Service.Timeout, c.Service.SchedFlags
	case OpNewDest, OpUpdateDest:
		st.dests[c.Dest.Addr] = c.Dest
	case OpDelDest:
		delete(st.dests, c.Dest.Addr)
	}
}

// mhReAdd returns, for an mh service that gains a destination, the first
// new one in address order (dests are sorted), or the zero AddrPort. The
// kernel's Maglev table depends on the order the destinations were added
// in; a director that starts now adds them all in address order, so the
// ones after the new one must be deleted and added again after it for
// this director to build the same table. The kernel keeps a deleted
// destination's connections and takes it back from its trash when it is
// added again; packets for it in between (one netlink batch) are dropped,
// not reset.
func mhReAdd(scheduler string, dests []KDest, cur map[netip.AddrPort]KDest) netip.AddrPort {
	if scheduler != "mh" || cur == nil {
		return netip.AddrPort{}
	}
	for i, d := range dests {
		if _, ok := cur[d.Addr]; !ok {
			if i == len(dests)-1 {
				return netip.AddrPort{} // last in order: appending is the fresh order
			}
			return d.Addr
		}
	}
	return netip.AddrPort{}
}

// planService appends the changes that make the kernel's copy of s match.
func (r *Reconciler) planService(s *Service, rep *Report, plan []planned) []planned {
	ks, dests, lost := target(s, r.scratchDests)
	r.scratchDests = dests
	if lost {
		rep.QuorumLost = append(rep.QuorumLost, s.Key)
	}
	if lost != r.quorum[s.Key] {
		if lost {
			r.log.Warn("ipvs: quorum lost, sorry server takes over", "service", s.Key.String(), "sorry", s.Sorry.String(), "quorum", s.Quorum)
		} else {
			r.log.Info("ipvs: quorum regained", "service", s.Key.String())
		}
		r.quorum[s.Key] = lost
	}
	r.owned[s.Key] = true
	var curDests map[netip.AddrPort]KDest
	cur, ok := r.cache[s.Key]
	switch {
	case !ok:
		plan = append(plan, planned{Op{Kind: OpNewService, Service: s.Key, Detail: ks.Scheduler}, Change{Kind: OpNewService, Service: ks}})
	case cur.svc.Scheduler != ks.Scheduler || cur.svc.Timeout != ks.Timeout || cur.svc.SchedFlags != ks.SchedFlags:
		detail := fmt.Sprintf("scheduler %s->%s timeout %d->%d", cur.svc.Scheduler, ks.Scheduler, cur.svc.Timeout, ks.Timeout)
		if cur.svc.SchedFlags != ks.SchedFlags {
			detail += fmt.Sprintf(" flags %#x->%#x", cur.svc.SchedFlags, ks.SchedFlags)
		}
		plan = append(plan, planned{Op{Kind: OpUpdateService, Service: s.Key, Detail: detail},
			Change{Kind: OpUpdateService, Service: ks}})
	}
	if ok {
		curDests = cur.dests
	}
	key := KService{Key: s.Key}
	readd := mhReAdd(s.Scheduler, dests, curDests)
	for _, d := range dests {
		if readd.IsValid() && d.Addr.Compare(readd) > 0 {
			if _, ok := curDests[d.Addr]; ok {
				plan = append(plan, planned{Op{Kind: OpDelDest, Service: s.Key, Dest: d.Addr, Detail: "re-added after " + readd.String() + " to keep the mh order"},
					Change{Kind: OpDelDest, Service: key, Dest: KDest{Addr: d.Addr}}})
			}
		}
	}
	keep := r.scratchAddrs
	clear(keep)
	for _, d := range dests {
		keep[d.Addr] = true
		have, ok := curDests[d.Addr]
		if ok && readd.IsValid() && d.Addr.Compare(readd) > 0 {
			ok = false // deleted above, added again in order
		}
		switch {
		case !ok:
			plan = append(plan, planned{Op{Kind: OpNewDest, Service: s.Key, Dest: d.Addr, Detail: fmt.Sprintf("weight %d %v", d.Weight, d.Forwarding)},
				Change{Kind: OpNewDest, Service: key, Dest: d}})
		case have.Weight != d.Weight || have.Forwarding != d.Forwarding:
			plan = append(plan, planned{Op{Kind: OpUpdateDest, Service: s.Key, Dest: d.Addr,
				Detail: fmt.Sprintf("weight %d->%d %v->%v", have.Weight, d.Weight, have.Forwarding, d.Forwarding)},
				Change{Kind: OpUpdateDest, Service: key, Dest: d}})
		}
	}
	var drop []netip.AddrPort
	for a := range curDests {
		if !keep[a] {
			drop = append(drop, a)
		}
	}
	slices.SortFunc(drop, func(a, b netip.AddrPort) int { return a.Compare(b) })
	for _, a := range drop {
		plan = append(plan, planned{Op{Kind: OpDelDest, Service: s.Key, Dest: a}, Change{Kind: OpDelDest, Service: key, Dest: KDest{Addr: a}}})
	}
	return plan
}
