// Package status is `klptop status`: the livepatch picture at one moment,
// for scripts: patches in stacking order, the transition if any, the tasks
// holding it up and why, and every patched function's stack.
//
// It attaches no probe, so the kernel's own per-task reasons (seen only when
// a sweep checks a task) are out of reach; a pending task's reason is
// derived from its kernel stack the way klp_check_and_switch_task would: a
// task on a CPU is running, a frame in a function the transition must replace
// blocks the switch. A task caught running or runnable, or whose stack came
// back empty, has its stack read again (Reread) before its reason is settled.
// Elapsed time is unknown for the same reason: the transition began before
// klptop looked.
package status

import (
	"encoding/json"
	"fmt"
	"io"
	"slices"
	"strings"
	"time"

	"github.com/klptop/klptop/internal/event"
	"github.com/klptop/klptop/internal/state"
)

// Reasons a pending task has, from its stack.
const (
	ReasonSleeping = event.ReasonSleeping // a frame in a function the transition replaces
	ReasonRunning  = event.ReasonRunning  // on a CPU or runnable at every read
	ReasonNoFrame  = "no_patched_func_on_stack"
	ReasonNoStack  = "stack_unread" // asleep, but its stack came back empty at every read
)

// ReasonSource says where reasons come from; part of the JSON so that a
// consumer never mistakes them for the kernel's.
const ReasonSource = "stack"

// Status is the picture. Its JSON form is the `--json` output.
type Status struct {
	Kernel       string      `json:"kernel,omitempty"`
	Patches      []Patch     `json:"patches"`
	Transition   *Transition `json:"transition"`
	Pending      []Task      `json:"pending"`
	ReasonSource string      `json:"reason_source"`
	Functions    []Function  `json:"functions"`
	// FunctionsNote says why Functions is not observable, when it is not.
	FunctionsNote string `json:"functions_note,omitempty"`

	blocking map[string]bool // the functions pending tasks may sleep in
}

// Patch is one livepatch, in stacking order (bottom first).
type Patch struct {
	Name       string `json:"name"`
	Enabled    bool   `json:"enabled"`
	Transition bool   `json:"transition"`
	Replace    bool   `json:"replace"`
	// States is the patch's klp_state array (omitted when it has none).
	States []KlpState `json:"states,omitempty"`
}

// KlpState is one struct klp_state: an id the patch declares it changes the
// system for, and the version of that change.
type KlpState struct {
	ID      uint64 `json:"id"`
	Version int    `json:"version"`
}

// Transition is the transition in progress.
type Transition struct {
	Patch     string `json:"patch"`
	Direction string `json:"direction"` // patching, unpatching
	Target    int    `json:"target"`
	Tasks     int    `json:"tasks"`
	Switched  int    `json:"switched"`
}

// Task is a task not yet at the transition's target.
type Task struct {
	PID        int      `json:"pid"`
	TGID       int      `json:"tgid"`
	Comm       string   `json:"comm"`
	PatchState int      `json:"patch_state"`
	Reason     string   `json:"reason"`
	Func       string   `json:"func,omitempty"`
	Stack      []string `json:"stack,omitempty"`
	// Reads is how many times its stack was read before the reason settled.
	Reads int `json:"reads"`
}

// Function is one patched function's stack and who runs what.
type Function struct {
	Func   string `json:"func"`
	Object string `json:"object"`
	// Runs is what every task runs; during a transition of this function,
	// RunsPatched and RunsUnpatched say it per task state instead.
	Runs          string              `json:"runs,omitempty"`
	RunsPatched   string              `json:"runs_patched,omitempty"`
	RunsUnpatched string              `json:"runs_unpatched,omitempty"`
	Versions      []event.FuncVersion `json:"versions"`
}

// Build makes the status from a state folded from a snapshot.
func Build(st *state.State, kernel, funcsNote string) Status {
	s := Status{Kernel: kernel, ReasonSource: ReasonSource, FunctionsNote: funcsNote,
		Patches: []Patch{}, Pending: []Task{}, Functions: []Function{}}
	for _, p := range st.Patches {
		sp := Patch{Name: p.Name, Enabled: p.Enabled, Transition: p.InTransition, Replace: p.Replace}
		for _, k := range p.States {
			sp.States = append(sp.States, KlpState{ID: k.ID, Version: k.Version})
		}
		s.Patches = append(s.Patches, sp)
	}
	funcs := st.FuncList()
	for _, f := range funcs {
		fn := Function{Func: f.Name, Object: f.Object, Versions: f.Versions}
		if f.InTransition() {
			fn.RunsPatched = f.Describe(f.RunsFor(event.StatePatched))
			fn.RunsUnpatched = f.Describe(f.RunsFor(event.StateUnpatched))
		} else {
			fn.Runs = f.Describe(f.RunsFor(event.StatePatched))
		}
		s.Functions = append(s.Functions, fn)
	}
	tr := st.Transition
	if tr == nil {
		return s
	}
	s.Transition = &Transition{Patch: tr.Patch, Direction: direction(tr.Target), Target: tr.Target,
		Tasks: tr.Total, Switched: tr.Switched}
	s.blocking = blockingFuncs(funcs, tr)
	for _, t := range st.Pending() {
		pt := Task{PID: t.PID, TGID: t.TGID, Comm: t.Comm, PatchState: t.PatchState}
		s.classify(&pt, t.Stack, t.Running)
		s.Pending = append(s.Pending, pt)
	}
	return s
}

// classify gives t its reason from one read of its stack.
func (s *Status) classify(t *Task, stack []string, running bool) {
	t.Reads++
	t.Stack, t.Func = stack, ""
	switch {
	case running:
		// klp_check_and_switch_task does not look at the stack of a task
		// on a CPU; a runnable one is about to leave whatever frame it shows.
		t.Reason = ReasonRunning
	case len(stack) == 0:
		t.Reason = ReasonNoStack
	default:
		t.Reason = ReasonNoFrame
		for _, fr := range stack {
			if name := frameFunc(fr); s.blocking[name] {
				t.Reason, t.Func = ReasonSleeping, name
				break
			}
		}
	}
}

// settled: a task asleep with a stack read is where it is until it wakes.
func settled(t Task) bool { return t.Reason == ReasonSleeping || t.Reason == ReasonNoFrame }

// Unsettled is how many pending tasks were running, runnable or without a
// stack at their last read.
func (s *Status) Unsettled() int {
	n := 0
	for _, t := range s.Pending {
		if !settled(t) {
			n++
		}
	}
	return n
}

// Reread folds a fresh read of the tasks (TaskSnapshot events) into the
// unsettled ones; a task now at the target switched meanwhile and leaves
// the pending list.
func (s *Status) Reread(evs []event.Event) {
	tr := s.Transition
	if tr == nil {
		return
	}
	// By pid and comm: every CPU's idle task is pid 0.
	type key struct {
		pid  int
		comm string
	}
	unsettled := make(map[key]int, len(s.Pending))
	for i, t := range s.Pending {
		if !settled(t) {
			unsettled[key{t.PID, t.Comm}] = i
		}
	}
	gone := map[int]bool{}
	for _, e := range evs {
		i, ok := unsettled[key{e.PID, e.Comm}]
		if !ok || e.Type != event.TaskSnapshot {
			continue
		}
		if e.PatchState == tr.Target {
			gone[i] = true
			tr.Switched++
			continue
		}
		s.classify(&s.Pending[i], e.Stack, e.Running)
	}
	if len(gone) > 0 {
		kept := s.Pending[:0]
		for i, t := range s.Pending {
			if !gone[i] {
				kept = append(kept, t)
			}
		}
		s.Pending = kept
	}
}

// Settle rereads the unsettled tasks' stacks, at most len(pauses) times,
// sleeping each pause before its read: a task caught between two sleeps is
// back in one a moment later.
func (s *Status) Settle(read func() ([]event.Event, error), pauses ...time.Duration) error {
	for _, p := range pauses {
		if s.Unsettled() == 0 {
			return nil
		}
		time.Sleep(p)
		evs, err := read()
		if err != nil {
			return err
		}
		s.Reread(evs)
	}
	return nil
}

// blockingFuncs are the functions klp_check_stack looks for: unpatching,
// the transition patch's new functions; patching, what ran before it (the
// version below on the stack, or the original).
func blockingFuncs(funcs []*state.Func, tr *state.Transition) map[string]bool {
	out := make(map[string]bool)
	for _, f := range funcs {
		i := slices.IndexFunc(f.Versions, func(v event.FuncVersion) bool { return v.Patch == tr.Patch })
		if i < 0 {
			continue
		}
		v := f.Versions[i]
		if tr.Target == event.StatePatched {
			if i+1 < len(f.Versions) && !f.Versions[i+1].Nop && f.Versions[i+1].Func != "" {
				out[f.Versions[i+1].Func] = true
			} else {
				out[f.Name] = true
			}
		} else if v.Nop || v.Func == "" {
			out[f.Name] = true // a nop's new function is the original
		} else {
			out[v.Func] = true
		}
	}
	return out
}

func direction(target int) string {
	if target == event.StatePatched {
		return "patching"
	}
	return "unpatching"
}

// frameFunc is the function of a symbolized frame ("fn+0x1c/0x40 [mod]").
func frameFunc(f string) string {
	f = strings.TrimSpace(f)
	if i := strings.IndexAny(f, "+ "); i >= 0 {
		f = f[:i]
	}
	return f
}

// JSON writes s as one indented JSON document.
func (s Status) JSON(w io.Writer) error {
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	return enc.Encode(s)
}

// Text writes s for people.
func (s Status) Text(w io.Writer) error {
	var b strings.Builder
	if s.Kernel != "" {
		fmt.Fprintf(&b, "kernel %s\n", s.Kernel)
	}
	b.WriteString("\npatches (stacking order, bottom first):\n")
	if len(s.Patches) == 0 {
		b.WriteString("  none\n")
	}
	for i, p := range s.Patches {
		var flags []string
		flags = append(flags, map[bool]string{true: "enabled", false: "disabled"}[p.Enabled])
		if p.Replace {
			flags = append(flags, "replace")
		}
		if p.Transition {
			flags = append(flags, "in transition")
		}
		fmt.Fprintf(&b, "  %d  %s  %s\n", i, p.Name, strings.Join(flags, ", "))
		if len(p.States) > 0 {
			fmt.Fprintf(&b, "     klp_state %s\n", StatesText(p.States))
		}
	}
	b.WriteString("\ntransition: ")
	if tr := s.Transition; tr == nil {
		b.WriteString("none\n")
	} else {
		fmt.Fprintf(&b, "%s %s, %d of %d tasks switched, elapsed unknown (status attaches no probes)\n",
			tr.Patch, tr.Direction, tr.Switched, tr.Tasks)
		fmt.Fprintf(&b, "\npending tasks (%d; reasons from each task's kernel stack, not the kernel's own check):\n", len(s.Pending))
		if len(s.Pending) == 0 {
			b.WriteString("  none\n")
		}
		for _, t := range s.Pending {
			var why string
			switch t.Reason {
			case ReasonSleeping:
				why = "sleeping in " + t.Func
			case ReasonRunning:
				why = fmt.Sprintf("running: on a CPU or runnable at %s", reads(t.Reads))
			case ReasonNoStack:
				why = fmt.Sprintf("cannot tell: asleep, but its stack read empty at %s", reads(t.Reads))
			default:
				why = "asleep with no function being (un)patched on its stack: switches at the next sweep"
			}
			fmt.Fprintf(&b, "  %-7d %-16s patch_state %d  %s\n", t.PID, t.Comm, t.PatchState, why)
			if t.Reason == ReasonSleeping {
				for _, f := range t.Stack {
					mark := "   "
					if frameFunc(f) == t.Func {
						mark = " > "
					}
					fmt.Fprintf(&b, "         %s%s\n", mark, f)
				}
			}
		}
	}
	b.WriteString("\nfunctions:\n")
	if s.FunctionsNote != "" {
		fmt.Fprintf(&b, "  function stacks not observable here: %s\n", s.FunctionsNote)
	} else if len(s.Functions) == 0 {
		b.WriteString("  none patched\n")
	}
	for _, f := range s.Functions {
		fmt.Fprintf(&b, "  %s [%s]\n", f.Func, f.Object)
		if f.Runs != "" {
			fmt.Fprintf(&b, "    runs: %s\n", f.Runs)
		} else {
			fmt.Fprintf(&b, "    runs: %s for patched tasks, %s for unpatched tasks\n", f.RunsPatched, f.RunsUnpatched)
		}
		for i, v := range f.Versions {
			fmt.Fprintf(&b, "    %d  %-24s %s\n", i, v.Patch, versionText(v))
		}
	}
	_, err := io.WriteString(w, b.String())
	return err
}

func reads(n int) string {
	if n == 1 {
		return "its one read"
	}
	return fmt.Sprintf("each of %d reads", n)
}

func versionText(v event.FuncVersion) string {
	s := v.Func
	if v.Nop {
		s = "nop (runs the original)"
	}
	var flags []string
	if v.Patched {
		flags = append(flags, "patched")
	}
	if v.Transition {
		flags = append(flags, "transition")
	}
	if len(flags) > 0 {
		s += "  [" + strings.Join(flags, ", ") + "]"
	}
	return s
}

// StatesText is a patch's klp_states as "id 1 v2, id 7 v1".
func StatesText(states []KlpState) string {
	var parts []string
	for _, k := range states {
		parts = append(parts, fmt.Sprintf("id %d v%d", k.ID, k.Version))
	}
	return strings.Join(parts, ", ")
}
