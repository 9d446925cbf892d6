// Package vrrp implements the Virtual Router Redundancy Protocol for IPv4
// and IPv6 (VRRPv3, RFC 5798 / RFC 9568, and VRRPv2, RFC 3768, IPv4 only,
// for old peers such as keepalived configured with version 2). One
// instance is one address family, that of its VIPs.
//
// It has three layers:
//
//   - advert.go: the advertisement codec (Marshal/Unmarshal with sentinel
//     errors). Both VRRPv3 IPv4 checksum forms are accepted; the one sent is
//     chosen with ChecksumMode (default: keepalived's, over a pseudo-header).
//     IPv6 adverts have one form, over the IPv6 pseudo-header.
//   - events.go, machine.go, receive.go: Machine, the pure state machine
//     (INIT, BACKUP, MASTER, FAULT). Step takes an Event and the current time
//     and returns Actions; Receive takes a packet as read from the socket,
//     applies the receive checks (TTL, checksum, VRID, version, peer,
//     authentication, interval, and keepalived's check that the address
//     list is ours) and acts on the advert or says why it was dropped. It has no
//     sockets, goroutines or clock, so every RFC rule is a table test or a
//     transcript (testdata/*.txt).
//   - instance.go, driver.go, droplog.go, kernel.go, notify.go: Instance and
//     its driver.
//     The driver turns socket reads, timers and netlink link events into
//     inputs of the machine, carries out the actions (adverts on a raw IP
//     socket, VIPs with netlink, gratuitous ARPs with mdlayher/arp or for
//     IPv6 unsolicited neighbour advertisements with mdlayher/ndp, notify
//     commands on their own goroutine), and reaches the kernel only through
//     small interfaces that the unit tests fake under testing/synctest.
//
// Beyond the RFC, four choices keep clients on the right node:
//
//   - A master that yields to a higher priority sends one last advert, so
//     the winner learns there were two masters and re-announces the VIPs.
//   - A master that hears a lower priority answers with an advert and a
//     gratuitous ARP burst (keepalived does too), plus a second burst after
//     the kernel's ARP locktime, which may have ignored the first one; at
//     most one such burst a second, so forged adverts cannot make it flood.
//   - A master that a tracked interface puts in FAULT sends priority 0 while
//     its own link is up (keepalived does too), so the backup need not wait
//     for Master_Down_Interval.
//   - When the master-down timer fires while an advert waits unread in the
//     socket (a busy host), the advert is read first.
//
// The package sets no process settings: the daemon may run under SCHED_RR
// for hosts whose CPUs are busy, but that is chosen and applied by the
// program (lvsha's internal/process), not here.
package vrrp
