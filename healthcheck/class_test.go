package healthcheck

import (
	"io"
	"log"
	"net"
	"net/http"
	"net/http/httptest"
	"net/netip"
	"regexp"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/lvsha/lvsha/healthcheck/hctest"
)

// TestFailureClass sorts the errors of real checks against real servers
// into the fixed classes, whatever their text.
func TestFailureClass(t *testing.T) {
	silent := rawServer(t, func(c net.Conn) { io.Copy(io.Discard, c) })
	reset := rawServer(t, func(c net.Conn) {
		if _, err := readRequest(c); err == nil {
			c.(*net.TCPConn).SetLinger(0) // close with RST
		}
		c.Close()
	})
	notHTTP := rawServer(t, func(c net.Conn) {
		if _, err := readRequest(c); err == nil {
			io.WriteString(c, "220 smtp.example ESMTP\r\n")
		}
		c.Close()
	})
	tlsSrv := httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) { io.WriteString(w, "ok") }))
	tlsSrv.Config.ErrorLog = log.New(io.Discard, "", 0) // the handshake it refuses is the point
	tlsSrv.StartTLS()
	defer tlsSrv.Close()
	nope := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) { io.WriteString(w, "nope") }))
	defer nope.Close()
	unavailable := hctest.NewServer(t, hctest.Always(hctest.Unavailable))
	closed := hctest.NewServer(t, hctest.Always(hctest.Close))

	refused, none := refusedAddr(t), netip.MustParseAddrPort("127.0.0.1:1") // exec checks connect nowhere
	for _, tc := range []struct {
		name   string
		spec   Spec
		target netip.AddrPort
		want   string
	}{
		{"tcp refused", Spec{Type: TypeTCP}, refused, ClassRefused},
		{"http refused", Spec{Type: TypeHTTP}, refused, ClassRefused},
		{"no answer", Spec{Type: TypeHTTP}, silent, ClassTimeout},
		{"reset", Spec{Type: TypeHTTP}, reset, ClassReset},
		{"closed", Spec{Type: TypeHTTP}, closed.Addr, ClassReset},
		{"status 503", Spec{Type: TypeHTTP}, unavailable.Addr, ClassStatus},
		{"body", Spec{Type: TypeHTTP, BodyRegex: regexp.MustCompile("^ok")}, addrOf(t, nope.URL), ClassBody},
		{"unknown CA", Spec{Type: TypeHTTPS}, addrOf(t, tlsSrv.URL), ClassTLS},
		{"https to plain http", Spec{Type: TypeHTTPS}, addrOf(t, nope.URL), ClassTLS},
		{"not http", Spec{Type: TypeHTTP}, notHTTP, ClassOther},
		{"exit status", Spec{Type: TypeExec, Argv: []string{"/bin/sh", "-c", "echo down; exit 2"}}, none, ClassExec},
		{"no such command", Spec{Type: TypeExec, Argv: []string{"/nonexistent/check"}}, none, ClassExec},
		{"command too slow", Spec{Type: TypeExec, Argv: []string{"/bin/sleep", "10"}}, none, ClassTimeout},
	} {
		t.Run(tc.name, func(t *testing.T) {
			// Short timeouts for the cases that time out, generous ones
			// (TLS handshakes under -race) for the others.
			timeout := 10 * time.Second
			if tc.want == ClassTimeout {
				timeout = shortTimeout
			}
			err := checkWithin(t, tc.spec, tc.target, timeout)
			if err == nil {
				t.Fatal("the check passed")
			}
			if got := FailureClass(tc.spec.Type, err); got != tc.want {
				t.Errorf("class %q of %q (%v), want %q", got, Reason(err, timeout), err, tc.want)
			}
			if !slices.Contains(FailureClasses, tc.want) {
				t.Errorf("class %q not in FailureClasses", tc.want)
			}
		})
	}
}

// TestObserverGetsClass: the Manager's observer (the checker process's
// failure metric) gets the class, the snapshot keeps the text.
func TestObserverGetsClass(t *testing.T) {
	var mu sync.Mutex
	var classes []string
	m := runManager(t, WithObserver(func(id string, took time.Duration, class string) {
		mu.Lock()
		defer mu.Unlock()
		if class != "" && !slices.Contains(classes, class) {
			classes = append(classes, class)
		}
	}))
	tcp := Spec{Type: TypeTCP, Interval: reactorInterval, Timeout: testTimeout, Rise: 1, Fall: 1, InitialUp: true}
	if err := m.Update([]Target{
		{ID: "refused", Addr: refusedAddr(t), Spec: tcp},
		{ID: "503", Addr: hctest.NewServer(t, hctest.Always(hctest.Unavailable)).Addr, Spec: httpSpec(1, 1)},
	}); err != nil {
		t.Fatal(err)
	}
	nextTransition(t, m)
	nextTransition(t, m)
	snap := waitSnapshot(t, m, "refused", "503")
	if snap["refused"].LastError != "connection refused" || snap["503"].LastError != "status 503" {
		t.Errorf("last errors %q %q", snap["refused"].LastError, snap["503"].LastError)
	}
	mu.Lock()
	defer mu.Unlock()
	slices.Sort(classes)
	if !slices.Equal(classes, []string{ClassRefused, ClassStatus}) {
		t.Errorf("observed classes %q, want refused and status", classes)
	}
}
