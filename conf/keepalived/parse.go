// Package keepalived reads a keepalived.conf (keepalived 2.2.7's grammar) and
// translates it into lvsha's TOML configuration: `lvsha import`. Whatever has
// no lvsha equivalent is reported as a Warning with its file and line, never
// dropped silently.
package keepalived

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
)

// Node is one statement of a keepalived config: a keyword with its
// arguments, and the statements of its { } block if it has one.
type Node struct {
	Name string   // the keyword: the first word of the line
	Args []string // the other words, quotes removed
	// Raw is the line after comments, conditionals and parameters were
	// taken out: notify and misc_path re-read it with keepalived's
	// quoting and escapes.
	Raw      string
	File     string
	Line     int
	Block    bool // it had a { } block (maybe empty)
	Children []*Node
}

// Pos is where the node stands: FILE:LINE.
func (n *Node) Pos() string { return fmt.Sprintf("%s:%d", n.File, n.Line) }

// Warning is something of the input that the output does not carry over,
// or carries over differently.
type Warning struct {
	File string
	Line int
	Msg  string
}

func (w Warning) String() string {
	if w.Line == 0 {
		return fmt.Sprintf("%s: warning: %s", w.File, w.Msg)
	}
	return fmt.Sprintf("%s:%d: warning: %s", w.File, w.Line, w.Msg)
}

// Error is a config keepalived itself would not read as meant (an
// unbalanced brace, an unterminated quote, an include cycle).
type Error struct {
	File string
	Line int
	Msg  string
}

func (e *Error) Error() string {
	if e.Line == 0 {
		return fmt.Sprintf("%s: %s", e.File, e.Msg)
	}
	return fmt.Sprintf("%s:%d: %s", e.File, e.Line, e.Msg)
}

// Options tune how a config is read.
type Options struct {
	// ConfigID selects the `@ID` lines, as keepalived's -i (whose default
	// is the host name up to the first dot). Empty: no @ID line matches.
	ConfigID string
	// ReadFile reads a file; nil = os.ReadFile. Includes use it too.
	ReadFile func(string) ([]byte, error)
	// Glob expands an include pattern; nil = the file system's.
	Glob func(string) ([]string, error)
	// Stat says whether a path is a regular, non-executable file, the
	// only kind keepalived includes; nil = the file system's.
	Stat func(string) (os.FileMode, error)
}

// maxIncludeDepth stops runaway includes that are not cycles (a file that
// includes a new copy of itself, by a different path, forever).
const maxIncludeDepth = 32

// maxBraces bounds the {a,b} expressions of one include pattern.
const maxBraces = 8

// line is one logical line of the input, as keepalived's read_line hands it
// on: a brace outside quotes is a line of its own.
type line struct {
	text string
	file string
	num  int
}

type reader struct {
	opt      Options
	lines    []line
	warnings []Warning
	stack    []string          // files being read, for cycle detection
	defs     map[string]string // $NAME=value
	err      error
}

func (r *reader) warnf(file string, num int, format string, args ...any) {
	r.warnings = append(r.warnings, Warning{File: file, Line: num, Msg: fmt.Sprintf(format, args...)})
}

func (r *reader) fail(file string, num int, format string, args ...any) {
	if r.err == nil {
		r.err = &Error{File: file, Line: num, Msg: fmt.Sprintf(format, args...)}
	}
}

// ParseFile reads the keepalived config at file and its includes into a
// tree whose root has the top-level statements as children.
func ParseFile(file string, opt Options) (*Node, []Warning, error) {
	if opt.ReadFile == nil {
		opt.ReadFile = os.ReadFile
	}
	if opt.Glob == nil {
		opt.Glob = globBraces
	}
	if opt.Stat == nil {
		opt.Stat = func(p string) (os.FileMode, error) {
			fi, err := os.Stat(p)
			if err != nil {
				return 0, err
			}
			return fi.Mode(), nil
		}
	}
	src, err := opt.ReadFile(file)
	if err != nil {
		return nil, nil, fmt.Errorf("read keepalived config: %w", err)
	}
	r := &reader{opt: opt, defs: map[string]string{}}
	r.readFile(file, src)
	if r.err != nil {
		return nil, r.warnings, r.err
	}
	root, err := build(file, r.lines)
	return root, r.warnings, err
}

// Parse is ParseFile for a config already read; includes are read from
// the file system relative to file's directory.
func Parse(file string, src []byte, opt Options) (*Node, []Warning, error) {
	read := opt.ReadFile
	opt.ReadFile = func(p string) ([]byte, error) {
		if p == file {
			return src, nil
		}
		if read != nil {
			return read(p)
		}
		return os.ReadFile(p)
	}
	return ParseFile(file, opt)
}

func (r *reader) readFile(file string, src []byte) {
	abs := file
	if a, err := filepath.Abs(file); err == nil {
		abs = a
	}
	if real, err := filepath.EvalSymlinks(abs); err == nil {
		abs = real
	}
	for _, f := range r.stack {
		if f == abs {
			r.fail(file, 0, "include cycle: %s includes itself (through %s)", file, strings.Join(r.stack, " -> "))
			return
		}
	}
	if len(r.stack) >= maxIncludeDepth {
		r.fail(file, 0, "includes nested deeper than %d", maxIncludeDepth)
		return
	}
	r.stack = append(r.stack, abs)
	defer func() { r.stack = r.stack[:len(r.stack)-1] }()

	for i, text := range strings.Split(string(src), "\n") {
		if r.err != nil {
			return
		}
		num := i + 1
		text = strings.TrimRight(text, "\r")
		text, ok := decomment(text)
		if !ok {
			r.fail(file, num, "unterminated quote")
			return
		}
		if text == "" {
			continue
		}
		text, keep := r.conditional(file, num, text)
		if !keep || text == "" {
			continue
		}
		if incl, ok := includeArg(text); ok {
			r.include(file, num, incl)
			continue
		}
		r.split(file, num, text)
	}
}

// conditional applies keepalived's line prefixes: `@ID` / `@^ID` (the line
// is for one host only / for all but one), `$NAME=value` definitions, `$NAME`
// and `${NAME}` uses, `~SEQ`/`~LST` expansions.
func (r *reader) conditional(file string, num int, text string) (string, bool) {
	if text[0] == '@' {
		rev, ofs := false, 1
		if strings.HasPrefix(text, "@^") {
			rev, ofs = true, 2
		}
		sp := strings.IndexAny(text[ofs:], " \t")
		if sp < 0 {
			return "", false
		}
		id := text[ofs : ofs+sp]
		match := r.opt.ConfigID != "" && id == r.opt.ConfigID
		if match == rev {
			r.warnf(file, num, "conditional line %s left out: it is not for config id %q (the output is for one host; use --config-id)", text[:ofs+sp], r.opt.ConfigID)
			return "", false
		}
		r.warnf(file, num, "conditional line %s taken in for config id %q (the output is for this host only)", text[:ofs+sp], r.opt.ConfigID)
		text = strings.TrimLeft(text[ofs+sp:], " \t")
	}
	if text[0] == '$' {
		if name, val, ok := definition(text); ok {
			if strings.HasSuffix(val, `\`) {
				r.warnf(file, num, "multi-line parameter $%s is not supported: its uses are left as they are", name)
				return "", false
			}
			r.defs[name] = val
			r.warnf(file, num, "parameter $%s expanded where it is used: the TOML holds the values", name)
			return "", false
		}
	}
	if strings.HasPrefix(text, "~SEQ") || strings.HasPrefix(text, "~LST") {
		r.warnf(file, num, "%s expansion is not supported: line left out", text[:4])
		return "", false
	}
	if strings.Contains(text, "$") && len(r.defs) > 0 {
		text = r.substitute(text)
		text, _ = decomment(text)
	}
	return text, true
}

// definition splits "$NAME=value" (keepalived's check_definition).
func definition(text string) (name, val string, ok bool) {
	if len(text) < 2 || !(isAlpha(text[1]) || text[1] == '_') {
		return "", "", false
	}
	i := 2
	for i < len(text) && (isAlnum(text[i]) || text[i] == '_') {
		i++
	}
	name = text[1:i]
	rest := strings.TrimLeft(text[i:], " \t")
	if !strings.HasPrefix(rest, "=") {
		return "", "", false
	}
	return name, strings.TrimLeft(rest[1:], " \t"), true
}

// substitute replaces $NAME (followed by a blank, ',', ')' or the end)
// and ${NAME} with their definitions.
func (r *reader) substitute(text string) string {
	var b strings.Builder
	for i := 0; i < len(text); {
		if text[i] != '$' || i+1 >= len(text) {
			b.WriteByte(text[i])
			i++
			continue
		}
		braces := text[i+1] == '{'
		start := i + 1
		if braces {
			start++
		}
		j := start
		for j < len(text) && (isAlnum(text[j]) || text[j] == '_') {
			j++
		}
		name := text[start:j]
		end := j
		switch {
		case name == "" || !(isAlpha(name[0]) || name[0] == '_'):
			end = -1
		case braces:
			if j < len(text) && text[j] == '}' {
				end = j + 1
			} else {
				end = -1
			}
		case j < len(text) && !strings.ContainsRune(" \t,)", rune(text[j])):
			end = -1
		}
		val, ok := r.defs[name]
		if end < 0 || !ok {
			b.WriteByte('$')
			i++
			continue
		}
		b.WriteString(val)
		i = end
	}
	return b.String()
}

func isAlpha(c byte) bool { return c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' }
func isAlnum(c byte) bool { return isAlpha(c) || c >= '0' && c <= '9' }

// includeArg recognises keepalived's include line ("include PATTERN", and
// its includer/includem/... variants, read here like include).
func includeArg(text string) (string, bool) {
	if !strings.HasPrefix(text, "include") || len(text) < 9 {
		return "", false
	}
	switch {
	case isBlank(text[7]):
		return strings.TrimLeft(text[8:], " \t"), true
	case strings.IndexByte("rmwba", text[7]) >= 0 && isBlank(text[8]):
		return strings.TrimLeft(text[9:], " \t"), true
	}
	return "", false
}

func isBlank(c byte) bool { return c == ' ' || c == '\t' }

func (r *reader) include(file string, num int, pattern string) {
	pattern = strings.Trim(pattern, `"`)
	if !filepath.IsAbs(pattern) {
		// keepalived changes into the directory of each file it opens.
		pattern = filepath.Join(filepath.Dir(file), pattern)
	}
	if strings.Count(pattern, "{") > maxBraces {
		// Each {a,b} doubles the patterns to glob.
		r.fail(file, num, "include %s: more than %d braces", pattern, maxBraces)
		return
	}
	matches, err := r.opt.Glob(pattern)
	if err != nil {
		r.fail(file, num, "include %s: %v", pattern, err)
		return
	}
	if len(matches) == 0 {
		r.warnf(file, num, "include %s matches no file", pattern)
		return
	}
	for _, m := range matches {
		mode, err := r.opt.Stat(m)
		if err != nil || !mode.IsRegular() || mode.Perm()&0o111 != 0 {
			r.warnf(file, num, "include %s: %s is not a regular, non-executable file: keepalived skips it, and so does the import", pattern, m)
			continue
		}
		src, err := r.opt.ReadFile(m)
		if err != nil {
			r.fail(file, num, "include %s: %v", m, err)
			return
		}
		r.readFile(m, src)
		if r.err != nil {
			return
		}
	}
}

// split cuts a line at each brace outside quotes, as read_line does, and
// queues the pieces.
func (r *reader) split(file string, num int, text string) {
	for text != "" {
		i := braceIndex(text)
		if i < 0 {
			r.lines = append(r.lines, line{text: strings.TrimRight(text, " \t"), file: file, num: num})
			return
		}
		if i > 0 {
			if t := strings.TrimRight(text[:i], " \t"); t != "" {
				r.lines = append(r.lines, line{text: t, file: file, num: num})
			}
		}
		r.lines = append(r.lines, line{text: text[i : i+1], file: file, num: num})
		text = strings.TrimLeft(text[i+1:], " \t")
	}
}

func braceIndex(s string) int {
	quote := false
	for i := 0; i < len(s); i++ {
		switch s[i] {
		case '"':
			quote = !quote
		case '{', '}':
			if !quote {
				return i
			}
		}
	}
	return -1
}

// decomment cuts a line at the first '!' or '#' outside double quotes
// (`\#` and `\!` stand for the characters) and trims blanks, as keepalived's
// decomment does. It reports false for an unterminated quote.
func decomment(s string) (string, bool) {
	var b strings.Builder
	quote := false
	i := 0
	for ; i < len(s); i++ {
		c := s[i]
		if c == '\\' && i+1 < len(s) {
			if !quote && (s[i+1] == '#' || s[i+1] == '!') {
				b.WriteByte(s[i+1])
			} else {
				b.WriteByte(c)
				b.WriteByte(s[i+1])
			}
			i++
			continue
		}
		if c == '"' {
			quote = !quote
		} else if !quote && (c == '!' || c == '#') {
			break
		}
		b.WriteByte(c)
	}
	if quote {
		return "", false
	}
	return strings.Trim(b.String(), " \t\f\v"), true
}

// words splits a line into words the way keepalived's alloc_strvec does: a
// word that starts with '"' runs to the next '"' (without the quotes),
// any other ends at a blank or a '"'.
func words(s string) []string {
	var out []string
	for {
		s = strings.TrimLeft(s, " \t\f\n\r\v")
		if s == "" {
			return out
		}
		if s[0] == '"' {
			j := strings.IndexByte(s[1:], '"')
			if j < 0 {
				return append(out, s[1:])
			}
			out = append(out, s[1:1+j])
			s = s[2+j:]
			continue
		}
		j := strings.IndexAny(s, " \t\f\n\r\v\"")
		if j < 0 {
			return append(out, s)
		}
		out = append(out, s[:j])
		s = s[j:]
	}
}

// quotedWords splits s as keepalived's alloc_strvec_quoted_escaped does for
// script command lines: single or double quotes group, backslash escapes.
func quotedWords(s string) ([]string, error) {
	var out []string
	i := 0
	for {
		for i < len(s) && strings.IndexByte(" \t\f\n\r\v", s[i]) >= 0 {
			i++
		}
		if i >= len(s) {
			return out, nil
		}
		var w strings.Builder
		var q byte
		for i < len(s) {
			c := s[i]
			switch {
			case c == '\\':
				i++
				if i >= len(s) {
					return nil, errors.New("a backslash at the end")
				}
				w.WriteByte(unescape(s, &i))
				continue
			case q != 0 && c == q:
				q = 0
				i++
				continue
			case q == 0 && (c == '"' || c == '\''):
				q = c
				i++
				continue
			case q == 0 && strings.IndexByte(" \t\f\n\r\v", c) >= 0:
			default:
				w.WriteByte(c)
				i++
				continue
			}
			break
		}
		if q != 0 {
			return nil, fmt.Errorf("missing terminating %c", q)
		}
		out = append(out, w.String())
	}
}

// unescape reads the escape at s[*i] (after the backslash) and advances.
func unescape(s string, i *int) byte {
	c := s[*i]
	*i++
	switch {
	case c == 'x' && *i < len(s) && isHex(s[*i]):
		var v byte
		for *i < len(s) && isHex(s[*i]) {
			v = v<<4 | hexVal(s[*i])
			*i++
		}
		return v
	case c == 'c' && *i < len(s):
		v := s[*i] & 0x1f
		*i++
		return v
	case c >= '0' && c <= '7':
		v := c - '0'
		for n := 0; n < 2 && *i < len(s) && s[*i] >= '0' && s[*i] <= '7'; n++ {
			v = v<<3 + s[*i] - '0'
			*i++
		}
		return v
	}
	if e, ok := map[byte]byte{'a': '\a', 'b': '\b', 'E': 0x1b, 'f': '\f', 'n': '\n', 'r': '\r', 't': '\t', 'v': '\v'}[c]; ok {
		return e
	}
	return c
}

func isHex(c byte) bool { return c >= '0' && c <= '9' || c >= 'a' && c <= 'f' || c >= 'A' && c <= 'F' }

func hexVal(c byte) byte {
	switch {
	case c >= 'a':
		return c - 'a' + 10
	case c >= 'A':
		return c - 'A' + 10
	}
	return c - '0'
}

// build turns the logical lines into the tree: a statement followed by a
// "{" line owns the statements up to the matching "}".
func build(file string, lines []line) (*Node, error) {
	root := &Node{Name: "", File: file, Block: true}
	stack := []*Node{root}
	for i := 0; i < len(lines); i++ {
		l := lines[i]
		cur := stack[len(stack)-1]
		switch l.text {
		case "{":
			return nil, &Error{File: l.file, Line: l.num, Msg: "'{' without a keyword before it"}
		case "}":
			if len(stack) == 1 {
				return nil, &Error{File: l.file, Line: l.num, Msg: "extra '}'"}
			}
			stack = stack[:len(stack)-1]
			continue
		}
		w := words(l.text)
		if len(w) == 0 {
			continue
		}
		n := &Node{Name: w[0], Args: w[1:], Raw: l.text, File: l.file, Line: l.num}
		cur.Children = append(cur.Children, n)
		if i+1 < len(lines) && lines[i+1].text == "{" {
			n.Block = true
			stack = append(stack, n)
			i++
		}
	}
	if len(stack) > 1 {
		n := stack[len(stack)-1]
		return nil, &Error{File: n.File, Line: n.Line, Msg: fmt.Sprintf("block %s is not closed (missing '}')", n.Name)}
	}
	return root, nil
}

// globBraces is glob(3) with GLOB_BRACE, as keepalived calls it: each
// {a,b} alternative is globbed in turn, each one's matches sorted.
func globBraces(pattern string) ([]string, error) {
	var out []string
	for _, p := range expandBraces(pattern) {
		m, err := filepath.Glob(p)
		if err != nil {
			return nil, err
		}
		for _, f := range m {
			if !slices.Contains(out, f) {
				out = append(out, f)
			}
		}
	}
	return out, nil
}

// expandBraces expands the first {a,b,...} of s (nested ones too).
func expandBraces(s string) []string {
	start := strings.IndexByte(s, '{')
	if start < 0 {
		return []string{s}
	}
	depth, end := 0, -1
	var commas []int
	for i := start; i < len(s) && end < 0; i++ {
		switch s[i] {
		case '{':
			depth++
		case '}':
			depth--
			if depth == 0 {
				end = i
			}
		case ',':
			if depth == 1 {
				commas = append(commas, i)
			}
		}
	}
	if end < 0 || len(commas) == 0 {
		// Not a brace expression: a literal brace.
		if end < 0 {
			return []string{s}
		}
		var out []string
		for _, rest := range expandBraces(s[end+1:]) {
			out = append(out, s[:end+1]+rest)
		}
		return out
	}
	var out []string
	prev := start + 1
	for _, c := range append(commas, end) {
		out = append(out, expandBraces(s[:start]+s[prev:c]+s[end+1:])...)
		prev = c + 1
	}
	return out
}
