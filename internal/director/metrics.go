package director

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"net/netip"
	"regexp"
	"strconv"
	"strings"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"

	"github.com/lvsha/lvsha/conf"
	"github.com/lvsha/lvsha/healthcheck"
	"github.com/lvsha/lvsha/internal/director/checker"
	"github.com/lvsha/lvsha/lvs"
	"github.com/lvsha/lvsha/vrrp"
)

// metrics are lvsha's Prometheus series. Counters that the parts keep
// themselves (adverts, drops, checks and their durations, kept by the
// checker process) are read at scrape time; the ones only the daemon sees
// (IPVS operations) are counted here as they happen.
type metrics struct {
	reg *prometheus.Registry

	ipvsRuns    prometheus.Counter
	ipvsOps     *prometheus.CounterVec
	ipvsErrors  prometheus.Counter
	ipvsRepairs prometheus.Counter
	reloadOK    prometheus.Gauge
}

func newMetrics(d *Daemon) *metrics {
	m := &metrics{
		reg: prometheus.NewRegistry(),
		ipvsRuns: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "lvsha_ipvs_reconcile_runs_total", Help: "IPVS reconciliations run (config, health or drift).",
		}),
		ipvsOps: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "lvsha_ipvs_operations_total", Help: "Changes made to the IPVS table, by kind.",
		}, []string{"op"}),
		ipvsErrors: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "lvsha_ipvs_errors_total", Help: "IPVS reconciliations that failed.",
		}),
		ipvsRepairs: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "lvsha_ipvs_drift_repairs_total", Help: "Changes made to repair drift of the IPVS table (someone else changed it).",
		}),
		reloadOK: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "lvsha_config_last_reload_successful", Help: "0 if the last reload was rejected (the daemon runs the config it had), else 1.",
		}),
	}
	m.reloadOK.Set(1) // the daemon started, so its config was valid
	m.reg.MustRegister(m.ipvsRuns, m.ipvsOps, m.ipvsErrors, m.ipvsRepairs, m.reloadOK,
		&statusCollector{d: d}, &checkCollector{d: d}, collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	return m
}

// descName picks a descriptor's name and variable labels out of its
// String form, the only way client_golang shows them.
var descName = regexp.MustCompile(`^Desc\{fqName: "([^"]+)", .*variableLabels: \{([^}]*)\}\}$`)

// ExportedMetrics returns every metric family a director's /metrics can
// serve, by name, with its labels (a scrape adds job and instance), as
// its registry describes them: what the packaged alert rules and
// dashboard may query.
func ExportedMetrics() (map[string][]string, error) {
	m := newMetrics(&Daemon{})
	ch := make(chan *prometheus.Desc)
	go func() {
		m.reg.Describe(ch)
		close(ch)
	}()
	out := map[string][]string{}
	var bad []string
	for d := range ch {
		sm := descName.FindStringSubmatch(d.String())
		if sm == nil {
			bad = append(bad, d.String())
			continue
		}
		labels := []string{}
		if sm[2] != "" {
			labels = strings.Split(sm[2], ",")
		}
		out[sm[1]] = labels
	}
	if len(bad) > 0 {
		return nil, fmt.Errorf("metric descriptors not understood: %s", strings.Join(bad, "; "))
	}
	return out, nil
}

// observeApply counts one reconciliation.
func (m *metrics) observeApply(rep lvs.Report, err error, repair bool) {
	if m == nil {
		return
	}
	m.ipvsRuns.Inc()
	if err != nil {
		m.ipvsErrors.Inc()
	}
	for _, op := range rep.Ops {
		m.ipvsOps.WithLabelValues(op.Kind.String()).Inc()
		if repair {
			m.ipvsRepairs.Inc()
		}
	}
}

// observeReload records whether a reload was applied.
func (m *metrics) observeReload(ok bool) {
	if m == nil {
		return
	}
	v := 0.0
	if ok {
		v = 1
	}
	m.reloadOK.Set(v)
}

// checkCollector reads the checker process's statistics at scrape time.
type checkCollector struct{ d *Daemon }

var (
	// One histogram per virtual service, not per real server: with
	// 10,000 real servers that was 150,000 series and half the daemon's
	// memory. A real server's own last check is in lvsha status.
	descCheckTime = prometheus.NewDesc("lvsha_healthcheck_duration_seconds",
		"Time a health check took, by virtual service (since the checker process started).", []string{"service"}, nil)
	descCheckFails = prometheus.NewDesc("lvsha_healthcheck_failures_total",
		"Failed health checks, by real server and failure class ("+strings.Join(healthcheck.FailureClasses, ", ")+
			"; the text is the real server's last_error in status), since the checker process started.",
		[]string{"real_server", "reason"}, nil)
	descCheckerRestarts = prometheus.NewDesc("lvsha_healthcheck_process_restarts_total",
		"Times the health checker process was restarted after it died or stopped answering.", nil, nil)
	descCheckerUp = prometheus.NewDesc("lvsha_healthcheck_process_up",
		"1 if the health checker process answered this scrape (absent when there is nothing to check).", nil, nil)
)

func (c *checkCollector) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range []*prometheus.Desc{descCheckTime, descCheckFails, descCheckerRestarts, descCheckerUp} {
		ch <- d
	}
}

func (c *checkCollector) Collect(ch chan<- prometheus.Metric) {
	hc := c.d.hc
	ch <- prometheus.MustNewConstMetric(descCheckerRestarts, prometheus.CounterValue, float64(hc.Restarts()))
	if hc.Idle() {
		return // nothing to check, so no checker process
	}
	ctx, cancel := context.WithTimeout(context.Background(), checkerAnswerTimeout)
	defer cancel()
	st, err := hc.Stats(ctx)
	if err != nil {
		ch <- prometheus.MustNewConstMetric(descCheckerUp, prometheus.GaugeValue, 0)
		return
	}
	ch <- prometheus.MustNewConstMetric(descCheckerUp, prometheus.GaugeValue, 1)
	for service, h := range st.Durations {
		buckets := make(map[float64]uint64, len(checker.Buckets))
		for i, le := range checker.Buckets {
			if i < len(h.Counts) {
				buckets[le] = h.Counts[i]
			}
		}
		ch <- prometheus.MustNewConstHistogram(descCheckTime, h.Count, h.Sum, buckets, service)
	}
	for _, f := range st.Failures {
		ch <- prometheus.MustNewConstMetric(descCheckFails, prometheus.CounterValue, float64(f.N), f.ID, f.Reason)
	}
}

var (
	descVRRPState = prometheus.NewDesc("lvsha_vrrp_state", "VRRP state of an instance: 1 for the current state.",
		[]string{"vrrp_instance", "state"}, nil)
	descVRRPSince = prometheus.NewDesc("lvsha_vrrp_state_since_timestamp_seconds",
		"When the instance entered its current state (Unix time).", []string{"vrrp_instance"}, nil)
	descVRRPInterval = prometheus.NewDesc("lvsha_vrrp_advert_interval_seconds",
		"Configured VRRP advert interval: Master_Down_Interval is 3 times it plus a skew below it.", []string{"vrrp_instance"}, nil)
	descVRRPPrio = prometheus.NewDesc("lvsha_vrrp_priority", "Current VRRP priority (after tracked interfaces, files and scripts).",
		[]string{"vrrp_instance"}, nil)
	descVRRPTrans = prometheus.NewDesc("lvsha_vrrp_transitions_total", "VRRP state transitions.",
		[]string{"vrrp_instance"}, nil)
	descAdvSent = prometheus.NewDesc("lvsha_vrrp_adverts_sent_total", "VRRP adverts sent.",
		[]string{"vrrp_instance"}, nil)
	descAdvRecv = prometheus.NewDesc("lvsha_vrrp_adverts_received_total", "Valid VRRP adverts received.",
		[]string{"vrrp_instance"}, nil)
	descDropped = prometheus.NewDesc("lvsha_vrrp_dropped_total", "Received VRRP packets dropped, by reason.",
		[]string{"vrrp_instance", "reason"}, nil)
	descGARPSuppressed = prometheus.NewDesc("lvsha_vrrp_garp_suppressed_total",
		"GARP bursts not sent in answer to lower-priority adverts (at most one a second).", []string{"vrrp_instance"}, nil)
	descSendErrors = prometheus.NewDesc("lvsha_vrrp_send_errors_total",
		"Adverts the socket refused to send.", []string{"vrrp_instance"}, nil)
	descRSUp = prometheus.NewDesc("lvsha_realserver_up", "Health of a real server: 1 up, 0 down.",
		[]string{"service", "real_server"}, nil)
	descChecks = prometheus.NewDesc("lvsha_healthcheck_checks_total", "Health checks run.",
		[]string{"real_server"}, nil)
	descWeight = prometheus.NewDesc("lvsha_ipvs_weight", "Weight of a real server in the kernel's IPVS table.",
		[]string{"service", "real_server"}, nil)
	descLiveWeight = prometheus.NewDesc("lvsha_virtual_service_live_weight",
		"Sum of the configured weights of a service's real servers that are up (or unchecked): what quorum is compared with.",
		[]string{"service"}, nil)
	descQuorum = prometheus.NewDesc("lvsha_virtual_service_quorum",
		"Configured quorum of a service: below it, its sorry server (if any) replaces the real servers.", []string{"service"}, nil)
	descSorry = prometheus.NewDesc("lvsha_virtual_service_sorry_server_active",
		"1 while the kernel sends a service's traffic to its sorry server (only for services with one).", []string{"service"}, nil)
	descIPVSFailing = prometheus.NewDesc("lvsha_ipvs_failing",
		"1 while IPVS cannot be opened, read or programmed (status shows ipvs_error), else 0.", nil, nil)
	descSyncDaemon = prometheus.NewDesc("lvsha_ipvs_sync_daemon_running",
		"A kernel connection sync daemon runs: 1 per running daemon, by state (master, backup).",
		[]string{"state", "interface", "sync_id"}, nil)
	descConnEntries = prometheus.NewDesc("lvsha_ipvs_connection_entries",
		"Entries of the IPVS connection table (connections and persistence templates, local and synced).", nil, nil)
	descTrackFile = prometheus.NewDesc("lvsha_track_file_value",
		"The number a tracked file holds (0 when missing).", []string{"track_file"}, nil)
	descTrackScript = prometheus.NewDesc("lvsha_track_script_succeeding",
		"1 while a tracked script succeeds (after rise and fall), 0 while it fails; absent before its first run.", []string{"track_script"}, nil)
	descSyncGroup = prometheus.NewDesc("lvsha_sync_group_state",
		"State of a sync group: 1 for the current state (FAULT if a member is, MASTER if all are, else BACKUP).",
		[]string{"sync_group", "state"}, nil)
	descRSFailedBy = prometheus.NewDesc("lvsha_realserver_failed_by",
		"1 while the director fails a real server whatever its check says, by reason (arp_leak: it answers ARP for a VIP, global.arp_leak = \"fail\").",
		[]string{"service", "real_server", "reason"}, nil)
	descARPLeaks = prometheus.NewDesc("lvsha_arp_leaks",
		"Hosts other than this master that answered its ARP requests (IPv6: neighbour solicitations) for a VIP it holds, two probes in a row (real servers without ARP suppression), by VIP.",
		[]string{"vip"}, nil)
	descSyncError = prometheus.NewDesc("lvsha_ipvs_sync_error",
		"1 while the sync daemons are not as configured (see lvsha status).", nil, nil)
	descBGPEstablished = prometheus.NewDesc("lvsha_bgp_neighbor_established",
		"1 while the BGP session with a neighbour is established, else 0.", []string{"neighbor"}, nil)
	descBGPAnnounced = prometheus.NewDesc("lvsha_bgp_vip_announced",
		"1 while a VIP of [bgp] is announced, else 0 (lvsha status says why).", []string{"prefix"}, nil)
	descBGPWithdrawals = prometheus.NewDesc("lvsha_bgp_withdrawals_total",
		"VIP withdrawals (failure, quorum loss, shutdown) since the daemon started.", nil, nil)
)

var vrrpStates = []string{"INIT", "BACKUP", "MASTER", "FAULT", "FAILED"}

// statusCollector turns the daemon's status into series at scrape time.
type statusCollector struct{ d *Daemon }

func (c *statusCollector) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range []*prometheus.Desc{descVRRPState, descVRRPSince, descVRRPInterval, descVRRPPrio, descVRRPTrans, descAdvSent, descAdvRecv, descDropped,
		descGARPSuppressed, descSendErrors, descRSUp, descChecks, descWeight, descLiveWeight, descQuorum, descSorry, descIPVSFailing,
		descSyncDaemon, descConnEntries, descSyncError, descBGPEstablished, descBGPAnnounced, descBGPWithdrawals,
		descTrackFile, descTrackScript, descSyncGroup, descARPLeaks, descRSFailedBy} {
		ch <- d
	}
}

func (c *statusCollector) Collect(ch chan<- prometheus.Metric) {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	st := c.d.status(ctx)
	// What status does not say comes from the config; a reload between
	// the two reads only leaves out a new instance or service once.
	cfg := c.d.config()
	interval := map[string]time.Duration{}
	for _, in := range cfg.VRRP {
		interval[in.Name] = in.Runtime.AdvertInterval
	}
	services := map[string]*conf.VirtualServer{}
	for i := range cfg.Services {
		services[cfg.Services[i].ID] = &cfg.Services[i]
	}
	failing := 0.0
	if st.IPVSError != "" {
		failing = 1
	}
	ch <- prometheus.MustNewConstMetric(descIPVSFailing, prometheus.GaugeValue, failing)
	leaks := map[string]int{}
	for _, v := range st.VRRP {
		if v.State == vrrp.Master.String() {
			for _, p := range v.VIPs {
				if pp, err := netip.ParsePrefix(p); err == nil {
					leaks[pp.Addr().String()] += 0
				}
			}
		}
	}
	for _, l := range st.ARPLeaks {
		leaks[l.VIP]++
	}
	for vip, n := range leaks {
		ch <- prometheus.MustNewConstMetric(descARPLeaks, prometheus.GaugeValue, float64(n), vip)
	}
	for _, v := range st.VRRP {
		if iv, ok := interval[v.Name]; ok {
			ch <- prometheus.MustNewConstMetric(descVRRPInterval, prometheus.GaugeValue, iv.Seconds(), v.Name)
		}
		if !v.Since.IsZero() {
			ch <- prometheus.MustNewConstMetric(descVRRPSince, prometheus.GaugeValue, float64(v.Since.UnixNano())/1e9, v.Name)
		}
		for _, s := range vrrpStates {
			val := 0.0
			if s == v.State {
				val = 1
			}
			ch <- prometheus.MustNewConstMetric(descVRRPState, prometheus.GaugeValue, val, v.Name, s)
		}
		ch <- prometheus.MustNewConstMetric(descVRRPPrio, prometheus.GaugeValue, float64(v.Priority), v.Name)
		ch <- prometheus.MustNewConstMetric(descVRRPTrans, prometheus.CounterValue, float64(v.Transitions), v.Name)
		ch <- prometheus.MustNewConstMetric(descAdvSent, prometheus.CounterValue, float64(v.AdvertsOut), v.Name)
		ch <- prometheus.MustNewConstMetric(descAdvRecv, prometheus.CounterValue, float64(v.AdvertsIn), v.Name)
		ch <- prometheus.MustNewConstMetric(descGARPSuppressed, prometheus.CounterValue, float64(v.GARPSuppressed), v.Name)
		ch <- prometheus.MustNewConstMetric(descSendErrors, prometheus.CounterValue, float64(v.SendErrors), v.Name)
		for reason, n := range v.Dropped {
			ch <- prometheus.MustNewConstMetric(descDropped, prometheus.CounterValue, float64(n), v.Name, reason)
		}
	}
	for _, t := range st.Tracks {
		switch {
		case t.Kind == "file":
			ch <- prometheus.MustNewConstMetric(descTrackFile, prometheus.GaugeValue, float64(t.Value), t.Name)
		case t.State != "unknown":
			ok := 0.0
			if t.State == "succeeding" {
				ok = 1
			}
			ch <- prometheus.MustNewConstMetric(descTrackScript, prometheus.GaugeValue, ok, t.Name)
		}
	}
	for _, g := range st.SyncGroups {
		if g.State == "" {
			continue
		}
		for _, s := range []string{"BACKUP", "MASTER", "FAULT"} {
			val := 0.0
			if s == g.State {
				val = 1
			}
			ch <- prometheus.MustNewConstMetric(descSyncGroup, prometheus.GaugeValue, val, g.Name, s)
		}
	}
	if sy := st.Sync; sy != nil {
		for _, d := range sy.Daemons {
			ch <- prometheus.MustNewConstMetric(descSyncDaemon, prometheus.GaugeValue, 1, d.State, d.Interface, strconv.Itoa(d.SyncID))
		}
		if sy.ConnEntries >= 0 {
			ch <- prometheus.MustNewConstMetric(descConnEntries, prometheus.GaugeValue, float64(sy.ConnEntries))
		}
		failing := 0.0
		if sy.Error != "" {
			failing = 1
		}
		ch <- prometheus.MustNewConstMetric(descSyncError, prometheus.GaugeValue, failing)
	}
	if b := st.BGP; b != nil {
		for _, n := range b.Neighbors {
			up := 0.0
			if n.State == "established" {
				up = 1
			}
			ch <- prometheus.MustNewConstMetric(descBGPEstablished, prometheus.GaugeValue, up, n.Address)
		}
		for _, v := range b.VIPs {
			ann := 0.0
			if v.Announced {
				ann = 1
			}
			ch <- prometheus.MustNewConstMetric(descBGPAnnounced, prometheus.GaugeValue, ann, v.Prefix)
		}
		ch <- prometheus.MustNewConstMetric(descBGPWithdrawals, prometheus.CounterValue, float64(b.Withdrawals))
	}
	for _, s := range st.Services {
		// Live weight as the reconciler counts it for quorum: a real
		// server without a verdict (unchecked) is up.
		live := 0
		for _, r := range s.Reals {
			if r.Health != "down" {
				live += r.Weight
			}
		}
		ch <- prometheus.MustNewConstMetric(descLiveWeight, prometheus.GaugeValue, float64(live), s.Key)
		if vs := services[s.Key]; vs != nil {
			ch <- prometheus.MustNewConstMetric(descQuorum, prometheus.GaugeValue, float64(vs.Quorum), s.Key)
			if vs.SorryServer != "" {
				sorry := 0.0
				if s.QuorumLost {
					sorry = 1
				}
				ch <- prometheus.MustNewConstMetric(descSorry, prometheus.GaugeValue, sorry, s.Key)
			}
		}
		for _, r := range s.Reals {
			if r.Health != "unchecked" {
				up := 0.0
				if r.Health == "up" {
					up = 1
				}
				ch <- prometheus.MustNewConstMetric(descRSUp, prometheus.GaugeValue, up, s.Key, r.Address)
				ch <- prometheus.MustNewConstMetric(descChecks, prometheus.CounterValue, float64(r.Checks), conf.RealServerID(s.Key, r.Address))
			}
			if r.FailedBy != "" {
				ch <- prometheus.MustNewConstMetric(descRSFailedBy, prometheus.GaugeValue, 1, s.Key, r.Address, "arp_leak")
			}
			if r.KernelWeight >= 0 {
				ch <- prometheus.MustNewConstMetric(descWeight, prometheus.GaugeValue, float64(r.KernelWeight), s.Key, r.Address)
			}
		}
	}
}

// metricsAddr puts a listen address without a host on loopback: metrics
// are opt-in and stay local unless an address says otherwise.
func metricsAddr(listen string) (string, error) {
	host, port, err := net.SplitHostPort(listen)
	if err != nil {
		return "", fmt.Errorf("metrics_listen %q: %w", listen, err)
	}
	if host == "" {
		host = "127.0.0.1"
	}
	return net.JoinHostPort(host, port), nil
}

// serveMetrics serves /metrics until ctx is done.
func (d *Daemon) serveMetrics(ctx context.Context, listen string) (func(), error) {
	addr, err := metricsAddr(listen)
	if err != nil {
		return nil, err
	}
	l, err := net.Listen("tcp", addr)
	if err != nil {
		return nil, fmt.Errorf("metrics: %w", err)
	}
	mux := http.NewServeMux()
	mux.Handle("GET /metrics", promhttp.HandlerFor(d.metrics.reg, promhttp.HandlerOpts{}))
	srv := &http.Server{Handler: mux, ReadHeaderTimeout: 5 * time.Second}
	go func() {
		if err := srv.Serve(l); err != nil && !errors.Is(err, http.ErrServerClosed) {
			d.log.Error("metrics listener stopped", "err", err)
		}
	}()
	d.log.Info("metrics listening", "addr", l.Addr().String())
	return func() { _ = srv.Close() }, nil
}
