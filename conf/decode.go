package conf

import (
	"encoding"
	"fmt"
	"math"
	"reflect"
	"sort"
	"strconv"
	"time"

	"github.com/lvsha/lvsha/healthcheck"
)

// decoder fills config structs from the generic map that toml parsed, so that
// every wrong type and every unknown key is reported (toml.Decode stops at the
// first type error and its Undecoded keys carry no array index).
type decoder struct {
	diags *[]Diag
}

// tomlDecoder is implemented by field types that accept more than one TOML
// type (status codes: 200 or "200-299").
type tomlDecoder interface {
	decodeTOML(v any) error
}

// nameShorthand is implemented by tables that may also be written as a
// bare string, their name (an instance's track_script = ["gw", {name =
// "agent", weight = -20}]); the table form is decoded key by key.
type nameShorthand interface {
	setName(s string)
}

var (
	textUnmarshalerType = reflect.TypeFor[encoding.TextUnmarshaler]()
	tomlDecoderType     = reflect.TypeFor[tomlDecoder]()
	nameShorthandType   = reflect.TypeFor[nameShorthand]()
)

// typeDecoders decode types of other packages that accept more than one
// TOML type.
var typeDecoders = map[reflect.Type]func(v any, rv reflect.Value) error{
	reflect.TypeFor[healthcheck.StatusRange](): decodeStatusRange,
}

func (d *decoder) errorf(path, format string, args ...any) {
	*d.diags = append(*d.diags, Diag{Path: path, Msg: fmt.Sprintf(format, args...)})
}

// decode stores v into rv (addressable). Only keys present in v are set, so
// defaults put into rv beforehand survive.
func (d *decoder) decode(path string, v any, rv reflect.Value) {
	if dec, ok := typeDecoders[rv.Type()]; ok && rv.CanAddr() {
		if err := dec(v, rv); err != nil {
			d.errorf(path, "%v", err)
		}
		return
	}
	if rv.CanAddr() {
		if pv := rv.Addr(); pv.Type().Implements(tomlDecoderType) {
			if err := pv.Interface().(tomlDecoder).decodeTOML(v); err != nil {
				d.errorf(path, "%v", err)
			}
			return
		}
		if pv := rv.Addr(); pv.Type().Implements(textUnmarshalerType) {
			s, ok := v.(string)
			if !ok {
				d.errorf(path, "want a string, got %s", tomlType(v))
				return
			}
			if err := pv.Interface().(encoding.TextUnmarshaler).UnmarshalText([]byte(s)); err != nil {
				d.errorf(path, "%v", err)
			}
			return
		}
	}
	switch rv.Kind() {
	case reflect.Pointer:
		if rv.IsNil() {
			rv.Set(reflect.New(rv.Type().Elem()))
			if init, ok := elemDefaults[rv.Type().Elem()]; ok {
				init(rv.Elem())
			}
		}
		d.decode(path, v, rv.Elem())
	case reflect.Struct:
		m, ok := v.(map[string]any)
		if !ok && rv.CanAddr() && rv.Addr().Type().Implements(nameShorthandType) {
			if s, isStr := v.(string); isStr {
				rv.Addr().Interface().(nameShorthand).setName(s)
			} else {
				d.errorf(path, "want a name or a table, got %s", tomlType(v))
			}
			return
		}
		if !ok {
			d.errorf(path, "want a table, got %s", tomlType(v))
			return
		}
		d.decodeStruct(path, m, rv)
	case reflect.Slice:
		arr, ok := asSlice(v)
		if !ok {
			d.errorf(path, "want an array, got %s", tomlType(v))
			return
		}
		out := reflect.MakeSlice(rv.Type(), len(arr), len(arr))
		for i, e := range arr {
			elem := out.Index(i)
			if init, ok := elemDefaults[rv.Type().Elem()]; ok {
				init(elem)
			}
			d.decode(fmt.Sprintf("%s[%d]", path, i), e, elem)
		}
		rv.Set(out)
	case reflect.String:
		s, ok := v.(string)
		if !ok {
			d.errorf(path, "want a string, got %s", tomlType(v))
			return
		}
		rv.SetString(s)
	case reflect.Bool:
		b, ok := v.(bool)
		if !ok {
			d.errorf(path, "want true or false, got %s", tomlType(v))
			return
		}
		rv.SetBool(b)
	case reflect.Int, reflect.Int64, reflect.Int32:
		n, ok := v.(int64)
		if !ok {
			d.errorf(path, "want an integer, got %s", tomlType(v))
			return
		}
		if n > math.MaxInt32 || n < math.MinInt32 {
			d.errorf(path, "%d is out of range", n)
			return
		}
		rv.SetInt(n)
	default:
		d.errorf(path, "internal: cannot decode into %s", rv.Type())
	}
}

func (d *decoder) decodeStruct(path string, m map[string]any, rv reflect.Value) {
	fields := map[string]int{}
	t := rv.Type()
	for i := range t.NumField() {
		tag := t.Field(i).Tag.Get("toml")
		if tag == "" || tag == "-" {
			continue
		}
		fields[tag] = i
	}
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	for _, k := range keys {
		sub := join(path, k)
		i, ok := fields[k]
		if !ok {
			msg := "unknown key"
			if s := suggest(k, fields); s != "" {
				msg += fmt.Sprintf(" (did you mean %q?)", s)
			}
			d.errorf(sub, "%s", msg)
			continue
		}
		d.decode(sub, m[k], rv.Field(i))
	}
}

func asSlice(v any) ([]any, bool) {
	switch a := v.(type) {
	case []any:
		return a, true
	case []map[string]any:
		out := make([]any, len(a))
		for i := range a {
			out[i] = a[i]
		}
		return out, true
	}
	return nil, false
}

func tomlType(v any) string {
	switch v.(type) {
	case string:
		return "a string"
	case int64:
		return "an integer"
	case float64:
		return "a float"
	case bool:
		return "a boolean"
	case map[string]any:
		return "a table"
	case []any, []map[string]any:
		return "an array"
	case time.Time:
		return "a date-time"
	}
	return fmt.Sprintf("%T", v)
}

// suggest returns the known key closest to k when it is a likely typo.
func suggest(k string, known map[string]int) string {
	best, bestD := "", 3
	for name := range known {
		if dist := editDistance(k, name); dist < bestD || dist == bestD && name < best {
			best, bestD = name, dist
		}
	}
	if bestD > len(k)/2 {
		return ""
	}
	return best
}

func editDistance(a, b string) int {
	prev := make([]int, len(b)+1)
	cur := make([]int, len(b)+1)
	for j := range prev {
		prev[j] = j
	}
	for i := 1; i <= len(a); i++ {
		cur[0] = i
		for j := 1; j <= len(b); j++ {
			c := 1
			if a[i-1] == b[j-1] {
				c = 0
			}
			cur[j] = min(prev[j]+1, cur[j-1]+1, prev[j-1]+c)
		}
		prev, cur = cur, prev
	}
	return prev[len(b)]
}

// Duration is a time.Duration written as a Go duration string ("1s", "100ms").
type Duration time.Duration

// UnmarshalText parses a Go duration string.
func (d *Duration) UnmarshalText(b []byte) error {
	v, err := time.ParseDuration(string(b))
	if err != nil {
		return fmt.Errorf("%q is not a duration (write it like \"1s\", \"100ms\", \"1m30s\")", b)
	}
	*d = Duration(v)
	return nil
}

func (d *Duration) decodeTOML(v any) error {
	s, ok := v.(string)
	if !ok {
		return fmt.Errorf("want a duration string like \"1s\" or \"100ms\", got %s", tomlType(v))
	}
	return d.UnmarshalText([]byte(s))
}

// MarshalText writes the duration in Go's notation.
func (d Duration) MarshalText() ([]byte, error) { return []byte(time.Duration(d).String()), nil }

// D returns the value as a time.Duration.
func (d Duration) D() time.Duration { return time.Duration(d) }

func (d Duration) String() string { return time.Duration(d).String() }

// decodeStatusRange accepts 200 or "200" or "200-299" into a
// healthcheck.StatusRange, which owns the form and the limits.
func decodeStatusRange(v any, rv reflect.Value) error {
	var text string
	switch x := v.(type) {
	case int64:
		text = strconv.FormatInt(x, 10)
	case string:
		text = x
	default:
		return fmt.Errorf("want a status code or a \"lo-hi\" range, got %s", tomlType(v))
	}
	return rv.Addr().Interface().(*healthcheck.StatusRange).UnmarshalText([]byte(text))
}
