package keepalived

import (
	"fmt"
	"strconv"
	"strings"
	"time"
	"unicode/utf8"
)

// section is one TOML table of the output, its keys in the order written.
type section struct {
	header  string // "[[vrrp_instance]]"; "" = the root table
	comment string // where it came from
	lines   []string
}

func (s *section) set(key, val string) { s.lines = append(s.lines, key+" = "+val) }

func (s *section) str(key, val string)               { s.set(key, tomlString(val)) }
func (s *section) num(key string, val int)           { s.set(key, strconv.Itoa(val)) }
func (s *section) flag(key string, val bool)         { s.set(key, strconv.FormatBool(val)) }
func (s *section) dur(key string, val time.Duration) { s.set(key, tomlString(val.String())) }
func (s *section) strs(key string, val []string) {
	q := make([]string, len(val))
	for i, v := range val {
		q[i] = tomlString(v)
	}
	s.set(key, "["+strings.Join(q, ", ")+"]")
}

// tomlString quotes s as a TOML basic string.
func tomlString(s string) string {
	var b strings.Builder
	b.WriteByte('"')
	for _, r := range s {
		switch r {
		case '"':
			b.WriteString(`\"`)
		case '\\':
			b.WriteString(`\\`)
		case '\n':
			b.WriteString(`\n`)
		case '\t':
			b.WriteString(`\t`)
		case '\r':
			b.WriteString(`\r`)
		case '\b':
			b.WriteString(`\b`)
		case '\f':
			b.WriteString(`\f`)
		case utf8.RuneError:
			b.WriteString(`\uFFFD`)
		default:
			if r < 0x20 || r == 0x7f {
				fmt.Fprintf(&b, `\u%04X`, r)
			} else {
				b.WriteRune(r)
			}
		}
	}
	b.WriteByte('"')
	return b.String()
}

func render(head string, secs []*section) []byte {
	var b strings.Builder
	b.WriteString(head)
	for _, s := range secs {
		if len(s.lines) == 0 && s.header == "" {
			continue
		}
		b.WriteString("\n")
		if s.comment != "" {
			b.WriteString("# " + commentText(s.comment) + "\n")
		}
		if s.header != "" {
			b.WriteString(s.header + "\n")
		}
		for _, l := range s.lines {
			b.WriteString(l + "\n")
		}
	}
	return []byte(b.String())
}

// commentText makes s fit on a TOML comment line: valid UTF-8 without
// control characters.
func commentText(s string) string {
	return strings.Map(func(r rune) rune {
		if r < 0x20 || r == 0x7f {
			return ' '
		}
		return r
	}, strings.ToValidUTF8(s, "\uFFFD"))
}
