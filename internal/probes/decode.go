package probes

import (
	"bytes"
	"encoding/binary"
	"fmt"
	"strings"

	"github.com/klptop/klptop/internal/event"
)

// Layouts of bpf/events.h, decoded by hand: the records are little-endian
// (the object is built for x86-64) and naturally aligned.
const (
	commLen  = 16
	patchLen = 56
	funcLen  = 128

	offComm       = 56
	offPatch      = offComm + commLen
	offFunc       = offPatch + patchLen
	offID         = offFunc + funcLen
	offVersion    = offID + 8
	offAggregated = offVersion + 4
	eventSize     = offVersion + 8
	offRunning    = 16 + commLen
	taskRecSize   = offRunning + 8
)

// enum klptop_event_type
var eventTypes = [...]event.Type{
	1:  event.PatchEnable,
	2:  event.TransitionInit,
	3:  event.TransitionStart,
	4:  event.TransitionComplete,
	5:  event.TransitionReverse,
	6:  event.TransitionCancel,
	7:  event.TransitionForce,
	8:  event.SweepStart,
	9:  event.SweepEnd,
	10: event.TaskCheck,
	11: event.TaskSwitch,
	12: funcsChanged,
	13: event.Signal,
	14: event.KlpState,
	15: event.ModuleComing,
	16: event.ModuleGoing,
	17: event.ModuleApply,
	18: event.ModuleRevert,
	19: event.PatchReplace,
	20: event.PatchReplaced,
	21: event.NopsDiscard,
	22: event.PatchFree,
	23: event.ReplacedFree,
	24: callbacksSeen,
	25: event.Callback,
	26: event.TaskExit,
}

// enum klptop_callback: the order of cb[] in EV_CALLBACKS.
const cbMax = 4

var callbackKinds = [cbMax]string{event.CallbackPrePatch, event.CallbackPostPatch, event.CallbackPreUnpatch, event.CallbackPostUnpatch}

// enum klptop_path
var paths = [...]string{0: "", 1: event.PathUser, 2: event.PathIdle, 3: event.PathFork, 4: event.PathSched, 5: event.PathWake, 6: event.PathSignal,
	7: event.PathSchedTrySwitch, 8: event.PathSchedule}

const (
	flagReplace   = 0x1
	flagWantStack = 0x2
	flagBracket   = 0x4
	flagFailed    = 0x8
	flagAggregate = 0x10
)

// rawEvent is a decoded struct event plus what is not in event.Event.
type rawEvent struct {
	event.Event
	wantStack bool
	// callbacksSeen and Callback: the callback's name as the kernel gave
	// it, "func [module]", and its address (a function pointer, or the
	// probed address).
	sym  string
	addr uint64
}

func cstr(b []byte) string {
	if i := bytes.IndexByte(b, 0); i >= 0 {
		b = b[:i]
	}
	return string(b)
}

func decodeEvent(b []byte) (rawEvent, error) {
	if len(b) < eventSize {
		return rawEvent{}, fmt.Errorf("event record of %d bytes, want %d", len(b), eventSize)
	}
	le := binary.LittleEndian
	typ := le.Uint32(b[16:])
	if typ == 0 || int(typ) >= len(eventTypes) {
		return rawEvent{}, fmt.Errorf("unknown event type %d", typ)
	}
	flags := b[52]
	path := int(b[53])
	var e rawEvent
	e.Time = le.Uint64(b[0:])
	e.Duration = le.Uint64(b[8:])
	e.Type = eventTypes[typ]
	e.CPU = int(le.Uint32(b[20:]))
	e.PID = int(le.Uint32(b[24:]))
	e.TGID = int(le.Uint32(b[28:]))
	e.Ret = int32(le.Uint32(b[32:]))
	e.Target = int(int32(le.Uint32(b[36:])))
	e.PatchState = int(int32(le.Uint32(b[40:])))
	e.Pending = int(le.Uint32(b[44:]))
	e.Checked = int(le.Uint32(b[48:]))
	e.Replace = flags&flagReplace != 0
	e.wantStack = flags&flagWantStack != 0
	if path < len(paths) {
		e.Path = paths[path]
	}
	e.Comm = cstr(b[offComm : offComm+commLen])
	e.Patch = cstr(b[offPatch : offPatch+patchLen])
	e.Func = cstr(b[offFunc : offFunc+funcLen])
	if e.Type == event.KlpState {
		e.ID = le.Uint64(b[offID:])
		e.Version = int(le.Uint32(b[offVersion:]))
	}
	switch e.Type {
	case callbacksSeen, event.Callback:
		e.addr = le.Uint64(b[offID:])
		e.Bracketed = e.Type == event.Callback && flags&flagBracket != 0
		// Which callback, when the kernel side knows (kind + 1).
		if k := int(le.Uint32(b[offVersion:])); k >= 1 && k <= cbMax {
			e.Callback = callbackKinds[k-1]
		}
		e.sym = e.Func
		name, mod, _ := strings.Cut(e.Func, " [")
		e.Func = name
		if e.Type == event.Callback {
			// The object is in patch; the patch is the callback's module.
			e.Object, e.Patch = objectName(e.Patch), strings.TrimSuffix(mod, "]")
		}
	}
	switch e.Type {
	case event.ModuleComing, event.ModuleGoing, event.ModuleApply, event.ModuleRevert:
		e.Object, e.Func = e.Func, "" // the module
	}
	switch e.Type {
	case event.SweepStart, event.SweepEnd:
		e.Aggregate = flags&flagAggregate != 0
		if e.Type == event.SweepEnd {
			e.Aggregated = int(le.Uint32(b[offAggregated:]))
		}
	}
	if e.Type == event.TaskCheck {
		e.Reason = event.ReasonFor(e.Ret)
		if e.Ret == 0 {
			e.Path = event.PathSweep
		}
	}
	return e, nil
}

// taskRec is one record of the task iterator.
type taskRec struct {
	pid, tgid  int
	patchState int
	comm       string
	running    bool
	stack      []uint64
}

func decodeTasks(b []byte) ([]taskRec, error) {
	le := binary.LittleEndian
	var out []taskRec
	for len(b) > 0 {
		if len(b) < taskRecSize {
			return out, fmt.Errorf("truncated task record (%d bytes)", len(b))
		}
		r := taskRec{
			pid:        int(le.Uint32(b[0:])),
			tgid:       int(le.Uint32(b[4:])),
			patchState: int(int32(le.Uint32(b[8:]))),
			comm:       cstr(b[16 : 16+commLen]),
			running:    le.Uint32(b[offRunning:]) != 0,
		}
		n := int(le.Uint32(b[12:]))
		b = b[taskRecSize:]
		if len(b) < 8*n {
			return out, fmt.Errorf("truncated stack of pid %d", r.pid)
		}
		for i := 0; i < n; i++ {
			r.stack = append(r.stack, le.Uint64(b[8*i:]))
		}
		b = b[8*n:]
		out = append(out, r)
	}
	return out, nil
}
