package state

import (
	"testing"

	"github.com/klptop/klptop/internal/event"
)

// Hand-made: a task that exits during a stalled transition is never checked
// again; a whole sweep without a check for it means it no longer blocks.
func TestSweepForgetsUncheckedTasksHandMade(t *testing.T) {
	base := []event.Event{
		{Time: 1, Type: event.TaskSnapshot, PID: 10, Comm: "kworker", PatchState: -1},
		{Time: 1, Type: event.TaskSnapshot, PID: 11, Comm: "short-lived", PatchState: -1},
		{Time: 1, Type: event.SnapshotEnd},
		{Time: 2, Type: event.TransitionInit, Patch: "p", Target: 1},
		{Time: 3, Type: event.SweepStart},
		{Time: 3, Type: event.TaskCheck, PID: 10, Comm: "kworker", Ret: -98, Reason: event.ReasonSleeping, Func: "f"},
	}
	for _, tc := range []struct {
		name     string
		lost     bool
		wantKeep bool
	}{
		{"exited task forgotten", false, false},
		{"kept when events were lost", true, true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			s := New()
			for _, e := range base {
				s.Apply(e)
			}
			if tc.lost {
				s.Apply(event.Event{Time: 3, Type: event.Lost, Count: 1})
			}
			s.Apply(event.Event{Time: 4, Type: event.SweepEnd, Pending: 1})
			pending := s.Pending()
			kept := s.Tasks[11] != nil
			if kept != tc.wantKeep {
				t.Fatalf("unchecked task kept=%v, want %v", kept, tc.wantKeep)
			}
			want := 1
			if tc.wantKeep {
				want = 2
			}
			if len(pending) != want || pending[0].PID != 10 {
				t.Errorf("pending = %d tasks, want %d led by the kworker", len(pending), want)
			}
			if tr := s.Transition; tr.Total != len(pending) || tr.Switched != 0 {
				t.Errorf("total %d switched %d", tr.Total, tr.Switched)
			}
		})
	}
}
