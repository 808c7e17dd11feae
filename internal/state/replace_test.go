package state

import (
	"testing"

	"github.com/klptop/klptop/internal/event"
)

func names(s *State) []string {
	var out []string
	for _, p := range s.Patches {
		out = append(out, p.Name)
	}
	return out
}

// The patches an atomic replace supersedes leave when the kernel frees
// them, not at the replace's completion; a trace without the 1.4 events
// keeps the old inference.
func TestReplaceFreedByKernel(t *testing.T) {
	for _, observed := range []bool{true, false} {
		s := New()
		apply := func(e event.Event) { s.Apply(e) }
		apply(event.Event{Time: 1, Type: event.PatchEnable, Patch: "a"})
		apply(event.Event{Time: 2, Type: event.TransitionInit, Patch: "a", Target: 1})
		apply(event.Event{Time: 3, Type: event.TransitionComplete, Patch: "a", Target: 1})
		apply(event.Event{Time: 4, Type: event.PatchEnable, Patch: "b", Replace: true})
		apply(event.Event{Time: 5, Type: event.TransitionInit, Patch: "b", Target: 1})
		if observed {
			apply(event.Event{Time: 6, Type: event.PatchReplace, Patch: "b"})
			apply(event.Event{Time: 6, Type: event.PatchReplaced, Patch: "a"})
			apply(event.Event{Time: 6, Type: event.NopsDiscard, Patch: "b"})
		}
		apply(event.Event{Time: 7, Type: event.TransitionComplete, Patch: "b", Target: 1})
		got := names(s)
		if observed {
			if len(got) != 2 || s.Patch("a").ReplacedBy != "b" || s.Patch("a").Enabled {
				t.Fatalf("after the replace's completion: %v, a %+v; want a still there, replaced by b", got, s.Patch("a"))
			}
			if p := s.Patch("b"); len(p.Replaced) != 1 || p.Replaced[0] != "a" || !p.NopsDiscarded {
				t.Errorf("b: %+v", p)
			}
			apply(event.Event{Time: 8, Type: event.ReplacedFree, Patch: "b"})
			got = names(s)
		}
		if len(got) != 1 || got[0] != "b" {
			t.Errorf("observed %v: patches %v, want [b]", observed, got)
		}
	}
	s := New()
	s.Apply(event.Event{Time: 1, Type: event.PatchEnable, Patch: "a"})
	s.Apply(event.Event{Time: 2, Type: event.PatchFree, Patch: "a"})
	if len(s.Patches) != 0 {
		t.Errorf("patch_free left %v", names(s))
	}
}
