package healthcheck

// outbox holds the transitions not yet delivered to the reader of
// Manager.Transitions, part of the pure schedule. There is no channel
// buffer: at most one transition per target is pending, and they go out in
// order of occurrence while the reader keeps up. If the reader is slow, a
// target that changes again before its pending transition was read has the
// pending one replaced (and dropped altogether when the state is back to
// what the reader last saw), so a slow reader never stalls checking and
// always converges to the current state.
type outbox struct {
	pending map[string]*pendingTransition
	order   []string        // IDs with a pending transition, oldest first
	seen    map[string]bool // the state the reader last received (or the initial one)
}

type pendingTransition struct {
	tr        Transition
	cancelled bool // net no change since the reader last saw this target
	queued    bool // in order
}

func newOutbox() outbox {
	return outbox{pending: make(map[string]*pendingTransition), seen: make(map[string]bool)}
}

// add records a new target's starting state, which needs no transition.
func (o *outbox) add(id string, up bool) { o.seen[id] = up }

// remove drops a removed target's pending transition. A replaced target
// (same ID, new check) keeps what the reader saw, for its "check changed".
func (o *outbox) remove(id string, replaced bool) {
	if p := o.pending[id]; p != nil {
		p.cancelled = true
	}
	if !replaced {
		delete(o.seen, id)
	}
}

// queue makes tr the target's pending transition.
func (o *outbox) queue(tr Transition) {
	p := o.pending[tr.ID]
	if p == nil {
		p = &pendingTransition{}
		o.pending[tr.ID] = p
	}
	p.tr = tr
	p.cancelled = tr.Up == o.seen[tr.ID]
	if !p.queued && !p.cancelled {
		p.queued = true
		o.order = append(o.order, tr.ID)
	}
}

// next returns the oldest pending transition, if any.
func (o *outbox) next() (Transition, bool) {
	for len(o.order) > 0 {
		id := o.order[0]
		p := o.pending[id]
		if p != nil && !p.cancelled {
			return p.tr, true
		}
		o.order = o.order[1:]
		if p != nil {
			delete(o.pending, id)
		}
	}
	o.order = nil
	return Transition{}, false
}

// delivered records that the reader received tr, the one next returned.
func (o *outbox) delivered(tr Transition) {
	delete(o.pending, tr.ID)
	o.order = o.order[1:]
	if _, ok := o.seen[tr.ID]; ok {
		o.seen[tr.ID] = tr.Up
	}
}
