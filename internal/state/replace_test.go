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

// Hand-made events: the index by name follows every way a patch leaves
// the stack, so that a name loaded again is the new patch, on top.
func TestPatchIndexFollowsStack(t *testing.T) {
	s := New()
	for i, e := range []event.Event{
		{Type: event.PatchSnapshot, Patch: "a", Seq: 0, Enabled: true},
		{Type: event.PatchEnable, Patch: "b"},
		{Type: event.PatchEnable, Patch: "c", Replace: true},
		{Type: event.TransitionInit, Patch: "c", Target: 1},
		{Type: event.PatchReplace, Patch: "c"},
		{Type: event.PatchReplaced, Patch: "a"},
		{Type: event.PatchReplaced, Patch: "b"},
		{Type: event.TransitionComplete, Patch: "c", Target: 1},
		{Type: event.ReplacedFree, Patch: "c"},
		{Type: event.PatchEnable, Patch: "a"},
		{Type: event.PatchFree, Patch: "c"},
	} {
		e.Time = uint64(i + 1)
		s.Apply(e)
	}
	if got := names(s); len(got) != 1 || got[0] != "a" {
		t.Fatalf("stack %v, want [a]", got)
	}
	if s.Patch("b") != nil || s.Patch("c") != nil {
		t.Errorf("freed patches still found: b %v, c %v", s.Patch("b"), s.Patch("c"))
	}
	if p := s.Patch("a"); p != s.Patches[0] || p.ReplacedBy != "" {
		t.Errorf("Patch(a) = %+v, want the one loaded again, on the stack", p)
	}
}
