// Package healthcheck probes LVS real servers (http, https, tcp, exec) on a
// schedule and turns the results into UP/DOWN transitions with rise/fall
// hysteresis. Its user (lvsha's checker process) feeds it the configured
// real servers with Manager.Update and reads Manager.Transitions.
package healthcheck

import (
	"encoding/json"
	"errors"
	"fmt"
	"regexp"
	"strconv"
	"strings"
	"time"
)

// CheckType is how a real server is probed. The zero value is no type (an
// invalid Spec).
type CheckType uint8

// Check types.
const (
	TypeHTTP CheckType = iota + 1
	TypeHTTPS
	TypeTCP
	TypeExec
)

var checkTypeNames = [...]string{TypeHTTP: "http", TypeHTTPS: "https", TypeTCP: "tcp", TypeExec: "exec"}

func (t CheckType) String() string {
	if t > 0 && int(t) < len(checkTypeNames) {
		return checkTypeNames[t]
	}
	return fmt.Sprintf("CheckType(%d)", uint8(t))
}

// ParseCheckType returns the type named s (http, https, tcp, exec).
func ParseCheckType(s string) (CheckType, error) {
	for t, name := range checkTypeNames {
		if name != "" && name == s {
			return CheckType(t), nil
		}
	}
	return 0, fmt.Errorf("unknown check type %q (one of http, https, tcp, exec)", s)
}

// MarshalText writes the type's name.
func (t CheckType) MarshalText() ([]byte, error) { return []byte(t.String()), nil }

// UnmarshalText reads a type's name.
func (t *CheckType) UnmarshalText(b []byte) error {
	v, err := ParseCheckType(string(b))
	*t = v
	return err
}

// StatusRange is an inclusive range of HTTP status codes; a single code has
// Lo == Hi. Its text form is "200" or "200-299".
type StatusRange struct{ Lo, Hi int }

func (r StatusRange) String() string {
	if r.Lo == r.Hi {
		return strconv.Itoa(r.Lo)
	}
	return fmt.Sprintf("%d-%d", r.Lo, r.Hi)
}

// check is the one limit on a range: the codes HTTP defines, in order.
func (r StatusRange) check() error {
	if r.Lo < 100 || r.Hi > 599 || r.Lo > r.Hi {
		return fmt.Errorf("status range %s is outside 100-599 or reversed", r)
	}
	return nil
}

// MarshalText writes the range as "200" or "200-299".
func (r StatusRange) MarshalText() ([]byte, error) { return []byte(r.String()), nil }

// UnmarshalText reads "200" or "200-299" (spaces allowed) within 100-599.
func (r *StatusRange) UnmarshalText(b []byte) error {
	s := string(b)
	lo, hi, isRange := strings.Cut(s, "-")
	a, err1 := strconv.Atoi(strings.TrimSpace(lo))
	z := a
	var err2 error
	if isRange {
		z, err2 = strconv.Atoi(strings.TrimSpace(hi))
	}
	if err1 != nil || err2 != nil {
		return fmt.Errorf("%q is not a status code or range (write 200 or \"200-299\")", s)
	}
	r.Lo, r.Hi = a, z
	return r.check()
}

// Spec says how to check one real server. Every field is taken as it is:
// the configuration (lvsha's conf package) sets the defaults and checks its
// rules; Validate checks only what the checkers rely on.
//
// A Spec encodes itself as JSON (the daemon sends it to its checker
// process), BodyRegex as its source text; Key derives from that encoding,
// so a new field needs only its json tag.
type Spec struct {
	Type CheckType `json:"type"`

	// http/https
	Path   string        `json:"path,omitempty"`
	Method string        `json:"method,omitempty"` // GET or HEAD
	Host   string        `json:"host,omitempty"`   // Host header; "" = the target's address
	Status []StatusRange `json:"status,omitempty"` // a 3xx is judged here (redirects are not followed)
	// BodyRegex, if set, must match within the first MaxBody bytes of the body.
	BodyRegex *regexp.Regexp `json:"body_regex,omitempty"`
	MaxBody   int64          `json:"max_body,omitempty"` // bytes of body read at most

	// https
	TLSServerName string `json:"tls_server_name,omitempty"` // SNI and the name verified; "" = Host, else the address
	TLSSkipVerify bool   `json:"tls_skip_verify,omitempty"`
	TLSCAFile     string `json:"tls_ca_file,omitempty"` // PEM bundle trusted instead of the system roots

	// Port overrides the real server's port for the probe; 0 = the real
	// server's own port.
	Port uint16 `json:"port,omitempty"`

	// exec: argv[0] is run without a shell, LVSHA_RS_ADDR and LVSHA_RS_PORT
	// in its environment.
	Argv []string `json:"argv,omitempty"`

	Interval  time.Duration `json:"interval"`
	Timeout   time.Duration `json:"timeout"`
	Rise      int           `json:"rise"`
	Fall      int           `json:"fall"`
	InitialUp bool          `json:"initial_up"`
}

// Validate reports the first thing that makes s unusable by a checker or
// the scheduler. Limits and which keys go with which type are the
// configuration's rules, not checked here.
func (s *Spec) Validate() error {
	switch s.Type {
	case TypeHTTP, TypeHTTPS:
		if s.Method == "" || !strings.HasPrefix(s.Path, "/") {
			return fmt.Errorf("method %q and path %q: want both, the path starting with /", s.Method, s.Path)
		}
		// They are written into the request line and headers as they are.
		if strings.ContainsAny(s.Method+s.Path+s.Host, " \r\n") {
			return errors.New("method, path and host must not contain spaces or line breaks")
		}
		if len(s.Status) == 0 {
			return errors.New("no status codes")
		}
		for _, r := range s.Status {
			if err := r.check(); err != nil {
				return err
			}
		}
		if s.MaxBody < 0 {
			return fmt.Errorf("max body %d: must not be negative", s.MaxBody)
		}
	case TypeTCP:
	case TypeExec:
		if len(s.Argv) == 0 || s.Argv[0] == "" {
			return errors.New("exec check needs a command")
		}
	default:
		return fmt.Errorf("check type %v: want http, https, tcp or exec", s.Type)
	}
	if s.Interval <= 0 || s.Timeout <= 0 {
		return errors.New("interval and timeout must be positive")
	}
	if s.Rise < 1 || s.Fall < 1 {
		return errors.New("rise and fall must be at least 1")
	}
	return nil
}

// SpecKey is equal for two Specs exactly when they describe the same check
// (regular expressions compare by their source).
type SpecKey string

// Key returns s's key: a reload keeps the state of targets whose address
// and key are unchanged, and targets with equal keys share one checker.
func (s *Spec) Key() SpecKey {
	b, err := json.Marshal(s)
	if err != nil {
		// Nothing in a Spec can fail to encode (no channels, no floats).
		return SpecKey("\x00" + err.Error())
	}
	return SpecKey(b)
}

func (s *Spec) statusOK(code int) bool {
	for _, r := range s.Status {
		if code >= r.Lo && code <= r.Hi {
			return true
		}
	}
	return false
}
