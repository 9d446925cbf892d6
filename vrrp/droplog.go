package vrrp

import "time"

// dropWarnEvery is how often each drop reason may be logged as a warning. A
// stream of bad packets (a misconfigured or hostile neighbour) would flood
// the log at one line per packet; one warning a minute per reason, saying
// how many went unlogged since the previous one, keeps it visible.
const dropWarnEvery = time.Minute

// dropLog decides which drops of received packets are worth a warning.
type dropLog struct {
	warned map[string]*dropWarning
}

// dropWarning is the last warning of one reason.
type dropWarning struct {
	at    time.Time
	since uint64 // drops of the reason not warned about since at
}

// note records a drop for reason at now. It says whether to warn: for the
// first drop of the reason, and again once dropWarnEvery has passed since
// the last warning; missed is then the number of drops of that reason not
// warned about in between.
func (l *dropLog) note(now time.Time, reason string) (warn bool, missed uint64) {
	if l.warned == nil {
		l.warned = map[string]*dropWarning{}
	}
	w := l.warned[reason]
	if w == nil {
		l.warned[reason] = &dropWarning{at: now}
		return true, 0
	}
	if now.Sub(w.at) < dropWarnEvery {
		w.since++
		return false, 0
	}
	missed = w.since
	w.at, w.since = now, 0
	return true, missed
}
