// Package report turns a recorded trace into what an operator needs after
// the fact: every transition, how it ended, and for each stall which tasks
// held it up, where and for how long. It streams: each transition is
// written when it ends, so memory does not grow with the trace.
package report

import (
	"fmt"
	"io"
	"maps"
	"slices"
	"time"

	"github.com/klptop/klptop/internal/event"
	"github.com/klptop/klptop/internal/state"
	"github.com/klptop/klptop/internal/trace"
)

// Outcomes beyond state's: a transition whose end the trace does not hold.
const OutcomeUnfinished = "unfinished"

// Options select the output.
type Options struct {
	JSON bool
	// MaxBlockers bounds the blocking tasks listed per stall in text output
	// (0: 10). JSON lists them all.
	MaxBlockers int
	// MaxFrames bounds the stack frames printed per task in text (0: 16).
	MaxFrames int
}

// Time is one instant of the trace, three ways.
type Time struct {
	Mono uint64 `json:"mono_ns"`
	// Wall is UTC, RFC 3339 with nanoseconds; empty when the header's
	// start_wall is missing or unreadable.
	Wall string `json:"wall,omitempty"`
	// Offset is seconds since the start of the recording.
	Offset float64 `json:"offset_s"`
}

// Transition is one transition as reported.
type Transition struct {
	Index int    `json:"index"`
	Patch string `json:"patch"`
	// Direction is what the transition set out to do (patching, unpatching);
	// Reverses says how often it turned round.
	Direction string `json:"direction"`
	Start     Time   `json:"start"`
	// End is nil while the transition is unfinished. EndIsUpperBound: the
	// end was not recorded and End is when the next transition began.
	End             *Time  `json:"end"`
	EndIsUpperBound bool   `json:"end_is_upper_bound,omitempty"`
	DurationNs      uint64 `json:"duration_ns"`
	Outcome         string `json:"outcome"`
	// Note explains an outcome the trace cannot pin down.
	Note     string `json:"note,omitempty"`
	Sweeps   int    `json:"sweeps"`
	Reverses int    `json:"reverses"`
	// Signals sent by klp_send_signals, one per task prodded. When
	// SignalsObservable is false (the recorder could not probe them, or the
	// trace predates format 1.2) the count is unknown, not zero.
	Signals           int  `json:"signals"`
	SignalsObservable bool `json:"signals_observable"`
	// StartedBeforeRecording: klptop attached mid-transition; Start is a
	// lower bound.
	StartedBeforeRecording bool `json:"started_before_recording,omitempty"`
	// LostEvents were lost while it ran; StartResynced: its start fell
	// where events were lost, and Start is the resync that found it.
	LostEvents    uint64 `json:"lost_events,omitempty"`
	StartResynced bool   `json:"start_resynced,omitempty"`
	Tasks         int    `json:"tasks"`
	Switched      int    `json:"switched"`
	// Stall: the transition needed more than one sweep, or never finished.
	Stall    bool      `json:"stall"`
	Blockers []Blocker `json:"blockers"`
	// KlpStates is the patch's klp_state array (trace format 1.3), as its
	// klp_enable_patch or the start-up snapshot showed it.
	KlpStates []KlpState `json:"klp_states,omitempty"`
	// Replace (trace format 1.4): this transition's atomic replace, as the
	// kernel did it at its completion; nil when it replaced nothing or the
	// trace does not show it.
	Replace *Replace `json:"replace,omitempty"`
	// Callbacks (trace format 1.5) that ran for this transition: the
	// pre-unpatch callbacks just before an unpatching, the pre-patch ones
	// of an enable, the post ones at the completion.
	Callbacks []Callback `json:"callbacks,omitempty"`
}

// Callback is one run of an object's callback.
type Callback struct {
	Time     Time   `json:"time"`
	Patch    string `json:"patch"`
	Object   string `json:"object"`
	Callback string `json:"callback"`
	Func     string `json:"func"`
	// DurationNs: how long it ran; Bracketed, timed from the kernel's
	// steps around it (the enable's pre-patch callbacks).
	DurationNs uint64 `json:"duration_ns"`
	Bracketed  bool   `json:"bracketed,omitempty"`
	// Ret: what a pre-patch callback returned; non-zero failed the enable
	// or the module load.
	Ret int32 `json:"ret"`
	// InTransition: it ran for a transition of its patch (and is listed
	// there too), not for a module load.
	InTransition bool `json:"in_transition"`
}

// Replace is one atomic replace: the patches the kernel unpatched
// (klp_unpatch_replaced_patches) and whether it discarded the nops.
type Replace struct {
	Replaced      []string `json:"replaced"`
	NopsDiscarded bool     `json:"nops_discarded"`
}

// Module is a module loading or unloading (trace format 1.4) and the
// patches the kernel applied to it or reverted on it.
type Module struct {
	Time    Time     `json:"time"`
	Event   string   `json:"event"` // "coming" or "going"
	Module  string   `json:"module"`
	Patches []string `json:"patches"`
}

// KlpState is one struct klp_state of a patch.
type KlpState struct {
	ID      uint64 `json:"id"`
	Version int    `json:"version"`
}

// Shadow is one shadow id's variables over the recording, counted from when
// klptop attached.
type Shadow struct {
	ID     uint64 `json:"id"`
	Allocs uint64 `json:"allocs"`
	Frees  uint64 `json:"frees"`
	// Live is Allocs - Frees: negative when variables allocated before
	// the recording were freed.
	Live  int64             `json:"live"`
	Calls map[string]uint64 `json:"calls"`
}

// Blocker is a task that held up a stalled transition.
type Blocker struct {
	PID        int      `json:"pid"`
	TGID       int      `json:"tgid,omitempty"`
	Comm       string   `json:"comm"`
	Reason     string   `json:"reason"`
	Func       string   `json:"func,omitempty"`
	Stack      []string `json:"stack"`
	FirstCheck *Time    `json:"first_failed_check"`
	LastCheck  *Time    `json:"last_failed_check"`
	Checks     int      `json:"checks"`
	// Signals the kernel sent the task; unknown, not zero, unless the
	// transition's SignalsObservable.
	Signals   int    `json:"signals"`
	BlockedNs uint64 `json:"blocked_ns"`
	// Switched is nil when the task was still blocked at the end;
	// SwitchPath "force" or "reverse" says it was released, not switched.
	Switched   *Time  `json:"switched"`
	SwitchPath string `json:"switch_path,omitempty"`
}

// TraceInfo is the recording's header, as reported.
type TraceInfo struct {
	Version   string          `json:"version"`
	Klptop    string          `json:"klptop"`
	Kernel    string          `json:"kernel"`
	Hostname  string          `json:"hostname"`
	BootID    string          `json:"boot_id"`
	StartWall string          `json:"start_wall"`
	Backend   string          `json:"backend,omitempty"`
	Missing   []trace.Missing `json:"missing"`
	Command   []string        `json:"command,omitempty"`
	// LossCounted: the causes of loss the recorder counted (trace 1.9).
	LossCounted []string `json:"loss_counted,omitempty"`
}

// Repair is a stretch of the recording where events were lost and the
// resync that ended it (state.Repair).
type Repair struct {
	From   Time              `json:"from"`
	At     Time              `json:"resynced_at"`
	Lost   uint64            `json:"lost"`
	Causes map[string]uint64 `json:"causes"`
	// Ended, Began: a transition ended, or began, within it; Forgotten
	// tasks left within it unseen.
	Ended     bool `json:"transition_ended,omitempty"`
	Began     bool `json:"transition_began,omitempty"`
	Forgotten int  `json:"tasks_forgotten,omitempty"`
}

// Summary closes a report.
type Summary struct {
	Events      int            `json:"events"`
	Transitions int            `json:"transitions"`
	Outcomes    map[string]int `json:"outcomes"`
	Stalls      int            `json:"stalls"`
	Unfinished  int            `json:"unfinished"`
	LostEvents  uint64         `json:"lost_events"`
	// Repairs are the stretches where events were lost, each ended by a
	// resync that read the kernel's state again; LostUnrepaired were lost
	// after the last one (the trace ended first).
	Repairs        []Repair `json:"repairs,omitempty"`
	LostUnrepaired uint64   `json:"lost_unrepaired,omitempty"`
	// UnknownEvents counts events of types this klptop does not know.
	UnknownEvents map[event.Type]int `json:"unknown_events,omitempty"`
	// Truncated: the last line was cut short (recorder killed); everything
	// before it is reported.
	Truncated bool `json:"truncated"`
	// Error is the corruption that stopped the report early, if any.
	Error string `json:"error,omitempty"`
	// Shadows are the shadow variables by id (trace format 1.3);
	// ShadowsObservable: the recorder probed klp_shadow_alloc, so an empty
	// list means no shadow variable was allocated or freed.
	Shadows           []Shadow `json:"shadows,omitempty"`
	ShadowsObservable bool     `json:"shadows_observable,omitempty"`
	// Modules that loaded or unloaded while livepatch watched them
	// (klp_module_coming/going), in order; at most maxModules.
	Modules []Module `json:"modules,omitempty"`
	// Callbacks that ran, in order, at most maxCallbacks;
	// CallbacksObservable: the recorder probed them.
	Callbacks           []Callback `json:"callbacks,omitempty"`
	CallbacksObservable bool       `json:"callbacks_observable,omitempty"`
}

const maxCallbacks = 4096

const maxModules = 4096

// Warnings are what the command should tell the user on stderr.
func (s *Summary) Warnings() []string {
	var w []string
	if s.Truncated {
		w = append(w, "trace ends in a partial line (recorder killed?): reported up to it")
	}
	for _, t := range slices.Sorted(maps.Keys(s.UnknownEvents)) {
		w = append(w, fmt.Sprintf("skipped %d events of type %q unknown to this klptop", s.UnknownEvents[t], t))
	}
	if n := s.LostEvents - s.LostUnrepaired; n > 0 {
		w = append(w, fmt.Sprintf("%d events were lost while recording, in %d stretches, each repaired by a resync (see repairs): there, checks and switches are missing and times are bounds", n, len(s.Repairs)))
	}
	switch {
	case s.LostUnrepaired > 0 && len(s.Repairs) == 0:
		w = append(w, fmt.Sprintf("%d events were lost while recording and no resync followed: the report may miss switches or checks", s.LostUnrepaired))
	case s.LostUnrepaired > 0:
		w = append(w, fmt.Sprintf("%d events were lost after the last resync: the end of the report may miss switches or checks", s.LostUnrepaired))
	}
	return w
}

// sink receives the report as it is built.
type sink interface {
	begin(TraceInfo, bool) error
	transition(*Transition) error
	end(*Summary) error
}

// Run reads a trace from r and writes its report to w. The Summary is
// returned even with an error, for the caller's exit status; an error is
// one line naming the trace line and byte offset where reading stopped.
func Run(r io.Reader, w io.Writer, opts Options) (*Summary, error) {
	sum := &Summary{Outcomes: map[string]int{}}
	tr, err := trace.NewReader(r)
	if err != nil {
		return sum, err
	}
	sum.ShadowsObservable = slices.Contains(tr.Header.Attached, event.ShadowAlloc)
	sum.CallbacksObservable = slices.Contains(tr.Header.Attached, event.CallbacksPoint)
	var out sink
	if opts.JSON {
		out = newJSONSink(w)
	} else {
		out = newTextSink(w, opts)
	}
	b := newBuilder(tr.Header)
	if err := out.begin(b.info, b.signalsObservable); err != nil {
		return sum, err
	}
	k := state.NewTracker()
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
		sum.Events++
		b.sawEvent(e.Time)
		b.sawStates(e)
		b.sawReplace(e)
		b.sawModule(e, sum)
		ended := k.Apply(e)
		if e.Type == event.Callback {
			b.sawCallback(e, k.S.CallbackFiled(), sum)
		}
		if ended != nil {
			if err := out.transition(b.transition(ended, sum)); err != nil {
				return sum, err
			}
		}
	}
	if ended := k.Close(); ended != nil {
		t := b.transition(ended, sum)
		if readErr != nil {
			t.Note = "the report stops at a corrupt line of the trace before the transition's end"
		}
		if err := out.transition(t); err != nil {
			return sum, err
		}
	}
	sum.LostEvents = k.S.Lost
	sum.LostUnrepaired = k.S.LostSinceResync()
	for _, r := range k.S.Repairs {
		sum.Repairs = append(sum.Repairs, Repair{From: b.time(r.From), At: b.time(r.At), Lost: r.Lost,
			Causes: maps.Clone(r.Causes), Ended: r.Ended, Began: r.Began, Forgotten: r.Forgotten})
	}
	for _, sh := range k.S.ShadowList() {
		calls := maps.Clone(sh.Calls)
		if calls == nil {
			calls = map[string]uint64{}
		}
		sum.Shadows = append(sum.Shadows, Shadow{ID: sh.ID, Allocs: sh.Allocs, Frees: sh.Frees, Live: sh.Live, Calls: calls})
	}
	sum.Truncated = tr.Truncated
	if len(tr.Unknown) > 0 {
		sum.UnknownEvents = tr.Unknown
	}
	if readErr != nil {
		sum.Error = readErr.Error()
	}
	if err := out.end(sum); err != nil {
		return sum, err
	}
	return sum, readErr
}

// builder turns the tracker's transitions into reported ones.
type builder struct {
	info              TraceInfo
	signalsObservable bool
	wall              time.Time // zero when unknown
	base              uint64
	haveBase          bool
	// klpStates by patch: the last klp_enable_patch's or snapshot's.
	klpStates map[string][]KlpState
	// replaces by replacing patch, until its transition is reported.
	replaces  map[string]*Replace
	replacing string
}

// sawCallback lists a callback in the summary; state files it under its
// transition (filed), which lists it too. A pre-patch callback that failed
// an enable comes after the cancel (its error is klp_enable_patch's
// return), once that transition is reported: the summary shows it.
func (b *builder) sawCallback(e event.Event, filed bool, sum *Summary) {
	if len(sum.Callbacks) < maxCallbacks {
		sum.Callbacks = append(sum.Callbacks, b.callback(e.Patch, state.Callback{Kind: e.Callback, Object: e.Object,
			Func: e.Func, Time: e.Time, Duration: e.Duration, Ret: e.Ret, Bracketed: e.Bracketed}, filed))
	}
}

func (b *builder) callback(patch string, c state.Callback, filed bool) Callback {
	return Callback{Time: b.time(c.Time), Patch: patch, Object: c.Object, Callback: c.Kind, Func: c.Func,
		DurationNs: c.Duration, Bracketed: c.Bracketed, Ret: c.Ret, InTransition: filed}
}

func (b *builder) sawReplace(e event.Event) {
	switch e.Type {
	case event.PatchReplace:
		if b.replaces == nil {
			b.replaces = map[string]*Replace{}
		}
		if len(b.replaces) < 4096 {
			b.replaces[e.Patch] = &Replace{Replaced: []string{}}
		}
		b.replacing = e.Patch
	case event.PatchReplaced:
		if r := b.replaces[b.replacing]; r != nil && len(r.Replaced) < 64 {
			r.Replaced = append(r.Replaced, e.Patch)
		}
	case event.NopsDiscard:
		if r := b.replaces[e.Patch]; r != nil {
			r.NopsDiscarded = true
		}
	}
}

func (b *builder) sawModule(e event.Event, sum *Summary) {
	switch e.Type {
	case event.ModuleComing, event.ModuleGoing:
		if len(sum.Modules) < maxModules {
			ev := "coming"
			if e.Type == event.ModuleGoing {
				ev = "going"
			}
			sum.Modules = append(sum.Modules, Module{Time: b.time(e.Time), Event: ev, Module: e.Object, Patches: []string{}})
		}
	case event.ModuleApply, event.ModuleRevert:
		if n := len(sum.Modules); n > 0 && sum.Modules[n-1].Module == e.Object && len(sum.Modules[n-1].Patches) < 64 {
			sum.Modules[n-1].Patches = append(sum.Modules[n-1].Patches, e.Patch)
		}
	}
}

// sawStates keeps each patch's klp_states: they come before its
// transitions, and a patch that finished unpatching is gone from the state.
func (b *builder) sawStates(e event.Event) {
	switch e.Type {
	case event.PatchEnable:
		delete(b.klpStates, e.Patch)
	case event.KlpState:
		if e.ID == 0 {
			return
		}
		if b.klpStates == nil {
			b.klpStates = map[string][]KlpState{}
		}
		if len(b.klpStates) < 4096 && len(b.klpStates[e.Patch]) < 64 {
			b.klpStates[e.Patch] = append(b.klpStates[e.Patch], KlpState{ID: e.ID, Version: e.Version})
		}
	}
}

func newBuilder(h trace.Header) *builder {
	b := &builder{info: TraceInfo{Version: h.Version, Klptop: h.Klptop, Kernel: h.Kernel,
		Hostname: h.Host, BootID: h.BootID, StartWall: h.StartWall, Backend: h.Backend,
		Missing: h.Missing, Command: h.Command, LossCounted: h.LossCounted}}
	if b.info.Missing == nil {
		b.info.Missing = []trace.Missing{}
	}
	if w, err := time.Parse(time.RFC3339Nano, h.StartWall); err == nil && h.StartMono != 0 {
		b.wall = w.UTC()
	}
	if h.StartMono != 0 {
		b.base, b.haveBase = h.StartMono, true
	}
	b.signalsObservable = h.SignalsObservable()
	return b
}

// sawEvent takes the first event's time as the origin when the header has none.
func (b *builder) sawEvent(t uint64) {
	if !b.haveBase {
		b.base, b.haveBase = t, true
	}
}

func (b *builder) time(t uint64) Time {
	d := int64(t - b.base) // two's complement: events before the base come out negative
	out := Time{Mono: t, Offset: float64(d) / 1e9}
	if !b.wall.IsZero() {
		out.Wall = b.wall.Add(time.Duration(d)).Format(time.RFC3339Nano)
	}
	return out
}

func (b *builder) timep(t uint64) *Time {
	if t == 0 {
		return nil
	}
	x := b.time(t)
	return &x
}

func direction(target int) string {
	if target == event.StateUnpatched {
		return "unpatching"
	}
	return "patching"
}

func (b *builder) transition(en *state.Ended, sum *Summary) *Transition {
	st := en.Transition
	target := st.Target
	if st.Reversed%2 == 1 {
		target = 1 - target
	}
	t := &Transition{
		Index: en.Index, Patch: st.Patch, Direction: direction(target),
		Start: b.time(st.Start), Outcome: st.Outcome, Sweeps: st.Sweeps, Reverses: st.Reversed,
		Signals: st.Signals, SignalsObservable: b.signalsObservable, StartedBeforeRecording: st.Attached,
		Tasks: st.Total, Switched: st.Switched, Blockers: []Blocker{},
		KlpStates: slices.Clone(b.klpStates[st.Patch]),
	}
	if r := b.replaces[st.Patch]; r != nil {
		t.Replace = r
		delete(b.replaces, st.Patch)
	}
	for _, c := range st.Callbacks {
		t.Callbacks = append(t.Callbacks, b.callback(st.Patch, c, true))
	}
	t.LostEvents, t.StartResynced = st.Lost, st.StartResynced
	end := st.End
	switch {
	case st.EndResynced && !en.Unfinished:
		// The kernel ended it (sysfs said so); when, the lost events knew.
		t.Note = "its end fell where events were lost: a resync found it over"
		t.End = b.timep(end)
		t.EndIsUpperBound = true
		t.DurationNs = uint64(st.Elapsed(end))
	case en.Unfinished:
		t.Outcome = OutcomeUnfinished
		t.Note = "the trace ends before the transition did"
		t.DurationNs = uint64(st.Elapsed(en.Until))
	case en.EndLost:
		t.Outcome = OutcomeUnfinished
		t.Note = "its end was not recorded (events lost?) before the next transition began"
		t.DurationNs = uint64(st.Elapsed(st.End))
		t.End = b.timep(st.End)
		t.EndIsUpperBound = true
	default:
		x := b.time(end)
		t.End = &x
		t.DurationNs = uint64(st.Elapsed(end))
	}
	t.Stall = st.Sweeps > 1 || t.Outcome == OutcomeUnfinished
	if b.info.Backend == "poll" {
		// No sweeps seen: a task still pending at two polls held it up.
		for _, bl := range en.Blockers {
			t.Stall = t.Stall || bl.Checks > 1
		}
	}
	if t.Stall {
		for _, bl := range en.Blockers {
			r := Blocker{PID: bl.PID, TGID: bl.TGID, Comm: bl.Comm, Reason: bl.Reason, Func: bl.Func,
				Stack: bl.Stack, FirstCheck: b.timep(bl.FirstCheck), LastCheck: b.timep(bl.LastCheck),
				Checks: bl.Checks, Signals: bl.Signals, BlockedNs: bl.Blocked, Switched: b.timep(bl.SwitchedAt), SwitchPath: bl.SwitchPath}
			if r.Stack == nil {
				r.Stack = []string{}
			}
			t.Blockers = append(t.Blockers, r)
		}
	}
	sum.Transitions++
	sum.Outcomes[t.Outcome]++
	if t.Stall {
		sum.Stalls++
	}
	if t.Outcome == OutcomeUnfinished {
		sum.Unfinished++
	}
	return t
}

// ExitStatus is the status `klptop report` exits with: 1 when the trace is
// unreadable or holds a transition that never finished (so that scripts and
// CI can act on it), else 0.
func ExitStatus(sum *Summary, err error) int {
	if err != nil || (sum != nil && sum.Unfinished > 0) {
		return 1
	}
	return 0
}
