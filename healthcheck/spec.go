// Package healthcheck probes LVS real servers (http, https, tcp, exec) on a
// schedule and turns the results into UP/DOWN transitions with rise/fall
// hysteresis. The daemon feeds it the configured real servers with
// Manager.Update and applies Manager.Transitions to IPVS weights.
package healthcheck

import (
	"errors"
	"fmt"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"time"
)

// Check types.
const (
	TypeHTTP  = "http"
	TypeHTTPS = "https"
	TypeTCP   = "tcp"
	TypeExec  = "exec"
)

// Defaults applied by Spec.WithDefaults.
const (
	DefaultMaxBody  = 64 << 10
	DefaultInterval = 5 * time.Second
	DefaultTimeout  = 3 * time.Second
	DefaultRise     = 1
	DefaultFall     = 1
)

// StatusRange is an inclusive range of HTTP status codes; a single code has
// Lo == Hi.
type StatusRange struct{ Lo, Hi int }

func (r StatusRange) String() string {
	if r.Lo == r.Hi {
		return strconv.Itoa(r.Lo)
	}
	return fmt.Sprintf("%d-%d", r.Lo, r.Hi)
}

// ParseStatusRanges parses "200,204,300-399" (spaces allowed).
func ParseStatusRanges(s string) ([]StatusRange, error) {
	var out []StatusRange
	for part := range strings.SplitSeq(s, ",") {
		part = strings.TrimSpace(part)
		if part == "" {
			continue
		}
		lo, hi, isRange := strings.Cut(part, "-")
		l, err := parseStatus(lo)
		if err != nil {
			return nil, fmt.Errorf("status %q: %w", part, err)
		}
		h := l
		if isRange {
			if h, err = parseStatus(hi); err != nil {
				return nil, fmt.Errorf("status %q: %w", part, err)
			}
			if h < l {
				return nil, fmt.Errorf("status %q: range is reversed", part)
			}
		}
		out = append(out, StatusRange{l, h})
	}
	if len(out) == 0 {
		return nil, errors.New("no status codes")
	}
	return out, nil
}

func parseStatus(s string) (int, error) {
	n, err := strconv.Atoi(strings.TrimSpace(s))
	if err != nil || n < 100 || n > 999 {
		return 0, fmt.Errorf("%q is not an HTTP status code (100-999)", s)
	}
	return n, nil
}

// Spec says how to check one real server. The zero values of most fields
// mean "default" (see WithDefaults); InitialUp cannot, so the config layer
// must set it explicitly (keepalived's default, without alpha, is UP).
type Spec struct {
	Type string // http, https, tcp, exec

	// http/https
	Path   string        // default "/"
	Method string        // GET (default) or HEAD
	Host   string        // Host header; default the target's address
	Status []StatusRange // default 200-299; a 3xx is judged here (redirects are not followed)
	// BodyRegex, if set, must match within the first MaxBody bytes of the body.
	BodyRegex *regexp.Regexp
	MaxBody   int64 // bytes of body read at most; default 64 KiB

	// https
	TLSServerName string // SNI and the name verified; default Host, else the address
	TLSSkipVerify bool
	TLSCAFile     string // PEM bundle trusted instead of the system roots

	// Port overrides the real server's port for the probe; 0 = the real
	// server's own port.
	Port uint16

	// exec: argv[0] is run without a shell, LVSHA_RS_ADDR and LVSHA_RS_PORT
	// in its environment.
	Argv []string

	Interval, Timeout time.Duration
	Rise, Fall        int
	InitialUp         bool
}

// WithDefaults returns s with its zero fields set to the defaults.
func (s Spec) WithDefaults() Spec {
	if s.Path == "" {
		s.Path = "/"
	}
	if s.Method == "" {
		s.Method = "GET"
	}
	if len(s.Status) == 0 {
		s.Status = []StatusRange{{200, 299}}
	}
	if s.MaxBody == 0 {
		s.MaxBody = DefaultMaxBody
	}
	if s.Interval == 0 {
		s.Interval = DefaultInterval
	}
	if s.Timeout == 0 {
		s.Timeout = DefaultTimeout
	}
	if s.Rise == 0 {
		s.Rise = DefaultRise
	}
	if s.Fall == 0 {
		s.Fall = DefaultFall
	}
	return s
}

// Validate reports the first thing that makes s unusable (after defaults).
func (s Spec) Validate() error {
	switch s.Type {
	case TypeHTTP, TypeHTTPS:
		if s.Method != "GET" && s.Method != "HEAD" {
			return fmt.Errorf("method %q: want GET or HEAD", s.Method)
		}
		if !strings.HasPrefix(s.Path, "/") {
			return fmt.Errorf("path %q: must start with /", s.Path)
		}
		if strings.ContainsAny(s.Path, " \r\n") || strings.ContainsAny(s.Host, " \r\n") {
			return errors.New("path and host must not contain spaces or line breaks")
		}
		if s.MaxBody < 0 {
			return fmt.Errorf("max body %d: must not be negative", s.MaxBody)
		}
		for _, r := range s.Status {
			if r.Lo < 100 || r.Hi > 999 || r.Hi < r.Lo {
				return fmt.Errorf("status range %v: invalid", r)
			}
		}
	case TypeTCP:
	case TypeExec:
		if len(s.Argv) == 0 || s.Argv[0] == "" {
			return errors.New("exec check needs a command")
		}
	default:
		return fmt.Errorf("check type %q: want http, https, tcp or exec", s.Type)
	}
	if s.Interval <= 0 || s.Timeout <= 0 {
		return errors.New("interval and timeout must be positive")
	}
	if s.Rise < 1 || s.Fall < 1 {
		return errors.New("rise and fall must be at least 1")
	}
	return nil
}

// Equal reports whether two specs describe the same check; a reload keeps the
// state of targets whose spec is Equal. Regexps compare by their source.
func (s Spec) Equal(o Spec) bool {
	re := func(r *regexp.Regexp) string {
		if r == nil {
			return "\x00nil"
		}
		return r.String()
	}
	return s.Type == o.Type && s.Path == o.Path && s.Method == o.Method && s.Host == o.Host &&
		slices.Equal(s.Status, o.Status) && re(s.BodyRegex) == re(o.BodyRegex) &&
		s.MaxBody == o.MaxBody && s.TLSServerName == o.TLSServerName &&
		s.TLSSkipVerify == o.TLSSkipVerify && s.TLSCAFile == o.TLSCAFile && s.Port == o.Port &&
		slices.Equal(s.Argv, o.Argv) && s.Interval == o.Interval && s.Timeout == o.Timeout &&
		s.Rise == o.Rise && s.Fall == o.Fall && s.InitialUp == o.InitialUp
}

func (s Spec) statusOK(code int) bool {
	for _, r := range s.Status {
		if code >= r.Lo && code <= r.Hi {
			return true
		}
	}
	return false
}

// specKey is a string equal for two specs exactly when Spec.Equal holds.
func specKey(s Spec) string {
	var b strings.Builder
	field := func(v string) { b.WriteString(strconv.Quote(v)); b.WriteByte(0) }
	field(s.Type)
	field(s.Path)
	field(s.Method)
	field(s.Host)
	for _, r := range s.Status {
		field(r.String())
	}
	field("")
	if s.BodyRegex != nil {
		field(s.BodyRegex.String())
	} else {
		b.WriteString("\x00nil")
	}
	field(strconv.FormatInt(s.MaxBody, 10))
	field(s.TLSServerName)
	field(strconv.FormatBool(s.TLSSkipVerify))
	field(s.TLSCAFile)
	field(strconv.Itoa(int(s.Port)))
	for _, a := range s.Argv {
		field(a)
	}
	field("")
	field(s.Interval.String())
	field(s.Timeout.String())
	field(strconv.Itoa(s.Rise))
	field(strconv.Itoa(s.Fall))
	field(strconv.FormatBool(s.InitialUp))
	return b.String()
}
