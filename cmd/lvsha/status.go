package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"strconv"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/lvsha/lvsha/conf"
	"github.com/lvsha/lvsha/internal/director/control"
)

func runStatus(args []string, stdout, stderr io.Writer) int {
	fs := newFlagSet("lvsha status")
	var asJSON bool
	socket := conf.DefaultControlSocket
	fs.BoolVar(&asJSON, "json", false, "")
	fs.StringVar(&socket, "S", socket, "")
	fs.StringVar(&socket, "socket", socket, "")
	if err := fs.Parse(args); err != nil {
		return usageErr(stderr, err.Error())
	}
	if fs.NArg() > 0 {
		return usageErr(stderr, fmt.Sprintf("status: unexpected argument %q", fs.Arg(0)))
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	st, err := control.QueryStatus(ctx, socket)
	if err != nil {
		fmt.Fprintf(stderr, "lvsha: %v\n", err)
		var nr *control.ErrNotRunning
		if errors.As(err, &nr) {
			return 3 // like systemctl status: not running
		}
		return exitFail
	}
	if asJSON {
		enc := json.NewEncoder(stdout)
		enc.SetIndent("", "  ")
		if err := enc.Encode(st); err != nil {
			return exitFail
		}
		return exitOK
	}
	printStatus(stdout, st)
	return exitOK
}

func printStatus(w io.Writer, st *control.Status) {
	fmt.Fprintf(w, "lvsha %s, config %s, up since %s\n", st.Version, st.Config, st.Started.Format(time.RFC3339))
	if st.HealthError != "" {
		fmt.Fprintf(w, "health checks: %s\n", st.HealthError)
	}
	if c := st.Checker; c != nil && c.Restarts > 0 {
		fmt.Fprintf(w, "health checker process restarted %s (now pid %d)\n", plural(int(c.Restarts), "time"), c.Pid)
	}
	if st.IPVSError != "" {
		fmt.Fprintf(w, "IPVS: %s\n", st.IPVSError)
	}
	if len(st.VRRP) > 0 {
		fmt.Fprintln(w, "\nVRRP:")
		tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
		fmt.Fprintln(tw, "  INSTANCE\tIF\tVRID\tSTATE\tPRIO\tMASTER\tSINCE\tCAUSE")
		for _, v := range st.VRRP {
			fmt.Fprintf(tw, "  %s\t%s\t%d\t%s\t%d\t%s\t%s\t%s\n", v.Name, v.Interface, v.VRID, v.State, v.Priority,
				dash(v.Master), v.Since.Format(time.TimeOnly), dash(v.LastCause))
		}
		_ = tw.Flush()
		for _, v := range st.VRRP {
			if v.LastSendError != "" {
				fmt.Fprintf(w, "  %s: adverts not sent (%d so far): %s\n", v.Name, v.SendErrors, v.LastSendError)
			}
		}
	}
	if len(st.SyncGroups) > 0 {
		fmt.Fprintln(w, "\nSync groups:")
		tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
		fmt.Fprintln(tw, "  GROUP\tSTATE\tINSTANCES")
		for _, g := range st.SyncGroups {
			fmt.Fprintf(tw, "  %s\t%s\t%s\n", g.Name, dash(g.State), strings.Join(g.Instances, " "))
		}
		_ = tw.Flush()
	}
	if len(st.Tracks) > 0 {
		fmt.Fprintln(w, "\nTracked:")
		tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
		fmt.Fprintln(tw, "  KIND\tNAME\tWEIGHT\tNOW\tWHAT")
		for _, t := range st.Tracks {
			now := t.State
			if t.Kind == "file" {
				now = strconv.FormatInt(t.Value, 10)
			}
			fmt.Fprintf(tw, "  %s\t%s\t%d\t%s\t%s\n", t.Kind, t.Name, t.Weight, now, t.What)
		}
		_ = tw.Flush()
	}
	if len(st.ARPLeaks) > 0 {
		fmt.Fprintln(w, "\nARP leaks (hosts answering ARP for a VIP this master holds: set arp_ignore=1, arp_announce=2 there, or run lvsha realserver up;")
		fmt.Fprintln(w, "for an IPv6 VIP, put it on lo instead of the LAN interface):")
		for _, l := range st.ARPLeaks {
			fmt.Fprintf(w, "  %s answered by %s (%s) %s\n", l.VIP, l.MAC, dash(l.IP), strings.Join(l.RealServers, ", "))
		}
	}
	if sy := st.Sync; sy != nil {
		entries := "unknown"
		if sy.ConnEntries >= 0 {
			entries = strconv.Itoa(sy.ConnEntries)
		}
		follows := "master follows " + sy.Instance
		if sy.Instance == "" {
			follows = "master always on: active-active"
		}
		fmt.Fprintf(w, "\nConnection sync (%s), %s connection entries:\n", follows, entries)
		if sy.Error != "" {
			fmt.Fprintf(w, "  error: %s\n", sy.Error)
		}
		if len(sy.Daemons) == 0 {
			fmt.Fprintln(w, "  no sync daemon running")
		}
		tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
		if len(sy.Daemons) > 0 {
			fmt.Fprintln(tw, "  DAEMON\tIF\tSYNCID\tGROUP\tPORT\tTTL\tMAXLEN")
		}
		for _, d := range sy.Daemons {
			fmt.Fprintf(tw, "  %s\t%s\t%d\t%s\t%d\t%d\t%d\n", d.State, d.Interface, d.SyncID, d.Group, d.Port, d.TTL, d.MaxLen)
		}
		_ = tw.Flush()
	}
	if b := st.BGP; b != nil {
		printBGP(w, b)
	}
	if len(st.Services) > 0 {
		fmt.Fprintln(w, "\nIPVS:")
		tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
		fmt.Fprintln(tw, "  Prot LocalAddress:Port Scheduler\tForward\tWeight(conf/kernel)\tActiveConn\tInActConn\tHealth\tLast check\tLast error")
		for _, s := range st.Services {
			kern := ""
			if !s.InKernel {
				kern = "  (missing in kernel)"
			}
			// Why the kernel refused the service goes under "Last error",
			// as the untabbed end of the line, so it widens no column.
			svcErr := ""
			if s.Error != "" {
				svcErr = "kernel refused it: " + s.Error
			}
			fmt.Fprintf(tw, "  %s %s%s\t\t\t\t\t\t\t%s\n", s.Key, s.Scheduler, kern, svcErr)
			for _, r := range s.Reals {
				kw := "-"
				if r.KernelWeight >= 0 {
					kw = strconv.Itoa(r.KernelWeight)
				}
				lastErr := r.LastError
				if lastErr == r.LastResult {
					lastErr = "" // already shown as the last check's result
				}
				if r.FailedBy != "" {
					lastErr = r.FailedBy // why it is down though its check passes
				}
				fmt.Fprintf(tw, "    -> %s\t%s\t%d/%s\t%d\t%d\t%s\t%s\t%s\n", r.Address, forwardName(s.Forwarding), r.Weight, kw,
					r.ActiveConns, r.InactiveConns, r.Health, dash(r.LastResult), dash(lastErr))
			}
		}
		_ = tw.Flush()
	}
}

// forwardName spells the forwarding method as ipvsadm -ln does.
func forwardName(f string) string {
	switch f {
	case "dr":
		return "Route"
	case "nat":
		return "Masq"
	case "tun":
		return "Tunnel"
	}
	return f
}

func dash(s string) string {
	if s == "" {
		return "-"
	}
	return s
}

func printBGP(w io.Writer, b *control.BGPStatus) {
	fmt.Fprintf(w, "\nBGP (AS %d, router id %s):\n", b.ASN, b.RouterID)
	if b.Error != "" {
		fmt.Fprintf(w, "  error: %s\n", b.Error)
	}
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "  NEIGHBOR\tASN\tSTATE\tSINCE\tHOLD")
	for _, n := range b.Neighbors {
		since, hold := "-", "-"
		if !n.Since.IsZero() {
			since = n.Since.Format(time.TimeOnly)
		}
		if n.HoldTime > 0 {
			hold = fmt.Sprintf("%gs", n.HoldTime)
		}
		fmt.Fprintf(tw, "  %s\t%d\t%s\t%s\t%s\n", n.Address, n.ASN, n.State, since, hold)
	}
	_ = tw.Flush()
	tw = tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "  PREFIX\tANNOUNCED\tWHY NOT")
	for _, v := range b.VIPs {
		ann := "no"
		if v.Announced {
			ann = "yes"
		}
		fmt.Fprintf(tw, "  %s\t%s\t%s\n", v.Prefix, ann, dash(v.Reason))
	}
	_ = tw.Flush()
	if l := b.LastWithdraw; l != nil {
		fmt.Fprintf(w, "  last withdrawal (%d so far): %s at %s: %s\n", b.Withdrawals, l.Prefix, l.At.Format(time.TimeOnly), l.Reason)
	}
}
