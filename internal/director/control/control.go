// Package control is the contract of the director's control socket: the
// status document that `lvsha status --json` prints and the daemon serves
// on GET /v1/status, and the client that asks for it. The CLI imports this,
// never the daemon itself.
package control

import (
	"context"
	"encoding/json"
	"fmt"
	"net"
	"net/http"
	"time"
)

// StatusPath is where the daemon serves its Status on the control socket.
const StatusPath = "/v1/status"

// Status is what `lvsha status --json` prints: a stable document.
type Status struct {
	Version  string          `json:"version"`
	Config   string          `json:"config"`
	Started  time.Time       `json:"started"`
	VRRP     []VRRPStatus    `json:"vrrp"`
	Services []ServiceStatus `json:"services"`
	// IPVSError says why the IPVS table could not be read or programmed.
	IPVSError string `json:"ipvs_error,omitempty"`
	// HealthError says why the checker process gave no details.
	HealthError string `json:"health_error,omitempty"`
	// Checker is the health checker process; absent when there is
	// nothing to check, and so no such process.
	Checker *CheckerStatus `json:"checker,omitempty"`
	// Sync is IPVS connection synchronisation; absent when it is off.
	Sync *SyncStatus `json:"sync,omitempty"`
	// BGP is the announcement of VIPs over BGP; absent when it is off.
	BGP *BGPStatus `json:"bgp,omitempty"`
	// Tracks are the tracked files and scripts; SyncGroups the sync
	// groups. Absent when the config has none.
	Tracks     []TrackStatus     `json:"tracks,omitempty"`
	SyncGroups []SyncGroupStatus `json:"sync_groups,omitempty"`
	// ARPLeaks are hosts other than this master answering ARP for a VIP
	// it holds: real servers without ARP suppression.
	ARPLeaks []ARPLeak `json:"arp_leaks,omitempty"`
}

// BGPStatus is the BGP speaker's sessions and what it announces.
type BGPStatus struct {
	ASN      uint32 `json:"asn"`
	RouterID string `json:"router_id"`
	// Error says why the speaker is not running or cannot be asked.
	Error     string              `json:"error,omitempty"`
	Neighbors []BGPNeighborStatus `json:"neighbors"`
	// VIPs are the VIPs to announce, each with whether it is announced
	// and, if not, why.
	VIPs []BGPVIPStatus `json:"vips"`
	// LastWithdraw is the most recent withdrawal; absent if none yet.
	LastWithdraw *BGPWithdraw `json:"last_withdraw,omitempty"`
	// Withdrawals counts the withdrawals since the daemon started.
	Withdrawals int `json:"withdrawals"`
}

// BGPNeighborStatus is one BGP session.
type BGPNeighborStatus struct {
	Address string `json:"address"`
	ASN     uint32 `json:"asn"`
	// State is the session's FSM state: idle, connect, active, opensent,
	// openconfirm or established.
	State    string    `json:"state"`
	Since    time.Time `json:"since,omitzero"`
	HoldTime float64   `json:"hold_time_seconds,omitempty"`
}

// BGPVIPStatus is one VIP of [bgp] announce.
type BGPVIPStatus struct {
	Prefix    string `json:"prefix"`
	Announced bool   `json:"announced"`
	// Reason says why it is not announced.
	Reason string `json:"reason,omitempty"`
}

// BGPWithdraw is one withdrawal and its cause.
type BGPWithdraw struct {
	Prefix string    `json:"prefix"`
	Reason string    `json:"reason"`
	At     time.Time `json:"at"`
}

// TrackStatus is one tracked file or script.
type TrackStatus struct {
	Kind string `json:"kind"` // file or script
	Name string `json:"name"`
	// What is the file's path or the script's command line.
	What string `json:"what"`
	// Value is a file's number (0 when missing); State a script's:
	// succeeding, failing or unknown (not run yet).
	Value int64  `json:"value"`
	State string `json:"state,omitempty"`
	// Weight is the configured weight (0: FAULT).
	Weight int `json:"weight"`
}

// SyncGroupStatus is one sync group.
type SyncGroupStatus struct {
	Name      string   `json:"name"`
	Instances []string `json:"instances"`
	// State is FAULT if a member is, MASTER if all are, BACKUP otherwise;
	// empty until every member has started.
	State string `json:"state"`
}

// ARPLeak is a host that answered the master's ARP request for a VIP.
type ARPLeak struct {
	VIP string `json:"vip"`
	MAC string `json:"mac"`
	// IP is the host's address by the master's neighbour table ("" if it
	// has no entry for the MAC); RealServers are the configured real
	// servers at that address.
	IP          string   `json:"ip,omitempty"`
	RealServers []string `json:"real_servers,omitempty"`
}

// SyncStatus is the kernel's connection sync daemons and the connection
// table they fill.
type SyncStatus struct {
	// Instance is the VRRP instance the master daemon follows.
	Instance string `json:"instance,omitempty"`
	// Daemons are the daemons running, as the kernel reports them.
	Daemons []SyncDaemonStatus `json:"daemons"`
	// ConnEntries counts the IPVS connection table's entries
	// (connections and persistence templates, local and synced); -1 when
	// it could not be read.
	ConnEntries int `json:"conn_entries"`
	// Error says why the daemons are not as configured.
	Error string `json:"error,omitempty"`
}

// SyncDaemonStatus is one kernel sync daemon.
type SyncDaemonStatus struct {
	State     string `json:"state"` // master or backup
	Interface string `json:"interface"`
	SyncID    int    `json:"sync_id"`
	Group     string `json:"group"`
	Port      int    `json:"port"`
	TTL       int    `json:"ttl"`
	MaxLen    int    `json:"maxlen"`
}

// CheckerStatus is the health checker process.
type CheckerStatus struct {
	Pid      int    `json:"pid"` // 0 while it is being restarted
	Restarts uint64 `json:"restarts"`
}

// VRRPStatus is one VRRP instance.
type VRRPStatus struct {
	Name        string            `json:"name"`
	Interface   string            `json:"interface"`
	VRID        int               `json:"vrid"`
	State       string            `json:"state"`
	Priority    int               `json:"priority"`
	Master      string            `json:"master,omitempty"`
	Since       time.Time         `json:"since"`
	LastCause   string            `json:"last_cause,omitempty"`
	VIPs        []string          `json:"vips"`
	AdvertsOut  uint64            `json:"adverts_sent"`
	AdvertsIn   uint64            `json:"adverts_received"`
	Transitions uint64            `json:"transitions"`
	Dropped     map[string]uint64 `json:"dropped,omitempty"`
	// GARPSuppressed is vrrp.Status.GARPSuppressed.
	GARPSuppressed uint64 `json:"garp_suppressed"`
	// SendErrors counts adverts the socket refused; LastSendError is why
	// the latest failed, absent once one goes out again.
	SendErrors    uint64 `json:"send_errors"`
	LastSendError string `json:"last_send_error,omitempty"`
}

// ServiceStatus is one virtual service, like a block of `ipvsadm -ln`.
type ServiceStatus struct {
	Key        string       `json:"key"`
	Scheduler  string       `json:"scheduler"`
	Forwarding string       `json:"forwarding"`
	InKernel   bool         `json:"in_kernel"`
	QuorumLost bool         `json:"quorum_lost,omitempty"`
	Reals      []RealStatus `json:"reals"`
	// Error says why the kernel refused this service's last changes
	// (e.g. a scheduler it lacks); the other services are applied.
	Error string `json:"error,omitempty"`
}

// RealStatus is one real server of a service.
type RealStatus struct {
	Address        string    `json:"address"`
	Weight         int       `json:"weight"`
	KernelWeight   int       `json:"kernel_weight"`
	ActiveConns    int       `json:"active_conns"`
	InactiveConns  int       `json:"inactive_conns"`
	Health         string    `json:"health"` // up, down, unchecked
	LastError      string    `json:"last_error,omitempty"`
	Checks         uint64    `json:"checks"`
	LastResult     string    `json:"last_result,omitempty"` // "ok" or why the last check failed
	LastCheck      time.Time `json:"last_check,omitzero"`
	LastTransition time.Time `json:"last_transition,omitzero"`
	// ViaMark is the firewall mark of a via_vip check (its IPVS fwmark
	// service), 0 for a check to the real server's own address.
	ViaMark uint32 `json:"via_vip_mark,omitempty"`
	// FailedBy says why the director fails a real server whatever its
	// check says (Health is then down): an ARP leak under
	// global.arp_leak = "fail".
	FailedBy string `json:"failed_by,omitempty"`
}

// ErrNotRunning says no daemon answers on the control socket.
type ErrNotRunning struct {
	Socket string
	Err    error
}

func (e *ErrNotRunning) Error() string {
	return fmt.Sprintf("lvsha is not running (no answer on %s: %v)", e.Socket, e.Err)
}

func (e *ErrNotRunning) Unwrap() error { return e.Err }

// Client is an HTTP client whose every request goes to the control socket
// (any host in the URL: "http://lvsha/..."), for the status and Go's
// profiles under /debug/pprof/.
func Client(socket string) *http.Client {
	return &http.Client{Transport: &http.Transport{
		DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
			var d net.Dialer
			return d.DialContext(ctx, "unix", socket)
		},
	}}
}

// QueryStatus asks the daemon behind socket for its status.
func QueryStatus(ctx context.Context, socket string) (*Status, error) {
	c := Client(socket)
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, "http://lvsha"+StatusPath, nil)
	if err != nil {
		return nil, fmt.Errorf("status request: %w", err)
	}
	resp, err := c.Do(req)
	if err != nil {
		return nil, &ErrNotRunning{Socket: socket, Err: err}
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return nil, fmt.Errorf("status: daemon answered %s", resp.Status)
	}
	var st Status
	if err := json.NewDecoder(resp.Body).Decode(&st); err != nil {
		return nil, fmt.Errorf("status: decode answer: %w", err)
	}
	return &st, nil
}
