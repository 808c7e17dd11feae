package probes

import (
	"cmp"
	"encoding/binary"
	"fmt"
	"io"
	"reflect"
	"slices"
	"strings"
	"time"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/link"

	"github.com/klptop/klptop/internal/event"
	"github.com/klptop/klptop/internal/ksym"
)

// funcsProg is the iterator that reads every function stack (klp_ops) and
// which patch and object each klp_func belongs to (klp_patches).
const funcsProg = "snapshot_funcs"

// funcsChanged is the internal event of the funcs_changed_* return probes:
// Read re-reads the stacks on it and never passes it on.
const funcsChanged event.Type = "funcs_changed"

// Layout of struct func_rec and struct funcs_out (bpf/events.h).
const (
	funcRecSize   = 40 + 2*funcLen + 2*patchLen
	funcsOutSize  = 8
	frecStack     = 1
	frecPatch     = 2
	funcsOverflow = 0x1
	funcsNoHeads  = 0x2
	funcsNoBTF    = 0x4
	funcsBusy     = 0x8
)

// optionalHeads are resolved like listHeads but may be missing: klp_mutex,
// held by every change to the lists, tells a half-done change from a state.
var optionalHeads = [...]struct{ sym, variable string }{
	{"klp_mutex", "klp_mutex_addr"},
}

// A read that finds klp_mutex held is retried every busyRetry for up to
// busyWait; past that its picture is taken as it is (a long transition
// sweep, or a kernel holding the mutex for other reasons).
const (
	busyRetry = 10 * time.Millisecond
	busyWait  = 2 * time.Second
)

// listHeads are the kernel's lists the funcs iterator walks. Neither has
// BTF on 6.1 (no global variables there) and klp_ops is static, so their
// addresses come from kallsyms (CONFIG_KALLSYMS_ALL). Type letters are not
// checked: 7.2 lists some of this data as text.
var listHeads = [...]struct{ sym, variable string }{
	{"klp_patches", "klp_patches_addr"},
	{"klp_ops", "klp_ops_addr"},
}

// resolveHeads returns the vmlinux addresses of listHeads, or why not.
func resolveHeads(syms *ksym.Table) (map[string]uint64, string) {
	out := make(map[string]uint64)
	for _, h := range listHeads {
		a, err := syms.Vmlinux(h.sym)
		if err != nil {
			return nil, err.Error()
		}
		if a == 0 {
			return nil, "no " + h.sym + " in /proc/kallsyms (CONFIG_KALLSYMS_ALL off?)"
		}
		out[h.variable] = a
	}
	for _, h := range optionalHeads {
		if a, _ := syms.Vmlinux(h.sym); a != 0 {
			out[h.variable] = a
		}
	}
	return out, ""
}

// setHeads gives the funcs iterator its list heads; false (with why) when
// the function stacks cannot be read here.
func setHeads(spec *ebpf.CollectionSpec, syms *ksym.Table) (bool, string) {
	if spec.Programs[funcsProg] == nil {
		return false, "funcs iterator not in the BPF object"
	}
	heads, why := resolveHeads(syms)
	if why != "" {
		return false, why
	}
	for v, addr := range heads {
		sv := spec.Variables[v]
		if sv == nil {
			continue // an optional head the object does not use
		}
		if err := sv.Set(addr); err != nil {
			return false, err.Error()
		}
	}
	return true, ""
}

// funcRec is one decoded struct func_rec.
type funcRec struct {
	kind, index, depth           uint32
	fn, oldFunc, newFunc         uint64
	nop, patched, trans, objDone bool
	name, patch, object          string
	newName                      string // new_func's symbol, named by the kernel; "" when it could not
}

func decodeFuncRec(b []byte) (funcRec, error) {
	if len(b) < funcRecSize {
		return funcRec{}, fmt.Errorf("func record of %d bytes, want %d", len(b), funcRecSize)
	}
	le := binary.LittleEndian
	const offName = 40
	return funcRec{
		fn: le.Uint64(b[0:]), oldFunc: le.Uint64(b[8:]), newFunc: le.Uint64(b[16:]),
		kind: le.Uint32(b[24:]), index: le.Uint32(b[28:]), depth: le.Uint32(b[32:]),
		nop: b[36] != 0, patched: b[37] != 0, trans: b[38] != 0, objDone: b[39] != 0,
		name:    cstr(b[offName : offName+funcLen]),
		patch:   cstr(b[offName+funcLen : offName+funcLen+patchLen]),
		object:  cstr(b[offName+funcLen+patchLen : offName+funcLen+2*patchLen]),
		newName: kernelName(cstr(b[offName+funcLen+2*patchLen : offName+2*funcLen+2*patchLen])),
	}, nil
}

// kernelName is the function of a %ps "func [module]", "" for an address
// the kernel could not name ("0x...").
func kernelName(ps string) string {
	name, _, _ := strings.Cut(ps, " [")
	if strings.HasPrefix(name, "0x") {
		return ""
	}
	return name
}

// FuncStack is one patched function and its versions, newest first.
type FuncStack struct {
	Func, Object string
	Versions     []event.FuncVersion
}

func (f FuncStack) key() string { return f.Object + "\x00" + f.Func }

// buildStacks joins the two walks: the stacks from klp_ops, the patch and
// object of each klp_func from klp_patches.
func buildStacks(recs []funcRec, syms *ksym.Table) []FuncStack {
	owner := make(map[uint64]funcRec)
	for _, r := range recs {
		if r.kind == frecPatch {
			owner[r.fn] = r
		}
	}
	// The read may be ahead of the table: a stack can hold the function of
	// a livepatch module loaded since the table was read.
	var addrs []uint64
	for _, r := range recs {
		if r.kind == frecStack && !r.nop && r.newFunc != 0 && r.newName == "" {
			addrs = append(addrs, r.newFunc)
		}
	}
	if len(addrs) > 0 {
		syms.Fresh(addrs)
	}
	byOps := make(map[uint32][]funcRec)
	var order []uint32
	for _, r := range recs {
		if r.kind != frecStack {
			continue
		}
		if _, ok := byOps[r.index]; !ok {
			order = append(order, r.index)
		}
		byOps[r.index] = append(byOps[r.index], r)
	}
	var out []FuncStack
	for _, i := range order {
		st := byOps[i]
		slices.SortStableFunc(st, func(a, b funcRec) int { return cmp.Compare(a.depth, b.depth) })
		fs := FuncStack{Func: st[0].name}
		for _, r := range st {
			o, known := owner[r.fn]
			if known && fs.Object == "" {
				fs.Object = objectName(o.object)
			}
			v := event.FuncVersion{Patch: o.patch, Nop: r.nop, Patched: r.patched, Transition: r.trans}
			if !r.nop && r.newFunc != 0 {
				if r.newName != "" {
					v.Func = r.newName
				} else if n, _, ok := syms.At(r.newFunc); ok {
					v.Func = n
				} else {
					v.Func = "?"
				}
			}
			if v.Patch == "" {
				v.Patch = "?" // freed between the two walks
			}
			fs.Versions = append(fs.Versions, v)
		}
		if fs.Object == "" {
			// No owner seen (a patch going away mid-read): where the old
			// function lives says the object as well.
			fs.Object = "vmlinux"
			if _, mod, ok := syms.Name(st[0].oldFunc); ok && mod != "" {
				fs.Object = mod
			}
		}
		out = append(out, fs)
	}
	slices.SortFunc(out, func(a, b FuncStack) int {
		if c := cmp.Compare(a.Object, b.Object); c != 0 {
			return c
		}
		return cmp.Compare(a.Func, b.Func)
	})
	return out
}

func objectName(o string) string {
	if o == "" {
		return "vmlinux"
	}
	return o
}

// FuncStacksWhy is empty when function stacks are observable, else why not.
func (s *Session) FuncStacksWhy() string { return s.funcsWhy }

// FuncStacks reads every patched function's stack now.
func (s *Session) FuncStacks() ([]FuncStack, error) {
	st, _, err := s.readStacks(busyWait)
	return st, err
}

// readStacks reads the stacks; busy: klp_mutex was held at the last try.
// A read while it is held may show a change half done (a function on its
// stack but not yet patched, a replace that has unpatched some of the
// replaced patches): it is tried again every busyRetry for up to wait.
func (s *Session) readStacks(wait time.Duration) (_ []FuncStack, busy bool, _ error) {
	if s.funcsWhy != "" {
		return nil, false, fmt.Errorf("function stacks not observable here: %s", s.funcsWhy)
	}
	it, err := link.AttachIter(link.IterOptions{Program: s.coll.Programs[funcsProg]})
	if err != nil {
		return nil, false, fmt.Errorf("funcs iterator: %w", err)
	}
	defer it.Close()
	var n, flags uint32
	for deadline := time.Now().Add(wait); ; time.Sleep(busyRetry) {
		n, flags, err = runFuncsIter(it)
		if err != nil {
			return nil, false, err
		}
		if flags&funcsBusy == 0 || !time.Now().Before(deadline) {
			break
		}
	}
	busy = flags&funcsBusy != 0
	switch {
	case flags&funcsNoBTF != 0:
		return nil, busy, fmt.Errorf("function stacks not observable here: kernel BTF has no struct klp_ops")
	case flags&funcsNoHeads != 0:
		return nil, busy, fmt.Errorf("function stacks not observable here: list heads not resolved")
	}
	m := s.coll.Maps["func_recs"]
	recs := make([]funcRec, 0, n)
	buf := make([]byte, funcRecSize)
	for i := uint32(0); i < n; i++ {
		if err := m.Lookup(i, &buf); err != nil {
			return nil, busy, fmt.Errorf("func_recs[%d]: %w", i, err)
		}
		fr, err := decodeFuncRec(buf)
		if err != nil {
			return nil, busy, err
		}
		recs = append(recs, fr)
	}
	st := buildStacks(recs, s.syms)
	if flags&funcsOverflow != 0 {
		err = fmt.Errorf("function stacks truncated: more than %d records or a list past its bound", n)
	}
	return st, busy, err
}

// runFuncsIter runs the funcs iterator once: it fills func_recs and returns
// their number and the flags.
func runFuncsIter(it *link.Iter) (n, flags uint32, err error) {
	r, err := it.Open()
	if err != nil {
		return 0, 0, fmt.Errorf("funcs iterator: %w", err)
	}
	b, err := io.ReadAll(r)
	r.Close()
	if err != nil {
		return 0, 0, fmt.Errorf("funcs iterator: %w", err)
	}
	if len(b) < funcsOutSize {
		return 0, 0, fmt.Errorf("funcs iterator: %d bytes of output", len(b))
	}
	return binary.LittleEndian.Uint32(b[0:]), binary.LittleEndian.Uint32(b[4:]), nil
}

// funcEvents reads the stacks and returns a FuncStack event for each one
// that differs from the last read, and an empty one for each that is gone.
// all: every stack, changed or not (the snapshot). The events carry stamp,
// the time of the change that asked for the read: the read itself comes
// later, behind the ring buffer, and its own time would put the events out
// of order in a trace.
func (s *Session) funcEvents(all bool, stamp uint64) []event.Event {
	s.funcsMu.Lock()
	defer s.funcsMu.Unlock()
	s.funcsReadAt = monotonicNow()
	st, err := s.FuncStacks()
	if st == nil && err != nil {
		return nil
	}
	return s.diffFuncs(st, all, stamp)
}

// changedFuncs reads the stacks after a change (at stamp) on Read's
// goroutine without waiting for klp_mutex: while it is held (a transition
// starting, a sweep), the read is owed and Read tries again when it next
// wakes with no hold (the sweep's end, or after pollEvery), instead of
// waking every busyRetry in the middle of the transition. Past busyWait,
// or with force (the reading ends), it takes what it finds. A read made at
// once goes out in order, stamped with the change's time; a later one
// (stamp 0: Read's retry) is held (see hold) at its own time.
func (s *Session) changedFuncs(stamp uint64, force bool, fn func(event.Event)) {
	if s.funcsOwed.IsZero() {
		if stamp == 0 {
			return // none owed
		}
		s.funcsOwed = time.Now()
	}
	s.funcsMu.Lock()
	defer s.funcsMu.Unlock()
	readAt := monotonicNow()
	read := s.stacks
	if read == nil {
		read = s.readStacks
	}
	st, busy, err := read(0)
	if busy && !force && time.Since(s.funcsOwed) < busyWait {
		return
	}
	first := stamp != 0
	s.funcsOwed, s.funcsReadAt = time.Time{}, readAt
	if st == nil && err != nil {
		return
	}
	if first {
		for _, e := range s.diffFuncs(st, false, stamp) {
			fn(e)
		}
		return
	}
	for _, e := range s.diffFuncs(st, false, readAt) {
		s.hold(e)
	}
}

// diffFuncs: a FuncStack event at now for each stack in st that differs from
// the last read (or every one, with all), and an empty one for each gone.
func (s *Session) diffFuncs(st []FuncStack, all bool, now uint64) []event.Event {
	seen := make(map[string]FuncStack, len(st))
	var out []event.Event
	for _, f := range st {
		seen[f.key()] = f
		if old, ok := s.lastFuncs[f.key()]; all || !ok || !reflect.DeepEqual(old.Versions, f.Versions) {
			out = append(out, event.Event{Time: now, Type: event.FuncStack, Func: f.Func, Object: f.Object, Versions: f.Versions})
		}
	}
	var gone []FuncStack
	for k, f := range s.lastFuncs {
		if _, ok := seen[k]; !ok {
			gone = append(gone, f)
		}
	}
	slices.SortFunc(gone, func(a, b FuncStack) int { return cmp.Compare(a.key(), b.key()) })
	for _, f := range gone {
		out = append(out, event.Event{Time: now, Type: event.FuncStack, Func: f.Func, Object: f.Object})
	}
	s.lastFuncs = seen
	return out
}
