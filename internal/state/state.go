// Package state folds klptop events into what the kernel's livepatch core
// holds: the patch stack, the transition in progress and each task's
// patch_state. The live TUI, replay, report and export all use it, so one
// trace always yields the same state.
//
// Apply accepts any event sequence, including truncated, reordered or
// corrupt traces: it never panics and keeps its counters consistent.
package state

import (
	"cmp"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/klptop/klptop/internal/event"
)

// Outcomes of a transition.
const (
	OutcomeRunning   = "running"
	OutcomeComplete  = "complete"
	OutcomeReversed  = "reversed" // completed after an odd number of reverses: back where it started
	OutcomeCancelled = "cancelled"
	OutcomeForced    = "forced"
)

// maxHistory bounds History so that a long recording (or a fuzzer) cannot
// grow it without limit.
const maxHistory = 256

// maxReplaced bounds a patch's Replaced list.
const maxReplaced = 64

// State is everything known at time Now.
type State struct {
	// Now is the latest event time seen (CLOCK_MONOTONIC ns). It never goes
	// backwards, even if the trace does.
	Now uint64
	// Patches in stacking order, bottom first (the order of klp_patches).
	Patches []*Patch
	byName  map[string]*Patch // Patches by name
	// Transition is the transition in progress, nil when the kernel is idle.
	Transition *Transition
	// History holds finished transitions, oldest first.
	History []*Transition
	// Tasks by key: the PID, or for the per-CPU idle tasks (all PID 0), -1-cpu.
	Tasks map[int]*Task
	// Lost is the number of events lost (see event.Lost).
	Lost uint64
	// Repairs are the stretches in which events were lost, each ended by
	// a Resync, oldest first (at most maxRepairs); lostOpen is the one
	// not yet resynced, resync the Resync being read.
	Repairs  []*Repair
	lostOpen *Repair
	resync   *resyncing
	// SnapshotDone: the start-up snapshot has been read (SnapshotEnd seen).
	SnapshotDone bool

	// sweepChecked holds the tasks checked since the current sweep began,
	// nil outside a sweep; lostAtSweep is Lost when it began; aggregate:
	// the sweep sends successful checks only for blockers (event.Aggregate).
	sweepChecked map[int]bool
	lostAtSweep  uint64
	aggregate    bool
	// Funcs are the patched functions by object and name (see FuncList).
	Funcs map[string]*Func
	// Shadows are the shadow variable counts by shadow id (see ShadowList).
	Shadows map[uint64]*Shadow

	// replacing: the patch of the last patch_replace, which the
	// patch_replaced events after it name the victims of.
	replacing string
	// preUnpatch: pre-unpatch callbacks by patch, for the unpatching
	// transition that follows them.
	preUnpatch map[string][]Callback
	// going: the module of the last module_going, whose unload runs the
	// pre-unpatch callbacks of its objects with no transition.
	going string
	// callbackFiled: the last callback went under a transition.
	callbackFiled bool
}

// Patch is one livepatch on the stack.
type Patch struct {
	Name    string
	Enabled bool
	Replace bool
	// Forced: as klp_force_transition marks it, the kernel will never put
	// its module: the patch being removed by a forced unpatching, or every
	// patch a forced atomic replace supersedes. A forced patching leaves the
	// patch itself and the patches below it removable.
	Forced       bool
	InTransition bool
	// States is the patch's klp_state array (patch->states), in its order.
	States []KlpState
	// ReplacedBy: the atomic replace patch that unpatched this one, as the
	// kernel named it (patch_replaced, trace format 1.4). The patch stays
	// until the kernel frees it (replaced_free or patch_free).
	ReplacedBy string
	// Replaced: the patches this one replaced, as the kernel named them;
	// NopsDiscarded: the kernel discarded its nop functions.
	Replaced      []string
	NopsDiscarded bool
}

// Transition is one klp_init_transition .. klp_complete/cancel_transition.
// A reverse keeps the same Transition and flips Target.
type Transition struct {
	Patch  string
	Target int // event.StatePatched or event.StateUnpatched
	// Start is the time of klp_init_transition, or of the snapshot when klptop
	// attached mid-transition (Attached), in which case it is a lower bound.
	Start    uint64
	End      uint64 // 0 while running
	Outcome  string
	Attached bool
	Forced   bool
	Sweeps   int
	Reversed int
	// Signals counts the kernel's prods of pending tasks (event.Signal);
	// 0 also when the recorder could not see them (see
	// trace.Header.SignalsObservable).
	Signals int
	// Lost counts the events lost while it ran. StartResynced and
	// EndResynced: a resync found it begun, or ended, where events were
	// lost, so Start or End is when klptop resynced, not the kernel's.
	Lost                       uint64
	StartResynced, EndResynced bool
	// Total is the number of tasks taking part (patch_state 0 or 1) and
	// Switched how many of them are at Target.
	Total    int
	Switched int
	// The last klp_try_complete_transition sweep.
	LastSweep         uint64
	LastSweepDuration uint64
	LastSweepPending  int
	// Callbacks that ran for it: pre-unpatch ones just before an
	// unpatching, the enable's pre-patch ones, the post ones at the end,
	// and a pre-patch one whose failure cancelled it (reported after the
	// cancel). At most maxCallbacks.
	Callbacks []Callback
}

// Callback is one run of an object's callback (event.Callback).
type Callback struct {
	Kind, Object, Func string
	Time, Duration     uint64
	Ret                int32
	Bracketed          bool
}

const maxCallbacks = 32

// Task is one task's livepatch view.
type Task struct {
	PID, TGID  int
	Comm       string
	PatchState int
	// PendingSince is when the task last became pending (not at Target).
	PendingSince uint64
	// The last failed check: event.Reason* and, for ReasonSleeping, the
	// function that blocks the switch.
	Reason, Func string
	LastCheck    uint64
	Checks       int // failed checks in the current transition
	Signals      int // signals the kernel sent it in the current transition
	// Stack is the last kernel stack seen, innermost first.
	Stack []string
	// Running: at the last snapshot the task was on a CPU or runnable.
	Running bool
	// SwitchPath is how the task reached its current state (event.Path*).
	SwitchPath string
	SwitchedAt uint64
}

// New returns an empty state: no patches, no tasks, no transition.
func New() *State {
	return &State{Tasks: make(map[int]*Task)}
}

// Elapsed is how long the transition ran, or has been running at now.
func (t *Transition) Elapsed(now uint64) time.Duration {
	if t == nil {
		return 0
	}
	end := t.End
	if end == 0 {
		end = now
	}
	if end <= t.Start {
		return 0
	}
	d := end - t.Start
	if d > uint64(1<<63-1) {
		return time.Duration(1<<63 - 1)
	}
	return time.Duration(d)
}

// Patching reports whether the transition applies its patch (target 1)
// rather than removing it.
func (t *Transition) Patching() bool { return t != nil && t.Target == event.StatePatched }

// Pending returns the tasks not yet at the transition's target, longest
// pending first; nil when there is no transition.
func (s *State) Pending() []*Task {
	tr := s.Transition
	if tr == nil {
		return nil
	}
	var out []*Task
	for _, t := range s.Tasks {
		if participates(t.PatchState) && t.PatchState != tr.Target {
			out = append(out, t)
		}
	}
	slices.SortFunc(out, func(a, b *Task) int {
		if c := cmp.Compare(a.PendingSince, b.PendingSince); c != 0 {
			return c
		}
		return cmp.Compare(a.PID, b.PID)
	})
	return out
}

// Task returns the task with the given key (see State.Tasks), or nil.
func (s *State) Task(key int) *Task { return s.Tasks[key] }

// Patch returns the named patch, or nil.
func (s *State) Patch(name string) *Patch {
	return s.byName[name]
}

// Key is the key of e's subject task in State.Tasks.
func Key(e event.Event) int { return taskKey(e.PID, e.Comm, e.CPU) }

// Key is t's key in State.Tasks.
func (t *Task) Key() int { return taskKey(t.PID, t.Comm, 0) }

// taskKey gives each per-CPU idle task (PID 0, "swapper/N") its own key:
// the kernel switches them individually (klp_init_transition walks
// idle_task(cpu) for every possible CPU).
func taskKey(pid int, comm string, cpu int) int {
	if pid != 0 {
		return pid
	}
	if n, ok := strings.CutPrefix(comm, "swapper/"); ok {
		if c, err := strconv.Atoi(n); err == nil && c >= 0 && c < 1<<20 {
			return -1 - c
		}
	}
	if cpu < 0 || cpu >= 1<<20 {
		cpu = 0
	}
	return -1 - cpu
}

func participates(ps int) bool {
	return ps == event.StateUnpatched || ps == event.StatePatched
}

func validState(ps int) bool { return ps >= event.StateUnknown && ps <= event.StatePatched }

// target turns an event's target into 0 or 1: the kernel knows no other.
func target(t int) int {
	if t == event.StateUnpatched {
		return event.StateUnpatched
	}
	return event.StatePatched
}

// Apply folds one event into the state.
func (s *State) Apply(e event.Event) {
	if s.Tasks == nil {
		s.Tasks = make(map[int]*Task)
	}
	if e.Time > s.Now {
		s.Now = e.Time
	}
	if s.resync != nil && s.resyncEvent(e) {
		return
	}
	switch e.Type {
	case event.Resync:
		s.resync = &resyncing{at: e.Time, attached: e.Reason == event.ResyncAttached && e.Count == 0}
	case event.PatchSnapshot:
		s.patchSnapshot(e)
	case event.TaskSnapshot:
		s.taskSnapshot(e)
	case event.SnapshotEnd:
		s.snapshotEnd(e)
	case event.PatchEnable:
		p := s.ensurePatch(e.Patch)
		p.Replace = p.Replace || e.Replace
		p.States = nil // its klp_state events follow
	case event.TransitionInit:
		s.transitionInit(e)
	case event.TransitionStart:
		// klp_start_transition only sets TIF_PATCH_PENDING: nothing to fold.
	case event.SweepStart:
		if tr := s.Transition; tr != nil {
			tr.Sweeps++
			s.sweepChecked, s.lostAtSweep = map[int]bool{}, s.Lost
			s.aggregate = e.Aggregate
		}
	case event.SweepEnd:
		if tr := s.Transition; tr != nil {
			tr.LastSweep = e.Time
			tr.LastSweepDuration = e.Duration
			tr.LastSweepPending = max(e.Pending, 0)
			s.sweepDone(e.Time)
		}
		s.sweepChecked, s.aggregate = nil, false
	case event.TaskCheck:
		s.taskCheck(e)
	case event.TaskSwitch:
		s.taskSwitch(e)
	case event.TaskExit:
		s.taskExit(e)
	case event.TransitionForce:
		s.force(e)
	case event.TransitionReverse:
		s.reverse(e)
	case event.TransitionComplete:
		s.finish(e, false)
	case event.TransitionCancel:
		s.finish(e, true)
	case event.Lost:
		s.lost(e)
	case event.FuncStack:
		s.funcStack(e)
	case event.KlpState:
		s.klpState(e)
	case event.Shadow:
		s.shadow(e)
	case event.PatchReplace:
		if p := s.Patch(e.Patch); p != nil {
			p.Replaced = p.Replaced[:0]
			s.replacing = e.Patch
		}
	case event.PatchReplaced:
		if p := s.Patch(e.Patch); p != nil && s.replacing != "" && e.Patch != s.replacing {
			p.Enabled, p.ReplacedBy = false, s.replacing
			if np := s.Patch(s.replacing); np != nil && len(np.Replaced) < maxReplaced {
				np.Replaced = append(np.Replaced, e.Patch)
			}
		}
	case event.NopsDiscard:
		if p := s.Patch(e.Patch); p != nil {
			p.NopsDiscarded = true
		}
	case event.ReplacedFree:
		s.setPatches(slices.DeleteFunc(s.Patches, func(p *Patch) bool { return e.Patch != "" && p.ReplacedBy == e.Patch }))
	case event.PatchFree:
		s.removePatch(e.Patch)
	case event.Callback:
		s.callbackFiled = s.callback(e)
	case event.ModuleGoing:
		s.going = e.Object
	case event.Signal:
		t := s.task(e)
		t.Signals++
		if tr := s.Transition; tr != nil {
			tr.Signals++
		}
	}
}

// patchIndex is p's position in the stack, or -1. Patches on top are
// the ones events name, so the search starts there.
func (s *State) patchIndex(p *Patch) int {
	for i := len(s.Patches) - 1; i >= 0; i-- {
		if s.Patches[i] == p {
			return i
		}
	}
	return -1
}

// setPatches replaces the stack and reindexes it by name.
func (s *State) setPatches(ps []*Patch) {
	s.Patches = ps
	clear(s.byName)
	s.index(ps...)
}

func (s *State) index(ps ...*Patch) {
	if s.byName == nil {
		s.byName = make(map[string]*Patch, len(ps))
	}
	for _, p := range ps {
		s.byName[p.Name] = p
	}
}

// ensurePatch returns the named patch, pushing it on top of the stack if new
// (klp_enable_patch appends to klp_patches).
func (s *State) ensurePatch(name string) *Patch {
	if p := s.Patch(name); p != nil {
		return p
	}
	p := &Patch{Name: name}
	s.Patches = append(s.Patches, p)
	s.index(p)
	return p
}

func (s *State) removePatch(name string) {
	if p := s.Patch(name); p != nil {
		s.Patches = slices.Delete(s.Patches, s.patchIndex(p), s.patchIndex(p)+1)
		delete(s.byName, name)
	}
}

// task returns the subject task of e, creating it on first sight.
func (s *State) task(e event.Event) *Task {
	k := Key(e)
	t := s.Tasks[k]
	if t == nil {
		t = &Task{PID: e.PID, PatchState: event.StateIdle}
		if e.PID == 0 && !strings.HasPrefix(e.Comm, "swapper/") {
			t.Comm = "swapper/" + strconv.Itoa(-1-k)
		}
		s.Tasks[k] = t
	}
	if e.TGID != 0 {
		t.TGID = e.TGID
	}
	if e.Comm != "" {
		t.Comm = e.Comm
	}
	if len(e.Stack) > 0 {
		t.Stack = slices.Clone(e.Stack)
	}
	return t
}

// setState moves t to ps, keeping the transition's counters in step.
func (s *State) setState(t *Task, ps int, now uint64) {
	old := t.PatchState
	if tr := s.Transition; tr != nil {
		if participates(old) {
			tr.Total--
			if old == tr.Target {
				tr.Switched--
			}
		}
		if participates(ps) {
			tr.Total++
			if ps == tr.Target {
				tr.Switched++
			}
		}
		wasPending := participates(old) && old != tr.Target
		if participates(ps) && ps != tr.Target && !wasPending {
			t.PendingSince = now
		}
	}
	t.PatchState = ps
}

// recount recomputes the transition's counters from the tasks; used where
// many tasks change at once.
func (s *State) recount() {
	tr := s.Transition
	if tr == nil {
		return
	}
	tr.Total, tr.Switched = 0, 0
	for _, t := range s.Tasks {
		if participates(t.PatchState) {
			tr.Total++
			if t.PatchState == tr.Target {
				tr.Switched++
			}
		}
	}
}

func clearCheck(t *Task) {
	t.Reason, t.Func, t.Checks = "", "", 0
}

func (s *State) patchSnapshot(e event.Event) {
	p := s.Patch(e.Patch)
	if p == nil {
		p = &Patch{Name: e.Patch}
		// Seq is the stacking position; snapshots normally arrive in order,
		// but insert by position so that they need not.
		i := min(max(e.Seq, 0), len(s.Patches))
		s.Patches = slices.Insert(s.Patches, i, p)
		s.index(p)
	}
	p.Enabled, p.Replace, p.InTransition = e.Enabled, e.Replace, e.InTransition
	if e.InTransition && s.Transition == nil {
		// sysfs "enabled" is the transition's direction: the kernel sets
		// patch->enabled before starting it and flips it on reverse.
		tg := event.StateUnpatched
		if e.Enabled {
			tg = event.StatePatched
		}
		s.Transition = &Transition{Patch: e.Patch, Target: tg, Start: e.Time,
			Outcome: OutcomeRunning, Attached: true}
		s.recount()
		for _, t := range s.Tasks {
			if participates(t.PatchState) && t.PatchState != tg {
				t.PendingSince = e.Time
			}
		}
	}
}

func (s *State) taskSnapshot(e event.Event) {
	t := s.task(e)
	if validState(e.PatchState) {
		s.setState(t, e.PatchState, e.Time)
	}
	if tr := s.Transition; tr != nil && tr.Attached && t.PendingSince < tr.Start {
		t.PendingSince = tr.Start
	}
	if e.Reason != "" {
		t.Reason, t.Func = e.Reason, e.Func
	}
	t.Running = e.Running
}

// snapshotEnd covers a snapshot in which tasks are mid-transition but no
// patch said so (a race with sysfs, or a kernel without the attribute): the
// patch on top is the likeliest one, and the state most tasks hold the likeliest
// target, since pending tasks are usually few.
func (s *State) snapshotEnd(e event.Event) {
	s.SnapshotDone = true
	if s.Transition != nil {
		return
	}
	var n [2]int
	for _, t := range s.Tasks {
		if participates(t.PatchState) {
			n[t.PatchState]++
		}
	}
	if n[0]+n[1] == 0 {
		return
	}
	tr := &Transition{Target: event.StatePatched, Start: e.Time, Outcome: OutcomeRunning, Attached: true}
	if n[0] > n[1] {
		tr.Target = event.StateUnpatched
	}
	if len(s.Patches) > 0 {
		p := s.Patches[len(s.Patches)-1]
		p.InTransition = true
		tr.Patch = p.Name
	}
	s.Transition = tr
	s.recount()
	for _, t := range s.Tasks {
		if participates(t.PatchState) && t.PatchState != tr.Target && t.PendingSince < tr.Start {
			t.PendingSince = tr.Start
		}
	}
}

func (s *State) transitionInit(e event.Event) {
	if s.Transition != nil {
		// The end of the previous one was lost.
		s.finish(event.Event{Time: e.Time}, false)
	}
	tg := target(e.Target)
	p := s.ensurePatch(e.Patch)
	p.InTransition = true
	p.Enabled = tg == event.StatePatched
	p.Replace = p.Replace || e.Replace
	s.Transition = &Transition{Patch: e.Patch, Target: tg, Start: e.Time, Outcome: OutcomeRunning}
	if tg == event.StateUnpatched {
		s.Transition.Callbacks = s.preUnpatch[e.Patch]
	}
	delete(s.preUnpatch, e.Patch)
	s.going = ""
	// klp_init_transition sets every task to !target.
	for _, t := range s.Tasks {
		t.PatchState = 1 - tg
		t.PendingSince = e.Time
		t.SwitchPath, t.SwitchedAt = "", 0
		t.Signals = 0
		clearCheck(t)
	}
	s.recount()
}

func (s *State) taskCheck(e event.Event) {
	t := s.task(e)
	if s.sweepChecked != nil {
		s.sweepChecked[Key(e)] = true
	}
	tr := s.Transition
	if e.Reason == event.ReasonSwitched || (e.Reason == "" && e.Ret == 0) {
		if tr != nil {
			s.setState(t, tr.Target, e.Time)
			t.SwitchPath, t.SwitchedAt = event.PathSweep, e.Time
		}
		t.Reason, t.Func = "", ""
		return
	}
	t.Reason = e.Reason
	if t.Reason == "" {
		t.Reason = event.ReasonFor(e.Ret)
	}
	t.Func = ""
	if t.Reason == event.ReasonSleeping {
		t.Func = e.Func
	}
	t.LastCheck = e.Time
	t.Checks++
	if tr != nil && (!participates(t.PatchState) || t.PatchState == tr.Target) {
		// A task the kernel still checks is pending, whatever we believed. A
		// task first seen now has been pending since the transition began.
		since := e.Time
		if !participates(t.PatchState) {
			since = tr.Start
		}
		s.setState(t, 1-tr.Target, e.Time)
		t.PendingSince = since
	}
}

// sweepDone settles the tasks the sweep that ends at at did not report
// although we hold them pending. An aggregate sweep switched them (it sends
// every failed check); another sweep did not check them (dropUnchecked).
// After a loss inside the sweep a missing report proves nothing: the
// resync that follows the loss settles them.
func (s *State) sweepDone(at uint64) {
	tr := s.Transition
	if tr == nil || s.sweepChecked == nil || s.Lost != s.lostAtSweep {
		return
	}
	if !s.aggregate {
		s.dropUnchecked()
		return
	}
	for k, t := range s.Tasks {
		if participates(t.PatchState) && t.PatchState != tr.Target && !s.sweepChecked[k] {
			s.setState(t, tr.Target, at)
			t.SwitchPath, t.SwitchedAt = event.PathSweep, at
			t.Reason, t.Func = "", ""
		}
	}
}

// dropUnchecked forgets the tasks a whole sweep did not check although we
// hold them pending. klp_try_complete_transition walks every thread and calls
// klp_check_and_switch_task for each one not yet at the target, so such a
// task has exited unseen (release_task not probed, or its return missed)
// or switched where klptop could not see it; either way it does not block
// the transition. Only from sweepDone, which holds it back after a loss.
func (s *State) dropUnchecked() {
	tr := s.Transition
	for k, t := range s.Tasks {
		if participates(t.PatchState) && t.PatchState != tr.Target && !s.sweepChecked[k] {
			s.setState(t, event.StateIdle, s.Now)
			delete(s.Tasks, k)
		}
	}
}

// taskExit forgets a task the kernel took off its thread list: no sweep
// checks it again, so it neither blocks nor counts.
func (s *State) taskExit(e event.Event) {
	k := Key(e)
	if t := s.Tasks[k]; t != nil {
		s.setState(t, event.StateIdle, e.Time)
		delete(s.Tasks, k)
	}
}

func (s *State) taskSwitch(e event.Event) {
	t := s.task(e)
	ps := e.PatchState
	if !validState(ps) {
		return
	}
	s.setState(t, ps, e.Time)
	t.SwitchPath, t.SwitchedAt = e.Path, e.Time
	if tr := s.Transition; tr == nil || ps == tr.Target {
		t.Reason, t.Func = "", ""
	}
}

func (s *State) force(e event.Event) {
	tr := s.Transition
	if tr == nil {
		return
	}
	tr.Forced = true
	var replace bool
	for _, p := range s.Patches {
		if p.Name == tr.Patch {
			replace = p.Replace
		}
	}
	for _, p := range s.Patches {
		switch {
		case tr.Target == event.StateUnpatched && p.Name == tr.Patch:
			p.Forced = true
		case tr.Target == event.StatePatched && replace && p.Name != tr.Patch:
			p.Forced = true
		}
	}
	for _, t := range s.Tasks {
		if participates(t.PatchState) && t.PatchState != tr.Target {
			t.PatchState = tr.Target
			t.SwitchPath, t.SwitchedAt = event.PathForce, e.Time
			t.Reason, t.Func = "", ""
		}
	}
	s.recount()
}

// reverse mirrors klp_reverse_transition: the target flips, so tasks that had
// switched are pending again and pending ones are done.
func (s *State) reverse(e event.Event) {
	tr := s.Transition
	if tr == nil {
		return
	}
	old := tr.Target
	tr.Target = 1 - old
	tr.Reversed++
	for _, t := range s.Tasks {
		if t.PatchState == old {
			t.PendingSince = e.Time
			clearCheck(t)
		}
	}
	if p := s.Patch(tr.Patch); p != nil {
		p.Enabled = tr.Target == event.StatePatched
	}
	s.recount()
}

func (s *State) finish(e event.Event, cancelled bool) {
	tr := s.Transition
	if tr == nil {
		return
	}
	tr.End = max(e.Time, tr.Start)
	switch {
	case cancelled:
		tr.Outcome = OutcomeCancelled
	case tr.Forced:
		tr.Outcome = OutcomeForced
	case tr.Reversed%2 == 1:
		tr.Outcome = OutcomeReversed
	default:
		tr.Outcome = OutcomeComplete
	}
	// The sweep that completes a transition calls klp_complete_transition
	// before it returns: it has checked every pending task, so one it did
	// not report is settled as at a sweep's end.
	s.sweepDone(tr.End)
	// Freeze the counters as they were at the end, then idle every task as
	// klp_complete_transition does.
	if !cancelled {
		tr.Switched = tr.Total
	}
	for _, t := range s.Tasks {
		t.PatchState = event.StateIdle
		t.PendingSince = 0
		clearCheck(t)
	}
	if p := s.Patch(tr.Patch); p != nil {
		p.InTransition = false
		switch {
		case cancelled || tr.Target == event.StateUnpatched:
			// A cancelled enable or a finished disable frees the patch.
			s.removePatch(tr.Patch)
		case p.Replace:
			// Atomic replace: klp_free_replaced_patches_async frees every
			// other patch. Those the kernel named (patch_replaced) leave
			// when it says it frees them (replaced_free); the others, in a
			// trace without those events, now.
			s.setPatches(slices.DeleteFunc(s.Patches, func(o *Patch) bool { return o != p && o.ReplacedBy != p.Name }))
			s.replacing = ""
		}
	}
	s.History = append(s.History, tr)
	if len(s.History) > maxHistory {
		s.History = slices.Delete(s.History, 0, len(s.History)-maxHistory)
	}
	s.Transition = nil
}

// callback files a callback under the transition it ran for (see
// Transition.Callbacks); one of a module load belongs to none.
func (s *State) callback(e event.Event) bool {
	c := Callback{Kind: e.Callback, Object: e.Object, Func: e.Func, Time: e.Time, Duration: e.Duration, Ret: e.Ret, Bracketed: e.Bracketed}
	var tr *Transition
	switch {
	case s.Transition != nil && s.Transition.Patch == e.Patch:
		tr = s.Transition
	case e.Callback == event.CallbackPreUnpatch && s.Transition == nil && e.Object != s.going:
		if s.preUnpatch == nil {
			s.preUnpatch = map[string][]Callback{}
		}
		if len(s.preUnpatch) < 64 && len(s.preUnpatch[e.Patch]) < maxCallbacks {
			s.preUnpatch[e.Patch] = append(s.preUnpatch[e.Patch], c)
		}
		return true
	case e.Ret != 0 && s.Transition == nil:
		if last := s.Last(); last != nil && last.Patch == e.Patch && last.Outcome == OutcomeCancelled {
			tr = last
		}
	}
	if tr == nil {
		return false
	}
	if len(tr.Callbacks) < maxCallbacks {
		tr.Callbacks = append(tr.Callbacks, c)
	}
	return true
}

// CallbackFiled reports whether the last callback event went under a
// transition (Transition.Callbacks): false for a module load's.
func (s *State) CallbackFiled() bool { return s.callbackFiled }

// Last returns the most recent finished transition, or nil.
func (s *State) Last() *Transition {
	if len(s.History) == 0 {
		return nil
	}
	return s.History[len(s.History)-1]
}
