// Package event is the vocabulary every other klptop package speaks: what the
// kernel did during a livepatch transition, as seen by the probes or read from
// sysfs/procfs at start. Events are flat so that the trace format (one JSON
// object per line) and the in-memory form are the same thing.
package event

import (
	"fmt"
	"maps"
	"slices"
)

// Type names what happened. The values are written to traces: never rename one,
// add new ones instead (readers skip types they do not know).
type Type string

const (
	// PatchEnable: klp_enable_patch() entry, a livepatch module asks to be enabled.
	PatchEnable Type = "patch_enable"
	// TransitionInit: klp_init_transition(patch, state). Target is the state
	// every task will reach (1 patched, 0 unpatched).
	TransitionInit Type = "transition_init"
	// TransitionStart: klp_start_transition(), TIF_PATCH_PENDING set on all tasks.
	TransitionStart Type = "transition_start"
	// TransitionComplete: klp_complete_transition(), every task reached the target.
	TransitionComplete Type = "transition_complete"
	// TransitionReverse: klp_reverse_transition(), the patch was disabled while its
	// transition ran; Target is the new target.
	TransitionReverse Type = "transition_reverse"
	// TransitionCancel: klp_cancel_transition(), enabling failed before start.
	TransitionCancel Type = "transition_cancel"
	// TransitionForce: klp_force_transition(), sysfs force: every task switched.
	TransitionForce Type = "transition_force"
	// SweepStart and SweepEnd bracket klp_try_complete_transition(); SweepEnd
	// carries Duration, Checked (tasks checked), Pending (tasks whose check
	// failed in this sweep) and, in an Aggregate sweep, Aggregated.
	SweepStart Type = "sweep_start"
	SweepEnd   Type = "sweep_end"
	// TaskCheck: klp_check_and_switch_task() returned for the subject task.
	// Reason ReasonSwitched means the sweep switched it; in an Aggregate
	// sweep only a task that failed a check before has one.
	TaskCheck Type = "task_check"
	// TaskSwitch: the subject task reached PatchState by Path (user, idle, fork).
	// Switches by a sweep are TaskCheck events; by force, TransitionForce.
	TaskSwitch Type = "task_switch"
	// PatchSnapshot: one patch as /sys/kernel/livepatch showed it at start, in
	// stacking order (Seq). Only at the head of a recording.
	PatchSnapshot Type = "patch"
	// TaskSnapshot: one task's patch_state at start (BPF task iterator), with its
	// kernel stack when it is not in the target state.
	TaskSnapshot Type = "task"
	// SnapshotEnd marks the end of the start-up snapshot.
	SnapshotEnd Type = "snapshot_end"
	// Lost: Count events were lost, for Reason (a Lost* cause), in the
	// Duration ns before Time; Func, for a probe's missed runs, is the
	// probed function. A Resync follows.
	Lost Type = "lost"
	// Resync (1.9): after a loss, the snapshot events up to the next
	// SnapshotEnd (patches, their klp_states, every task, the func stacks)
	// are the kernel as it is now, replacing what the lost events would
	// have told: tasks and patches not in it are gone, a transition it
	// does not show has ended. Count is the events lost since the last one.
	// Reason ResyncAttached (1.11), with Count 0: nothing was lost; the
	// probes on forks, exits and wake-ups, attached only while a transition
	// runs, went on, and the snapshot settles the tasks that forked or
	// exited before they did.
	Resync Type = "resync"
	// FuncStack (1.1): one patched function's klp_ops func_stack: Func is the
	// old function, Object "vmlinux" or the module it lives in, Versions the
	// stack newest first. Sent in the snapshot and whenever a stack changes;
	// empty Versions means no patch touches the function any more.
	FuncStack Type = "func_stack"
	// Signal (1.2): during a sweep, the kernel's klp_send_signals() prodded
	// the subject task, which still blocks the transition (every 15th sweep,
	// SIGNALS_TIMEOUT). Path says how: PathWake for a kthread (woken if it
	// sleeps interruptibly), PathSignal for a user task (a fake signal,
	// TIF_NOTIFY_SIGNAL). PatchState is the task's state then.
	Signal Type = "signal"
	// KlpState (1.3): one struct klp_state of Patch (patch->states, the
	// array klp_for_each_state walks): ID and Version. Sent right after
	// the patch's PatchEnable (klp_enable_patch), and in the snapshot
	// after the PatchSnapshot events for the patches already loaded.
	KlpState Type = "klp_state"
	// Shadow (1.3): the shadow variables of one shadow ID, counted since
	// klptop attached (cumulative): Allocs allocated, Frees freed, Live the
	// difference, Calls the calls of each klp_shadow_* function by name.
	// Sent when the counts changed, at most every poll interval and at the
	// end of a recording; never one event per call.
	Shadow Type = "shadow"

	// Modules (1.4). ModuleComing and ModuleGoing: klp_module_coming() and
	// klp_module_going(), a module (Object) loads or unloads. ModuleApply:
	// the kernel applies Patch to the coming module Object
	// (klp_patch_object() on a module in MODULE_STATE_COMING); ModuleRevert:
	// reverts Patch on the going module (klp_unpatch_object(), going).
	ModuleComing Type = "module_coming"
	ModuleGoing  Type = "module_going"
	ModuleApply  Type = "module_apply"
	ModuleRevert Type = "module_revert"

	// Atomic replace (1.4). PatchReplace: klp_unpatch_replaced_patches(),
	// Patch unpatches the patches below it, each named by a PatchReplaced
	// right after it, from the kernel's klp_patches. NopsDiscard:
	// klp_discard_nops(), Patch's nop functions removed. ReplacedFree:
	// klp_free_replaced_patches_async(), the patches Patch replaced are
	// freed. PatchFree: klp_free_patch_async(), Patch is freed.
	PatchReplace  Type = "patch_replace"
	PatchReplaced Type = "patch_replaced"
	NopsDiscard   Type = "nops_discard"
	ReplacedFree  Type = "replaced_free"
	PatchFree     Type = "patch_free"

	// Callback (1.5): one of an object's callbacks returned. Patch owns
	// it, Object is the klp_object ("vmlinux" or a module), Callback which
	// of the four it is, Func its symbol, Duration how long it ran and,
	// for a pre-patch callback, Ret what it returned (non-zero: the patch
	// or the module load failed). Bracketed: klptop could not probe the
	// callback itself (the enable's pre-patch callbacks run before user
	// space can see the patch), so Duration spans it from the kernel's own
	// steps around it (klp_init_transition or the previous object's
	// klp_patch_object, to the next klp_patch_object or the cancel).
	Callback Type = "callback"

	// TaskExit (1.8): release_task() took the subject task off the kernel's
	// thread list during a transition; no sweep checks it again.
	// PatchState is its state then. Tasks released outside a transition
	// are not reported.
	TaskExit Type = "task_exit"
)

// CallbacksPoint is how a trace header's attached list says the callbacks
// were probed: on each patch's own callback functions, as klptop saw them.
const CallbacksPoint = "klp_object.callbacks"

// Callbacks, struct klp_callbacks, in the kernel's order.
const (
	CallbackPrePatch    = "pre_patch"
	CallbackPostPatch   = "post_patch"
	CallbackPreUnpatch  = "pre_unpatch"
	CallbackPostUnpatch = "post_unpatch"
)

// The kernel functions behind Shadow's Calls.
const (
	ShadowAlloc      = "klp_shadow_alloc"
	ShadowGetOrAlloc = "klp_shadow_get_or_alloc"
	ShadowFree       = "klp_shadow_free"
	ShadowFreeAll    = "klp_shadow_free_all"
)

// FuncVersion is one klp_func on a function's stack.
type FuncVersion struct {
	Patch string `json:"patch"`
	// Func is the new function's symbol; empty for a nop (an atomic-replace
	// patch's placeholder that runs the original function).
	Func       string `json:"func,omitempty"`
	Nop        bool   `json:"nop,omitempty"`
	Patched    bool   `json:"patched,omitempty"`
	Transition bool   `json:"transition,omitempty"`
}

// Reasons a task did not switch, as the kernel's own check reports them.
const (
	ReasonSwitched   = "switched"         // returned 0: switched by the sweep
	ReasonRunning    = "running"          // -EBUSY: running on another CPU
	ReasonUnreliable = "unreliable_stack" // -EINVAL: stack could not be walked reliably
	ReasonSleeping   = "sleeping_on_func" // -EADDRINUSE: a to-be-(un)patched function is on its stack
)

// Paths a task switches by.
const (
	PathUser  = "user"  // klp_update_patch_state() on exit to user space
	PathIdle  = "idle"  // klp_update_patch_state() from the idle loop
	PathFork  = "fork"  // klp_copy_process(): a new task inherits its parent's state
	PathSweep = "sweep" // klp_check_and_switch_task() from a sweep
	PathForce = "force" // klp_force_transition()
	// PathExit: a blocked task left by exiting (TaskExit), not by switching.
	PathExit = "exit"
	// PathResync: the task switched while events were lost; a Resync
	// found it at the target.
	PathResync = "resync"
	// PathSched: a task checked itself outside a sweep, by a scheduler
	// path klptop could not tell apart (__klp_sched_try_switch() not
	// traceable, or traces before format 1.4).
	PathSched = "sched"
	// PathSchedTrySwitch: in __klp_sched_try_switch(), called from
	// cond_resched() (6.4 to 6.15) while the task's patch is pending.
	PathSchedTrySwitch = "klp_sched_try_switch"
	// PathSchedule: from __schedule() (6.16+: klp_sched_try_switch() is
	// inlined there and runs on TASK_FREEZABLE sleeps).
	PathSchedule = "__schedule"
)

// Causes of a Lost event (its Reason).
const (
	LostRingFull = "ring_full" // the events ring had no room (bpf_ringbuf_reserve failed)
	// LostMissed: a kprobe or kretprobe did not run its BPF program (the
	// link's missed count: another BPF program was running on that CPU,
	// or no kretprobe instance was free).
	LostMissed = "missed"
	// LostRecursion: an fentry program did not run because one was already
	// running on that CPU (the program's recursion_misses).
	LostRecursion = "recursion"
	// LostUndecodable: a ring record klptop could not decode.
	LostUndecodable = "undecodable"
)

// ResyncAttached is the Reason of a Resync that repairs no loss: the
// probes attached only during a transition went on (see Resync).
const ResyncAttached = "probes_attached"

// LostWords says a Lost cause in words.
func LostWords(cause string) string {
	switch cause {
	case LostRingFull, "":
		return "ring buffer full"
	case LostMissed:
		return "probe missed"
	case LostRecursion:
		return "fentry recursion"
	case LostUndecodable:
		return "undecodable record"
	}
	return cause
}

// SchedTrySwitchProbe is the out-of-line function both scheduler paths call.
const SchedTrySwitchProbe = "__klp_sched_try_switch"

// SignalSymbol is the kernel function that sends the signals. It is
// inlined, so klptop probes SignalProbe, which it calls, instead; a trace
// whose header lists SignalProbe as attached observed every Signal.
const (
	SignalSymbol = "klp_send_signals"
	SignalProbe  = "wake_up_state"
)

// Paths of a Signal: how klp_send_signals() reached the task.
const (
	PathWake   = "wake"   // a kthread: wake_up_state(task, TASK_INTERRUPTIBLE)
	PathSignal = "signal" // a user task: set_notify_signal(), a fake signal
)

// Patch states, task_struct.patch_state.
const (
	StateUnknown   = -2 // klptop could not read it (field missing)
	StateIdle      = -1 // KLP_UNDEFINED / KLP_TRANSITION_IDLE
	StateUnpatched = 0
	StatePatched   = 1
)

// Errno values klp_check_and_switch_task returns (x86-64 / asm-generic).
const (
	errBUSY      = 16
	errINVAL     = 22
	errADDRINUSE = 98
)

// ReasonFor maps klp_check_and_switch_task's return value to a reason.
func ReasonFor(ret int32) string {
	switch ret {
	case 0:
		return ReasonSwitched
	case -errBUSY:
		return ReasonRunning
	case -errINVAL:
		return ReasonUnreliable
	case -errADDRINUSE:
		return ReasonSleeping
	}
	return fmt.Sprintf("errno_%d", -ret)
}

// Event is one thing the kernel did. Time is CLOCK_MONOTONIC in nanoseconds
// (bpf_ktime_get_ns); events from the snapshot carry the time it was taken.
// Fields that do not apply to a Type are left zero and omitted in traces.
type Event struct {
	Time uint64 `json:"t"`
	Type Type   `json:"type"`
	CPU  int    `json:"cpu,omitempty"`

	// The subject task, where there is one (the task checked, switched, forked).
	PID  int    `json:"pid,omitempty"`
	TGID int    `json:"tgid,omitempty"`
	Comm string `json:"comm,omitempty"`

	// Patch is the livepatch's name (its module name, the sysfs directory).
	Patch   string `json:"patch,omitempty"`
	Replace bool   `json:"replace,omitempty"`
	Enabled bool   `json:"enabled,omitempty"`
	// InTransition: a PatchSnapshot's sysfs "transition" attribute.
	InTransition bool `json:"transition,omitempty"`
	// Seq is a PatchSnapshot's position in the stacking order, 0 = bottom.
	Seq int `json:"seq,omitempty"`
	// Target is the transition's target state; pointer-free but explicit.
	Target int `json:"target"`

	// TaskCheck: the kernel's return value, the reason derived from it, and for
	// ReasonSleeping the function on the stack that blocks the switch.
	Ret    int32  `json:"ret,omitempty"`
	Reason string `json:"reason,omitempty"`
	Func   string `json:"func,omitempty"`

	// TaskSwitch / TaskSnapshot: the state reached or read, and how.
	PatchState int    `json:"patch_state"`
	Path       string `json:"path,omitempty"`
	// TaskSnapshot: the task was on a CPU or runnable when read, so its
	// stack shows no place where it sleeps.
	Running bool `json:"running,omitempty"`

	// SweepEnd.
	Duration uint64 `json:"duration_ns,omitempty"`
	Pending  int    `json:"pending,omitempty"`
	Checked  int    `json:"checked,omitempty"`
	// SweepStart and SweepEnd (1.10): Aggregate, the sweep's successful
	// checks are sent only for tasks that failed one earlier in the
	// transition; Aggregated, at SweepEnd, counts the others. Every task
	// pending before such a sweep and not failed in it was switched by it.
	Aggregate  bool `json:"aggregate,omitempty"`
	Aggregated int  `json:"aggregated,omitempty"`

	// Lost.
	Count uint64 `json:"count,omitempty"`

	// FuncStack: Func is the old function; Object where it lives.
	Object   string        `json:"object,omitempty"`
	Versions []FuncVersion `json:"versions,omitempty"`

	// KlpState: klp_state.id and .version. Shadow: the shadow variable id.
	ID      uint64 `json:"id,omitempty"`
	Version int    `json:"version,omitempty"`

	// Shadow: counts since klptop attached.
	Allocs uint64            `json:"allocs,omitempty"`
	Frees  uint64            `json:"frees,omitempty"`
	Live   int64             `json:"live,omitempty"`
	Calls  map[string]uint64 `json:"calls,omitempty"`

	// Callback: which one (CallbackPrePatch...), and whether it was timed
	// from around it rather than probed.
	Callback  string `json:"callback,omitempty"`
	Bracketed bool   `json:"bracketed,omitempty"`

	// Stack is the subject task's kernel stack, symbolized ("func+0x1c/0x40 [mod]"),
	// innermost first. Sent when it changes, not on every check.
	Stack []string `json:"stack,omitempty"`
}

func (e Event) String() string {
	s := fmt.Sprintf("%d %s", e.Time, e.Type)
	if e.Patch != "" {
		s += " patch=" + e.Patch
	}
	if e.PID != 0 {
		s += fmt.Sprintf(" pid=%d comm=%s", e.PID, e.Comm)
	}
	if e.Reason != "" {
		s += " reason=" + e.Reason
	}
	if e.Func != "" {
		s += " func=" + e.Func
	}
	return s
}

var known = map[Type]bool{
	PatchEnable: true, TransitionInit: true, TransitionStart: true,
	TransitionComplete: true, TransitionReverse: true, TransitionCancel: true,
	TransitionForce: true, SweepStart: true, SweepEnd: true, TaskCheck: true,
	TaskSwitch: true, PatchSnapshot: true, TaskSnapshot: true, SnapshotEnd: true,
	Lost: true, FuncStack: true, Signal: true, KlpState: true, Shadow: true,
	ModuleComing: true, ModuleGoing: true, ModuleApply: true, ModuleRevert: true,
	PatchReplace: true, PatchReplaced: true, NopsDiscard: true, ReplacedFree: true,
	PatchFree: true, Callback: true, TaskExit: true, Resync: true,
}

// Known reports whether t is a type this version of klptop understands.
func Known(t Type) bool { return known[t] }

// Types is every type this version of klptop understands, sorted.
func Types() []Type { return slices.Sorted(maps.Keys(known)) }
