package state

import (
	"cmp"
	"slices"

	"github.com/klptop/klptop/internal/event"
)

// Func is one patched function and its klp_ops func_stack.
type Func struct {
	Name   string // the old function
	Object string // "vmlinux" or a module
	// Versions newest first: the head is what callers run, but see RunsFor.
	Versions []event.FuncVersion
	Updated  uint64
}

func funcKey(object, name string) string { return object + "\x00" + name }

// FuncList returns the patched functions by object, then name.
func (s *State) FuncList() []*Func {
	out := make([]*Func, 0, len(s.Funcs))
	for _, f := range s.Funcs {
		out = append(out, f)
	}
	slices.SortFunc(out, func(a, b *Func) int {
		if c := cmp.Compare(a.Object, b.Object); c != 0 {
			return c
		}
		return cmp.Compare(a.Name, b.Name)
	})
	return out
}

// Func returns the function of object, or nil.
func (s *State) Func(object, name string) *Func { return s.Funcs[funcKey(object, name)] }

func (s *State) funcStack(e event.Event) {
	if e.Func == "" {
		return
	}
	k := funcKey(e.Object, e.Func)
	if len(e.Versions) == 0 {
		delete(s.Funcs, k)
		return
	}
	if s.Funcs == nil {
		s.Funcs = make(map[string]*Func)
	}
	s.Funcs[k] = &Func{Name: e.Func, Object: e.Object, Versions: slices.Clone(e.Versions), Updated: e.Time}
}

// InTransition reports whether the head of the stack is in a transition:
// then which version runs depends on the calling task's patch_state.
func (f *Func) InTransition() bool { return len(f.Versions) > 0 && f.Versions[0].Transition }

// RunsFor returns the index in Versions of the version a task in patchState
// runs, or -1 for the original function. It mirrors klp_ftrace_handler: the
// head, unless the head is in transition and the task is still unpatched,
// then the one below it (none: the original); a nop runs the original.
func (f *Func) RunsFor(patchState int) int {
	if len(f.Versions) == 0 {
		return -1
	}
	i := 0
	if f.Versions[0].Transition && patchState == event.StateUnpatched {
		i = 1
	}
	if i >= len(f.Versions) || f.Versions[i].Nop {
		return -1
	}
	return i
}

// Describe names version i (from RunsFor) for people: the new function and
// its patch, or the original.
func (f *Func) Describe(i int) string {
	if i < 0 || i >= len(f.Versions) {
		return f.Name + " (original)"
	}
	v := f.Versions[i]
	if v.Func == "" {
		return "? (" + v.Patch + ")"
	}
	return v.Func + " (" + v.Patch + ")"
}
