package state

import (
	"testing"

	"github.com/klptop/klptop/internal/event"
)

func TestFuncStacks(t *testing.T) {
	s := New()
	v := func(patch, fn string, nop, tr bool) event.FuncVersion {
		return event.FuncVersion{Patch: patch, Func: fn, Nop: nop, Patched: true, Transition: tr}
	}
	s.Apply(event.Event{Time: 1, Type: event.FuncStack, Func: "cmdline_proc_show", Object: "vmlinux",
		Versions: []event.FuncVersion{v("b", "new_b", false, true), v("a", "new_a", false, false)}})
	s.Apply(event.Event{Time: 2, Type: event.FuncStack, Func: "meminfo_proc_show", Object: "vmlinux",
		Versions: []event.FuncVersion{v("r", "", true, true)}})
	s.Apply(event.Event{Time: 2, Type: event.FuncStack, Func: "busymod_work_func", Object: "busymod",
		Versions: []event.FuncVersion{v("c", "new_c", false, false)}})
	l := s.FuncList()
	if len(l) != 3 || l[0].Object != "busymod" || l[1].Name != "cmdline_proc_show" {
		t.Fatalf("list %+v", l)
	}
	f := s.Func("vmlinux", "cmdline_proc_show")
	if !f.InTransition() || f.RunsFor(event.StatePatched) != 0 || f.RunsFor(event.StateUnpatched) != 1 {
		t.Errorf("cmdline: in transition %v, patched runs %d, unpatched runs %d", f.InTransition(), f.RunsFor(1), f.RunsFor(0))
	}
	m := s.Func("vmlinux", "meminfo_proc_show")
	if m.RunsFor(event.StatePatched) != -1 || m.RunsFor(event.StateUnpatched) != -1 || m.Describe(-1) != "meminfo_proc_show (original)" {
		t.Errorf("a nop alone runs the original either way")
	}
	if c := s.Func("busymod", "busymod_work_func"); c.RunsFor(event.StateUnpatched) != 0 || c.Describe(0) != "new_c (c)" {
		t.Errorf("no transition: the head runs for everyone")
	}
	s.Apply(event.Event{Time: 3, Type: event.FuncStack, Func: "meminfo_proc_show", Object: "vmlinux"})
	if s.Func("vmlinux", "meminfo_proc_show") != nil || len(s.Funcs) != 2 {
		t.Errorf("an empty stack removes the function")
	}
}
