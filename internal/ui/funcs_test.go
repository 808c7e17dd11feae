package ui

import (
	"testing"

	"github.com/klptop/klptop/internal/event"
)

// handMadeFuncs: the stall's patch on busymod_work_func in transition, and
// two finished patches stacked on cmdline_proc_show under an atomic
// replace's nop.
func handMadeFuncs(at uint64) []event.Event {
	v := func(patch, fn string, nop, tr bool) event.FuncVersion {
		return event.FuncVersion{Patch: patch, Func: fn, Nop: nop, Patched: true, Transition: tr}
	}
	return []event.Event{
		{Time: at, Type: event.FuncStack, Func: "busymod_work_func", Object: "test_klp_callbacks_busy",
			Versions: []event.FuncVersion{v("test_klp_callbacks_demo", "patched_work_func", false, true)}},
		{Time: at, Type: event.FuncStack, Func: "cmdline_proc_show", Object: "vmlinux",
			Versions: []event.FuncVersion{v("test_klp_atomic_replace", "", true, false),
				v("test_klp_livepatch", "livepatch_cmdline_proc_show", false, false),
				v("livepatch_sample", "livepatch_cmdline_proc_show", false, false)}},
		{Time: at, Type: event.FuncStack, Func: "meminfo_proc_show", Object: "vmlinux",
			Versions: []event.FuncVersion{v("test_klp_atomic_replace", "livepatch_meminfo_proc_show", false, false)}},
	}
}

func TestGoldenFuncs(t *testing.T) {
	stall := handMadeStall()
	end := stall[len(stall)-1].Time
	evs := append(append([]event.Event{}, stall...), handMadeFuncs(end)...)
	for _, tc := range []struct {
		name string
		w, h int
		evs  []event.Event
		keys []string
	}{
		{"funcs_120x40", 120, 40, evs, []string{"f", "down"}},
		{"funcs_80x24", 80, 24, evs, []string{"f"}},
		{"funcs_empty_80x24", 80, 24, stall, []string{"f"}},
		{"funcs_transition_120x40", 120, 40, evs, []string{"f", "enter"}},
		{"funcs_nop_120x40", 120, 40, evs, []string{"f", "down", "enter"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			m := newTest(t, tc.w, tc.h, end+sec/2, tc.evs)
			for _, k := range tc.keys {
				m, _ = press(t, m, k)
			}
			golden(t, tc.name, checkScreen(t, m, tc.w, tc.h))
		})
	}
}

func TestFuncsKeys(t *testing.T) {
	stall := handMadeStall()
	end := stall[len(stall)-1].Time
	m := newTest(t, 120, 40, end, append(append([]event.Event{}, stall...), handMadeFuncs(end)...))
	m, _ = press(t, m, "f")
	m, _ = press(t, m, "enter")
	if m.view != viewFuncs || !m.funcs.open || m.funcs.name != "busymod_work_func" {
		t.Fatalf("view %v open %v name %q", m.view, m.funcs.open, m.funcs.name)
	}
	m, _ = press(t, m, "esc")
	if m.view != viewFuncs || m.funcs.open {
		t.Errorf("esc from a stack goes back to the list")
	}
	m, _ = press(t, m, "esc")
	if m.view != viewMain {
		t.Errorf("esc from the list goes back to the main view")
	}
}
