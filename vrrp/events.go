package vrrp

import (
	"fmt"
	"time"
)

// State is the state of a virtual router instance.
type State int

const (
	Init State = iota
	Backup
	Master
	Fault
)

func (s State) String() string {
	switch s {
	case Init:
		return "INIT"
	case Backup:
		return "BACKUP"
	case Master:
		return "MASTER"
	case Fault:
		return "FAULT"
	}
	return fmt.Sprintf("State(%d)", int(s))
}

// TimerKind names one of the machine's timers. The driver keeps at most one
// armed timer of each kind: ArmTimer replaces a pending one.
type TimerKind int

const (
	TimerAdvert      TimerKind = iota // master: send the next advert
	TimerMasterDown                   // backup: the master is presumed dead
	TimerGARPDelay                    // master: second GARP burst after takeover
	TimerGARPRefresh                  // master: periodic GARP burst
	TimerGARPHeal                     // master: GARP burst after a split brain healed
	numTimers
)

func (k TimerKind) String() string {
	switch k {
	case TimerAdvert:
		return "advert"
	case TimerMasterDown:
		return "master-down"
	case TimerGARPDelay:
		return "garp-delay"
	case TimerGARPRefresh:
		return "garp-refresh"
	case TimerGARPHeal:
		return "garp-heal"
	}
	return fmt.Sprintf("TimerKind(%d)", int(k))
}

// Event is an input to Machine.Step. Received adverts go to Machine.Receive,
// which checks them first.
type Event interface{ isEvent() }

// Start starts the machine. LinkUp is the state of the instance's interface.
type Start struct{ LinkUp bool }

// TimerFired reports that a timer armed with ArmTimer ran out.
type TimerFired struct{ Timer TimerKind }

// LinkDown and LinkUp report the instance's own interface.
type (
	LinkDown struct{}
	LinkUp   struct{}
)

// TrackChanged reports that a tracked interface went up or down; it changes
// the priority by the interface's weight, or faults the instance when the
// weight is 0.
type TrackChanged struct {
	Name string
	Up   bool
}

// TrackFileValue reports the number now in a tracked file (0 for a missing
// file or one without a number).
type TrackFileValue struct {
	Name  string
	Value int64
}

// TrackScriptResult reports a tracked script's state after its rise and
// fall counts: OK is true once it succeeded rise times in a row, false once
// it failed fall times in a row.
type TrackScriptResult struct {
	Name string
	OK   bool
}

// GroupFault holds the instance in FAULT, with Cause as the reason, while
// another member of its sync group is in FAULT; an empty Cause releases it.
type GroupFault struct{ Cause string }

// GroupBackup tells a MASTER that another member of its sync group went
// from MASTER to BACKUP: it follows, with a priority-0 advert so that its
// peer takes over at once. In any other state it does nothing.
type GroupBackup struct{ Cause string }

// Shutdown stops the machine: a master sends priority 0 and gives up its VIPs.
type Shutdown struct{}

// Reconfigured replaces what a reload changes in place: the GARP timers and
// what is tracked. A newly tracked interface counts as up until a
// TrackChanged says otherwise; files and scripts keep the last values
// reported under their names.
type Reconfigured struct {
	GARPDelay, GARPRefresh time.Duration
	Track                  []TrackInterface
	TrackFiles             []TrackFile
	Scripts                []TrackScript
}

func (Start) isEvent()             {}
func (TimerFired) isEvent()        {}
func (LinkDown) isEvent()          {}
func (LinkUp) isEvent()            {}
func (TrackChanged) isEvent()      {}
func (TrackFileValue) isEvent()    {}
func (TrackScriptResult) isEvent() {}
func (GroupFault) isEvent()        {}
func (GroupBackup) isEvent()       {}
func (Reconfigured) isEvent()      {}
func (Shutdown) isEvent()          {}

// Action is an output of Machine.Step, to be carried out in order.
type Action interface{ isAction() }

// SendAdvert sends one advert with the given priority.
type SendAdvert struct{ Priority uint8 }

// ArmTimer (re)arms a timer to fire after D.
type ArmTimer struct {
	Timer TimerKind
	D     time.Duration
}

// StopTimer cancels a timer if it is armed.
type StopTimer struct{ Timer TimerKind }

// AddVIPs and RemoveVIPs put the virtual addresses on or off the interface.
type (
	AddVIPs    struct{}
	RemoveVIPs struct{}
)

// SendGARP sends one burst of gratuitous ARPs for every VIP (unsolicited
// neighbour advertisements for IPv6 VIPs).
type SendGARP struct{}

// Notify reports a state transition and why it happened.
type Notify struct {
	From, To State
	Priority uint8
	Cause    string
}

func (SendAdvert) isAction() {}
func (ArmTimer) isAction()   {}
func (StopTimer) isAction()  {}
func (AddVIPs) isAction()    {}
func (RemoveVIPs) isAction() {}
func (SendGARP) isAction()   {}
func (Notify) isAction()     {}
