package ui

import (
	"strings"
	"testing"

	"github.com/charmbracelet/x/ansi"

	"github.com/klptop/klptop/internal/event"
	"github.com/klptop/klptop/internal/state"
)

// Hand-made: test_klp_state2 with its klp_state, a patch without any, and
// the shadow counts of two ids.
func TestPatchesStatesAndShadows(t *testing.T) {
	s := state.New()
	for _, e := range []event.Event{
		{Time: 1, Type: event.PatchSnapshot, Patch: "livepatch_sample", Enabled: true, Seq: 0},
		{Time: 1, Type: event.PatchSnapshot, Patch: "test_klp_state2", Enabled: true, Replace: true, Seq: 1},
		{Time: 1, Type: event.KlpState, Patch: "test_klp_state2", ID: 1, Version: 2},
		{Time: 1, Type: event.SnapshotEnd, Target: -1},
		{Time: 2, Type: event.Shadow, ID: 0x1234, Allocs: 3, Frees: 1, Live: 2},
		{Time: 2, Type: event.Shadow, ID: 0x1235, Allocs: 3, Frees: 3},
	} {
		s.Apply(e)
	}
	out := ansi.Strip(renderPatches(DefaultTheme(), s, 160, 8))
	for _, want := range []string{
		"forced  klp_state",
		"test_klp_state2   yes      -             yes              1v2",
		"shadow variables since attach: 2 live; 0x1234: 2 live (3 allocs, 1 frees), 0x1235: 0 live (3 allocs, 3 frees)",
	} {
		if !strings.Contains(out, want) {
			t.Errorf("patches view lacks %q:\n%s", want, out)
		}
	}
	// Without states or shadows the view is as before: no empty column.
	plain := state.New()
	plain.Apply(event.Event{Time: 1, Type: event.PatchSnapshot, Patch: "livepatch_sample", Enabled: true})
	if out := ansi.Strip(renderPatches(DefaultTheme(), plain, 160, 8)); strings.Contains(out, "klp_state") || strings.Contains(out, "shadow") {
		t.Errorf("klp_state or shadow shown without any:\n%s", out)
	}
}
