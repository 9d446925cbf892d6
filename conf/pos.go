package conf

import (
	"strconv"
	"strings"
)

// Pos is a place in a config file, 1-based. A zero Line means unknown.
type Pos struct {
	Line, Col int
}

// posIndex maps concrete key paths ("virtual_server[1].real_server[0].weight")
// to where they stand in the file. BurntSushi/toml keeps key positions private
// and without array indices, so semantic errors need this small scanner of our
// own. It runs only on input that toml already parsed, so it can be lenient:
// it never fails, it just knows fewer positions.
type posIndex map[string]Pos

// lookup returns the position of path, or of its nearest ancestor that has one
// (an element of an inline array points at the array's key).
func (ix posIndex) lookup(path string) Pos {
	for path != "" {
		if p, ok := ix[path]; ok {
			return p
		}
		i := strings.LastIndexAny(path, ".[")
		if i < 0 {
			break
		}
		path = path[:i]
	}
	return Pos{}
}

type posScanner struct {
	src  []byte
	off  int
	line int
	bol  int // offset of the beginning of the current line
	ix   posIndex
	// counts of elements of each array of tables, by concrete path
	arrays map[string]int
	table  string // concrete path of the current table ("" = root)
}

func indexPositions(src []byte) posIndex {
	s := &posScanner{src: src, line: 1, ix: posIndex{}, arrays: map[string]int{}}
	s.run()
	return s.ix
}

func (s *posScanner) pos() Pos { return Pos{Line: s.line, Col: s.off - s.bol + 1} }

func (s *posScanner) peek() byte {
	if s.off < len(s.src) {
		return s.src[s.off]
	}
	return 0
}

func (s *posScanner) advance() {
	if s.off >= len(s.src) {
		return
	}
	if s.src[s.off] == '\n' {
		s.line++
		s.bol = s.off + 1
	}
	s.off++
}

func (s *posScanner) hasPrefix(p string) bool {
	return strings.HasPrefix(string(s.src[s.off:min(len(s.src), s.off+len(p))]), p)
}

// skipSpace skips blanks, and with nl also newlines and comments.
func (s *posScanner) skipSpace(nl bool) {
	for s.off < len(s.src) {
		c := s.peek()
		switch {
		case c == ' ' || c == '\t' || c == '\r':
			s.advance()
		case nl && c == '\n':
			s.advance()
		case nl && c == '#':
			for s.off < len(s.src) && s.peek() != '\n' {
				s.advance()
			}
		default:
			return
		}
	}
}

func (s *posScanner) skipLine() {
	for s.off < len(s.src) && s.peek() != '\n' {
		s.advance()
	}
}

func (s *posScanner) run() {
	for s.off < len(s.src) {
		s.skipSpace(true)
		if s.off >= len(s.src) {
			return
		}
		switch {
		case s.hasPrefix("[["):
			s.advance()
			s.advance()
			p := s.pos()
			keys := s.keys()
			s.table = s.resolve(keys, true)
			s.ix[s.table] = p
			s.skipLine()
		case s.peek() == '[':
			s.advance()
			p := s.pos()
			keys := s.keys()
			s.table = s.resolve(keys, false)
			if _, ok := s.ix[s.table]; !ok {
				s.ix[s.table] = p
			}
			s.skipLine()
		default:
			s.keyValue(s.table)
			s.skipLine()
		}
	}
}

// resolve turns header keys into a concrete path: every segment that names an
// array of tables refers to its last element; a [[header]] adds one.
func (s *posScanner) resolve(keys []string, isArray bool) string {
	path := ""
	for i, k := range keys {
		path = join(path, k)
		last := i == len(keys)-1
		if last && isArray {
			n := s.arrays[path]
			s.arrays[path] = n + 1
			return path + "[" + strconv.Itoa(n) + "]"
		}
		if n, ok := s.arrays[path]; ok {
			path += "[" + strconv.Itoa(n-1) + "]"
		}
	}
	return path
}

func join(a, b string) string {
	if a == "" {
		return b
	}
	return a + "." + b
}

// keys reads a dotted key (bare or quoted parts) and stops after it.
func (s *posScanner) keys() []string {
	var out []string
	for {
		s.skipSpace(false)
		var k string
		switch s.peek() {
		case '"':
			k = s.basicString()
		case '\'':
			k = s.literalString()
		default:
			start := s.off
			for s.off < len(s.src) && isBare(s.peek()) {
				s.advance()
			}
			k = string(s.src[start:s.off])
		}
		out = append(out, k)
		s.skipSpace(false)
		if s.peek() != '.' {
			return out
		}
		s.advance()
	}
}

func isBare(c byte) bool {
	return c == '_' || c == '-' || c >= '0' && c <= '9' || c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z'
}

// keyValue records "key = value" under table, descending into the value.
func (s *posScanner) keyValue(table string) {
	p := s.pos()
	keys := s.keys()
	path := table
	for _, k := range keys {
		path = join(path, k)
		if _, ok := s.ix[path]; !ok {
			s.ix[path] = p
		}
	}
	s.skipSpace(false)
	if s.peek() != '=' {
		return
	}
	s.advance()
	s.skipSpace(false)
	s.value(path)
}

func (s *posScanner) value(path string) {
	switch c := s.peek(); {
	case c == '[':
		s.advance()
		for i := 0; s.off < len(s.src); i++ {
			s.skipSpace(true)
			if s.peek() == ']' {
				s.advance()
				return
			}
			elem := path + "[" + strconv.Itoa(i) + "]"
			s.ix[elem] = s.pos()
			s.value(elem)
			s.skipSpace(true)
			if s.peek() == ',' {
				s.advance()
			}
		}
	case c == '{':
		s.advance()
		for s.off < len(s.src) {
			s.skipSpace(true)
			switch s.peek() {
			case '}':
				s.advance()
				return
			case ',':
				s.advance()
				continue
			}
			before := s.off
			s.keyValue(path)
			if s.off == before {
				s.advance() // never loop on input we do not understand
			}
		}
	case s.hasPrefix(`"""`), s.hasPrefix(`'''`):
		q := string(s.src[s.off : s.off+3])
		for range 3 {
			s.advance()
		}
		for s.off < len(s.src) && !s.hasPrefix(q) {
			if s.peek() == '\\' && q == `"""` {
				s.advance()
			}
			s.advance()
		}
		for range 3 {
			s.advance()
		}
	case c == '"':
		s.basicString()
	case c == '\'':
		s.literalString()
	default:
		for s.off < len(s.src) {
			c := s.peek()
			if c == ',' || c == ']' || c == '}' || c == '\n' || c == '#' {
				return
			}
			s.advance()
		}
	}
}

func (s *posScanner) basicString() string {
	s.advance()
	var b strings.Builder
	for s.off < len(s.src) && s.peek() != '"' && s.peek() != '\n' {
		if s.peek() == '\\' {
			s.advance()
		}
		b.WriteByte(s.peek())
		s.advance()
	}
	s.advance()
	return b.String()
}

func (s *posScanner) literalString() string {
	s.advance()
	start := s.off
	for s.off < len(s.src) && s.peek() != '\'' && s.peek() != '\n' {
		s.advance()
	}
	k := string(s.src[start:s.off])
	s.advance()
	return k
}
