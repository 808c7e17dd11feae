// Package export writes a trace in other tools' formats. Perfetto (and
// chrome://tracing) read the Chrome trace-event JSON written here.
package export

import (
	"bufio"
	"encoding/json"
	"fmt"
	"io"
	"strconv"

	"github.com/klptop/klptop/internal/event"
	"github.com/klptop/klptop/internal/state"
	"github.com/klptop/klptop/internal/trace"
)

// Stats says what an export read, for the command's warnings.
type Stats struct {
	Events      int
	Transitions int
	Lost        uint64
	Truncated   bool
	Unknown     map[event.Type]int
}

// traceEvent is one Chrome trace event. Ts and Dur are microseconds.
type traceEvent struct {
	Name string         `json:"name"`
	Cat  string         `json:"cat,omitempty"`
	Ph   string         `json:"ph"`
	Ts   json.Number    `json:"ts"`
	Dur  json.Number    `json:"dur,omitempty"`
	Pid  int            `json:"pid"`
	Tid  int            `json:"tid"`
	S    string         `json:"s,omitempty"`
	Args map[string]any `json:"args,omitempty"`
}

// perfetto lays the trace out as one process per transition, so that
// Perfetto groups and orders them: its first thread holds the transition and
// its sweeps, each further thread one task that blocked it.
type perfetto struct {
	w     *bufio.Writer
	n     int
	base  uint64
	based bool
	err   error

	tids     int
	trTid    int         // the current transition's thread
	tasks    map[int]int // blocker key -> thread, for the current transition
	sweepAt  uint64      // start of the open sweep, 0 if none
	sweepNum int
}

// Perfetto reads a trace from r and writes Chrome trace-event JSON (the
// object form, with "traceEvents") to w, an event at a time: memory does
// not grow with the trace.
func Perfetto(r io.Reader, w io.Writer) (*Stats, error) {
	st := &Stats{}
	tr, err := trace.NewReader(r)
	if err != nil {
		return st, err
	}
	p := &perfetto{w: bufio.NewWriterSize(w, 64<<10), tasks: map[int]int{}}
	if tr.Header.StartMono != 0 {
		p.base, p.based = tr.Header.StartMono, true
	}
	other, _ := json.Marshal(map[string]any{"kernel": tr.Header.Kernel, "hostname": tr.Header.Host,
		"boot_id": tr.Header.BootID, "start_wall": tr.Header.StartWall, "klptop": tr.Header.Klptop})
	p.w.WriteString(`{"displayTimeUnit":"ms","otherData":`)
	p.w.Write(other)
	p.w.WriteString(",\"traceEvents\":[")

	k := state.NewTracker()
	k.OnSegment = p.segment(k)
	var readErr error
	for {
		e, err := tr.Next()
		if err == io.EOF {
			break
		}
		if err != nil {
			readErr = err
			break
		}
		st.Events++
		if !p.based {
			p.base, p.based = e.Time, true
		}
		prev := k.S.Transition
		// The sweep that succeeds ends after the transition does: the
		// kernel's klp_try_complete_transition calls klp_complete_transition
		// before it returns. Its slice goes on the track of the transition
		// that just ended.
		if e.Type == event.SweepEnd && p.sweepAt != 0 && (prev != nil || k.Index() > 0) {
			p.sweep(prev, k.Index(), e)
		}
		if ended := k.Apply(e); ended != nil {
			p.transition(ended, "")
		}
		cur := k.S.Transition
		if cur != nil && cur != prev {
			p.begin(k.Index(), cur)
		}
		p.instant(k, e)
		if p.err != nil {
			return st, p.err
		}
	}
	if ended := k.Close(); ended != nil {
		note := "the trace ends before the transition did"
		if readErr != nil {
			note = "the trace is corrupt after this point"
		}
		p.transition(ended, note)
	}
	st.Transitions = k.Index()
	st.Lost, st.Truncated = k.S.Lost, tr.Truncated
	if len(tr.Unknown) > 0 {
		st.Unknown = tr.Unknown
	}
	p.w.WriteString("\n]}\n")
	if err := p.w.Flush(); err != nil && p.err == nil {
		p.err = err
	}
	if p.err != nil {
		return st, p.err
	}
	return st, readErr
}

func (p *perfetto) emit(ev traceEvent) {
	if p.err != nil {
		return
	}
	b, err := json.Marshal(ev)
	if err != nil {
		p.err = err
		return
	}
	if p.n > 0 {
		p.w.WriteByte(',')
	}
	p.n++
	p.w.WriteString("\n")
	_, p.err = p.w.Write(b)
}

// us is t relative to the start of the recording in microseconds, to the
// nanosecond: Perfetto keeps the fraction.
func (p *perfetto) us(t uint64) json.Number {
	d := int64(t - p.base)
	sign := ""
	if d < 0 {
		sign, d = "-", -d
	}
	return json.Number(sign + strconv.FormatInt(d/1000, 10) + "." + fmt.Sprintf("%03d", d%1000))
}

func dur(ns uint64) json.Number {
	return json.Number(strconv.FormatUint(ns/1000, 10) + "." + fmt.Sprintf("%03d", ns%1000))
}

func direction(target int) string {
	if target == event.StateUnpatched {
		return "unpatching"
	}
	return "patching"
}

func (p *perfetto) meta(pid, tid int, name, value string) {
	p.emit(traceEvent{Name: name, Ph: "M", Ts: "0", Pid: pid, Tid: tid, Args: map[string]any{"name": value}})
}

func (p *perfetto) begin(index int, tr *state.Transition) {
	p.tids++
	p.trTid = p.tids
	clear(p.tasks)
	p.sweepAt, p.sweepNum = 0, 0
	p.meta(index, 0, "process_name", fmt.Sprintf("#%d %s %s", index, tr.Patch, direction(tr.Target)))
	p.emit(traceEvent{Name: "process_sort_index", Ph: "M", Ts: "0", Pid: index, Args: map[string]any{"sort_index": index}})
	p.meta(index, p.trTid, "thread_name", "transition")
	p.emit(traceEvent{Name: "thread_sort_index", Ph: "M", Ts: "0", Pid: index, Tid: p.trTid, Args: map[string]any{"sort_index": -1}})
}

func (p *perfetto) sweep(tr *state.Transition, index int, e event.Event) {
	d := e.Duration
	if d == 0 && e.Time > p.sweepAt {
		d = e.Time - p.sweepAt
	}
	p.emit(traceEvent{Name: fmt.Sprintf("sweep %d", p.sweepNum), Cat: "sweep", Ph: "X", Ts: p.us(e.Time - min(d, e.Time)),
		Dur: dur(d), Pid: index, Tid: p.trTid, Args: map[string]any{"checked": e.Checked, "pending": e.Pending}})
	p.sweepAt = 0
}

func (p *perfetto) instant(k *state.Tracker, e event.Event) {
	name := ""
	switch e.Type {
	case event.SweepStart:
		if k.S.Transition != nil {
			p.sweepAt = max(e.Time, 1)
			p.sweepNum++
		}
		return
	case event.TransitionReverse:
		name = "reverse"
	case event.TransitionForce:
		name = "force"
	case event.TransitionCancel:
		name = "cancel"
	case event.Lost:
		p.emit(traceEvent{Name: fmt.Sprintf("lost %d events (%s)", e.Count, event.LostWords(e.Reason)), Cat: "lost", Ph: "i", S: "g", Ts: p.us(e.Time)})
		return
	case event.Resync:
		name, cat := "resync", "lost"
		if e.Reason == event.ResyncAttached && e.Count == 0 {
			name, cat = "probes attached (resync)", "probes"
		}
		p.emit(traceEvent{Name: name, Cat: cat, Ph: "i", S: "g", Ts: p.us(e.Time)})
		return
	case event.Signal:
		p.signal(k, e)
		return
	case event.Callback:
		p.callback(k, e)
		return
	case event.ModuleComing, event.ModuleGoing, event.ModuleApply, event.ModuleRevert,
		event.PatchReplace, event.PatchReplaced, event.NopsDiscard, event.ReplacedFree, event.PatchFree:
		p.global(e)
		return
	default:
		return
	}
	if k.Index() > 0 {
		p.emit(traceEvent{Name: name, Cat: "transition", Ph: "i", S: "p", Ts: p.us(e.Time), Pid: k.Index(), Tid: p.trTid})
	}
}

// global marks module and atomic-replace events (trace format 1.4) as
// global instants: they are the kernel's, not one transition's.
func (p *perfetto) global(e event.Event) {
	var name string
	switch e.Type {
	case event.ModuleComing:
		name = "module " + e.Object + " coming"
	case event.ModuleGoing:
		name = "module " + e.Object + " going"
	case event.ModuleApply:
		name = e.Patch + " applied to " + e.Object
	case event.ModuleRevert:
		name = e.Patch + " reverted on " + e.Object
	case event.PatchReplace:
		name = e.Patch + " replaces"
	case event.PatchReplaced:
		name = e.Patch + " replaced"
	case event.NopsDiscard:
		name = e.Patch + " nops discarded"
	case event.ReplacedFree:
		name = "patches replaced by " + e.Patch + " freed"
	case event.PatchFree:
		name = e.Patch + " freed"
	}
	p.emit(traceEvent{Name: name, Cat: string(e.Type), Ph: "i", S: "g", Ts: p.us(e.Time)})
}

// callback is a slice on the transition's track when it ran for the
// transition in progress, else (a module load, a failed enable) a global one.
// The event is stamped at the callback's return.
func (p *perfetto) callback(k *state.Tracker, e event.Event) {
	name := fmt.Sprintf("%s %s %s", e.Patch, e.Callback, e.Object)
	if e.Ret != 0 {
		name += fmt.Sprintf(" returned %d", e.Ret)
	}
	args := map[string]any{"func": e.Func, "ret": e.Ret, "bracketed": e.Bracketed}
	start := e.Time - min(e.Duration, e.Time)
	if tr := k.S.Transition; tr != nil && tr.Patch == e.Patch && k.Index() > 0 {
		p.emit(traceEvent{Name: name, Cat: "callback", Ph: "X", Ts: p.us(start), Dur: dur(e.Duration),
			Pid: k.Index(), Tid: p.trTid, Args: args})
		return
	}
	p.emit(traceEvent{Name: name, Cat: "callback", Ph: "i", S: "g", Ts: p.us(start), Args: args})
}

// signal marks the kernel's prod on the task's own track, next to the
// stretch it was blocked: whether the task switched soon after shows there.
func (p *perfetto) signal(k *state.Tracker, e event.Event) {
	if k.S.Transition == nil || k.Index() == 0 {
		return
	}
	name := "signal: fake signal"
	if e.Path == event.PathWake {
		name = "signal: wake"
	}
	pid := k.Index()
	tid := p.taskTrack(pid, state.Key(e), e.PID, e.Comm)
	p.emit(traceEvent{Name: name, Cat: "signal", Ph: "i", S: "t", Ts: p.us(e.Time), Pid: pid, Tid: tid,
		Args: map[string]any{"pid": e.PID, "comm": e.Comm, "path": e.Path}})
}

func (p *perfetto) transition(en *state.Ended, note string) {
	tr := en.Transition
	outcome := tr.Outcome
	if en.Unfinished || en.EndLost {
		outcome = "unfinished"
	}
	end := en.Until
	args := map[string]any{"patch": tr.Patch, "outcome": outcome, "sweeps": tr.Sweeps,
		"reverses": tr.Reversed, "tasks": tr.Total, "switched": tr.Switched, "blockers": len(en.Blockers)}
	if note != "" {
		args["note"] = note
	}
	if tr.Attached {
		args["started_before_recording"] = true
	}
	p.emit(traceEvent{Name: fmt.Sprintf("%s %s: %s", tr.Patch, direction(tr.Target^(tr.Reversed&1)), outcome),
		Cat: "transition", Ph: "X", Ts: p.us(tr.Start), Dur: dur(end - min(end, tr.Start)),
		Pid: en.Index, Tid: p.trTid, Args: args})
}

// taskTrack is the thread of a task in transition pid, made on first use.
func (p *perfetto) taskTrack(pid, key, taskPID int, comm string) int {
	tid, ok := p.tasks[key]
	if !ok {
		p.tids++
		tid = p.tids
		p.tasks[key] = tid
		p.meta(pid, tid, "thread_name", fmt.Sprintf("%s (pid %d)", comm, taskPID))
		p.emit(traceEvent{Name: "thread_sort_index", Ph: "M", Ts: "0", Pid: pid, Tid: tid, Args: map[string]any{"sort_index": tid}})
	}
	return tid
}

func (p *perfetto) segment(k *state.Tracker) func(*state.Transition, *state.Blocker, state.Segment) {
	return func(tr *state.Transition, b *state.Blocker, s state.Segment) {
		pid := k.Index()
		tid := p.taskTrack(pid, b.Key, b.PID, b.Comm)
		name := s.Reason
		if s.Func != "" {
			name += ": " + s.Func
		}
		args := map[string]any{"reason": s.Reason, "pid": b.PID, "comm": b.Comm}
		if s.Func != "" {
			args["func"] = s.Func
		}
		if s.Open {
			args["still_blocked_at_end"] = true
		}
		if len(b.Stack) > 0 {
			args["stack"] = b.Stack
		}
		p.emit(traceEvent{Name: name, Cat: "blocked", Ph: "X", Ts: p.us(s.Start), Dur: dur(s.End - s.Start),
			Pid: pid, Tid: tid, Args: args})
	}
}
