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

// Hand-made: an aggregate sweep sends failed checks and blockers' switches
// only; the tasks it did not report switched in it.
func TestAggregateSweepHandMade(t *testing.T) {
	const sec = uint64(1e9)
	k := NewTracker()
	var ended []*Ended
	apply := func(evs ...event.Event) {
		for _, e := range evs {
			if en := k.Apply(e); en != nil {
				ended = append(ended, en)
			}
		}
	}
	apply(
		event.Event{Time: 1, Type: event.TaskSnapshot, PID: 10, Comm: "kworker", PatchState: -1},
		event.Event{Time: 1, Type: event.TaskSnapshot, PID: 11, Comm: "bash", PatchState: -1},
		event.Event{Time: 1, Type: event.TaskSnapshot, PID: 12, Comm: "sleeper", PatchState: -1},
		event.Event{Time: 1, Type: event.TaskSnapshot, PID: 13, Comm: "stuck", PatchState: -1},
		event.Event{Time: 1, Type: event.SnapshotEnd},
		event.Event{Time: sec, Type: event.TransitionInit, Patch: "p", Target: 1},
		event.Event{Time: 2 * sec, Type: event.SweepStart, Aggregate: true},
		event.Event{Time: 2*sec + 1, Type: event.TaskCheck, PID: 10, Comm: "kworker", Ret: -98, Reason: event.ReasonSleeping, Func: "f"},
		event.Event{Time: 2*sec + 2, Type: event.TaskCheck, PID: 13, Comm: "stuck", Ret: -16, Reason: event.ReasonRunning},
		event.Event{Time: 2*sec + 3, Type: event.SweepEnd, Aggregate: true, Checked: 4, Pending: 2, Aggregated: 2},
	)
	s := k.S
	tr := s.Transition
	if tr.Total != 4 || tr.Switched != 2 {
		t.Fatalf("after the first sweep: total %d switched %d, want 4 and 2", tr.Total, tr.Switched)
	}
	for _, pid := range []int{11, 12} {
		if ts := s.Tasks[pid]; ts.PatchState != 1 || ts.SwitchPath != event.PathSweep || ts.SwitchedAt != 2*sec+3 {
			t.Errorf("pid %d: state %d path %q at %d, want switched by the sweep at its end", pid, ts.PatchState, ts.SwitchPath, ts.SwitchedAt)
		}
	}
	if p := s.Pending(); len(p) != 2 {
		t.Fatalf("pending %d, want the two that failed", len(p))
	}
	// The next sweep: the kworker's switch is sent (it blocked); the stuck
	// task's is counted only, as when its last_checks entry was evicted.
	apply(
		event.Event{Time: 3 * sec, Type: event.SweepStart, Aggregate: true},
		event.Event{Time: 3*sec + 1, Type: event.TaskCheck, PID: 10, Comm: "kworker", Reason: event.ReasonSwitched, PatchState: 1},
		event.Event{Time: 3*sec + 2, Type: event.SweepEnd, Aggregate: true, Checked: 2, Aggregated: 1},
	)
	if len(s.Pending()) != 0 || tr.Switched != 4 {
		t.Fatalf("after the second sweep: %d pending, %d switched", len(s.Pending()), tr.Switched)
	}
	if s.Tasks[10].SwitchedAt != 3*sec+1 {
		t.Errorf("kworker switched at %d, want its check's time", s.Tasks[10].SwitchedAt)
	}
	apply(
		event.Event{Time: 4 * sec, Type: event.SweepStart, Aggregate: true},
		event.Event{Time: 4*sec + 1, Type: event.TransitionComplete, Patch: "p", Target: 1},
		event.Event{Time: 4*sec + 2, Type: event.SweepEnd, Aggregate: true},
	)
	if len(ended) != 1 {
		t.Fatalf("%d transitions ended, want 1", len(ended))
	}
	en := ended[0]
	if en.Transition.Outcome != OutcomeComplete || en.Transition.Switched != 4 {
		t.Errorf("ended %s with %d switched", en.Transition.Outcome, en.Transition.Switched)
	}
	if len(s.Tasks) != 4 {
		t.Errorf("%d tasks after the transition, want all 4 kept", len(s.Tasks))
	}
	got := map[int]*Blocker{}
	for _, b := range en.Blockers {
		got[b.PID] = b
	}
	if b := got[10]; b == nil || b.SwitchPath != event.PathSweep || b.SwitchedAt != 3*sec+1 || b.Func != "f" {
		t.Errorf("kworker blocker %+v, want switched by the sweep at its check", b)
	}
	if b := got[13]; b == nil || b.SwitchPath != event.PathSweep || b.SwitchedAt != 3*sec+2 {
		t.Errorf("stuck blocker %+v, want switched at the second sweep's end", b)
	}
	if len(got) != 2 {
		t.Errorf("%d blockers, want 2", len(got))
	}
}

// Hand-made: the sweep that completes the transition without a check sent
// (every task switched in it) keeps the tasks: they switched, not exited.
func TestAggregateSweepCompletesHandMade(t *testing.T) {
	s := New()
	for _, e := range []event.Event{
		{Time: 1, Type: event.TaskSnapshot, PID: 10, Comm: "a", PatchState: -1},
		{Time: 1, Type: event.TaskSnapshot, PID: 11, Comm: "b", PatchState: -1},
		{Time: 1, Type: event.SnapshotEnd},
		{Time: 2, Type: event.TransitionInit, Patch: "p", Target: 1},
		{Time: 3, Type: event.SweepStart, Aggregate: true},
		{Time: 4, Type: event.TransitionComplete, Patch: "p", Target: 1},
		{Time: 5, Type: event.SweepEnd, Aggregate: true, Checked: 2, Aggregated: 2},
	} {
		s.Apply(e)
	}
	if len(s.History) != 1 || s.History[0].Outcome != OutcomeComplete || s.History[0].Total != 2 || s.History[0].Switched != 2 {
		t.Fatalf("history %+v", s.History)
	}
	if len(s.Tasks) != 2 {
		t.Errorf("%d tasks kept, want 2", len(s.Tasks))
	}
}

// Hand-made: events lost inside an aggregate sweep may have been its failed
// checks, so the tasks it did not report stay pending for the resync.
func TestAggregateSweepAfterLossHandMade(t *testing.T) {
	s := New()
	for _, e := range []event.Event{
		{Time: 1, Type: event.TaskSnapshot, PID: 10, Comm: "a", PatchState: -1},
		{Time: 1, Type: event.TaskSnapshot, PID: 11, Comm: "b", PatchState: -1},
		{Time: 1, Type: event.SnapshotEnd},
		{Time: 2, Type: event.TransitionInit, Patch: "p", Target: 1},
		{Time: 3, Type: event.SweepStart, Aggregate: true},
		{Time: 4, Type: event.Lost, Count: 1, Reason: event.LostRingFull},
		{Time: 5, Type: event.SweepEnd, Aggregate: true, Checked: 2, Pending: 1, Aggregated: 1},
	} {
		s.Apply(e)
	}
	for _, pid := range []int{10, 11} {
		if ts := s.Tasks[pid]; ts == nil || ts.PatchState != 0 {
			t.Errorf("pid %d: %+v, want still pending (unpatched)", pid, ts)
		}
	}
	if p := s.Pending(); len(p) != 2 {
		t.Errorf("pending %d, want 2", len(p))
	}
}
