package trace

import (
	"encoding/json"
	"unicode/utf8"

	"github.com/klptop/klptop/internal/event"
)

// decoder parses event lines as the recorder writes them, several times
// faster than encoding/json (which reflects and allocates per field). It
// handles exactly the flat shape of event.Event: known keys, integers,
// booleans, escape-free strings and arrays of them. Anything else (escapes,
// null, unknown or differently-cased keys, floats) goes to encoding/json, so
// the result is always what json.Unmarshal would give.
type decoder struct {
	// intern reuses the strings of comms, functions and stack frames,
	// which repeat on nearly every line; bounded so memory stays constant.
	intern map[string]string
}

const maxIntern = 8192

func (d *decoder) str(b []byte) string {
	if s, ok := d.intern[string(b)]; ok {
		return s
	}
	s := string(b)
	if d.intern == nil {
		d.intern = make(map[string]string)
	}
	if len(d.intern) < maxIntern {
		d.intern[s] = s
	}
	return s
}

// decode fills e from b, which holds one line without its newline.
func (d *decoder) decode(b []byte, e *event.Event) error {
	*e = event.Event{}
	if d.fast(b, e) {
		return nil
	}
	*e = event.Event{}
	return json.Unmarshal(b, e)
}

type scanner struct {
	b []byte
	i int
}

func (s *scanner) ws() {
	for s.i < len(s.b) {
		switch s.b[s.i] {
		case ' ', '\t', '\n', '\r':
			s.i++
		default:
			return
		}
	}
}

func (s *scanner) eat(c byte) bool {
	s.ws()
	if s.i < len(s.b) && s.b[s.i] == c {
		s.i++
		return true
	}
	return false
}

// rawString returns the bytes of a string with no escapes, valid UTF-8 and
// no control characters; ok is false otherwise (left to encoding/json,
// which replaces invalid UTF-8 and decodes escapes).
func (s *scanner) rawString() ([]byte, bool) {
	if !s.eat('"') {
		return nil, false
	}
	start := s.i
	ascii := true
	for s.i < len(s.b) {
		c := s.b[s.i]
		switch {
		case c == '"':
			out := s.b[start:s.i]
			s.i++
			if !ascii && !utf8.Valid(out) {
				return nil, false
			}
			return out, true
		case c == '\\' || c < 0x20:
			return nil, false
		case c >= 0x80:
			ascii = false
		}
		s.i++
	}
	return nil, false
}

// int parses a JSON integer that fits in [lo, hi]; the bounds give
// encoding/json's overflow errors back to it.
func (s *scanner) int(lo int64, hi uint64) (neg bool, v uint64, ok bool) {
	s.ws()
	if s.i < len(s.b) && s.b[s.i] == '-' {
		neg = true
		s.i++
	}
	start := s.i
	for s.i < len(s.b) && s.b[s.i] >= '0' && s.b[s.i] <= '9' {
		c := uint64(s.b[s.i] - '0')
		if v > (1<<64-1-c)/10 {
			return false, 0, false
		}
		v = v*10 + c
		s.i++
	}
	n := s.i - start
	if n == 0 || (n > 1 && s.b[start] == '0') {
		return false, 0, false
	}
	if s.i < len(s.b) {
		switch s.b[s.i] {
		case '.', 'e', 'E':
			return false, 0, false
		}
	}
	if neg {
		if lo == 0 || v > uint64(-(lo+1))+1 {
			return false, 0, false
		}
		return true, v, true
	}
	return false, v, v <= hi
}

func (s *scanner) intField(lo int64, hi uint64) (int64, bool) {
	neg, v, ok := s.int(lo, hi)
	if !ok {
		return 0, false
	}
	if neg {
		return -int64(v-1) - 1, true
	}
	return int64(v), true
}

func (s *scanner) boolean() (bool, bool) {
	s.ws()
	if len(s.b)-s.i >= 4 && string(s.b[s.i:s.i+4]) == "true" {
		s.i += 4
		return true, true
	}
	if len(s.b)-s.i >= 5 && string(s.b[s.i:s.i+5]) == "false" {
		s.i += 5
		return false, true
	}
	return false, false
}

const (
	maxInt   = 1<<63 - 1
	minInt   = -1 << 63
	maxInt32 = 1<<31 - 1
	minInt32 = -1 << 31
)

func (d *decoder) fast(b []byte, e *event.Event) bool {
	s := scanner{b: b}
	if !s.eat('{') {
		return false
	}
	if s.eat('}') {
		return s.end()
	}
	for {
		key, ok := s.rawString()
		if !ok || !s.eat(':') {
			return false
		}
		if !d.field(&s, string(key), e) {
			return false
		}
		if s.eat(',') {
			continue
		}
		if s.eat('}') {
			return s.end()
		}
		return false
	}
}

func (s *scanner) end() bool {
	s.ws()
	return s.i == len(s.b)
}

func (d *decoder) field(s *scanner, key string, e *event.Event) bool {
	var ok bool
	var n int64
	switch key {
	case "t":
		var neg bool
		var v uint64
		neg, v, ok = s.int(0, 1<<64-1)
		e.Time = v
		return ok && !neg
	case "type":
		var v []byte
		v, ok = s.rawString()
		e.Type = event.Type(d.str(v))
	case "comm", "patch", "reason", "func", "path":
		var v []byte
		if v, ok = s.rawString(); !ok {
			return false
		}
		str := d.str(v)
		switch key {
		case "comm":
			e.Comm = str
		case "patch":
			e.Patch = str
		case "reason":
			e.Reason = str
		case "func":
			e.Func = str
		case "path":
			e.Path = str
		}
	case "cpu", "pid", "tgid", "seq", "target", "patch_state", "pending", "checked":
		if n, ok = s.intField(minInt, maxInt); !ok {
			return false
		}
		switch key {
		case "cpu":
			e.CPU = int(n)
		case "pid":
			e.PID = int(n)
		case "tgid":
			e.TGID = int(n)
		case "seq":
			e.Seq = int(n)
		case "target":
			e.Target = int(n)
		case "patch_state":
			e.PatchState = int(n)
		case "pending":
			e.Pending = int(n)
		case "checked":
			e.Checked = int(n)
		}
	case "ret":
		n, ok = s.intField(minInt32, maxInt32)
		e.Ret = int32(n)
	case "duration_ns", "count":
		var neg bool
		var v uint64
		neg, v, ok = s.int(0, 1<<64-1)
		ok = ok && !neg
		if key == "count" {
			e.Count = v
		} else {
			e.Duration = v
		}
	case "replace", "enabled", "transition":
		var v bool
		v, ok = s.boolean()
		switch key {
		case "replace":
			e.Replace = v
		case "enabled":
			e.Enabled = v
		case "transition":
			e.InTransition = v
		}
	case "stack":
		return d.stack(s, e)
	default:
		return false
	}
	return ok
}

func (d *decoder) stack(s *scanner, e *event.Event) bool {
	if !s.eat('[') {
		return false
	}
	// encoding/json reuses a non-nil slice's backing array for a repeated
	// key; a fresh slice keeps the event independent of earlier ones.
	st := make([]string, 0, 16)
	if s.eat(']') {
		e.Stack = st
		return true
	}
	for {
		v, ok := s.rawString()
		if !ok {
			return false
		}
		st = append(st, d.str(v))
		if s.eat(',') {
			continue
		}
		if s.eat(']') {
			e.Stack = st
			return true
		}
		return false
	}
}
