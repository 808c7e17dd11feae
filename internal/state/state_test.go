package state

import (
	"math/rand/v2"
	"slices"
	"testing"
	"time"

	"github.com/klptop/klptop/internal/event"
)

// Every sequence below is hand-made, written from the kernel's transition
// code (kernel/livepatch/transition.c), not recorded from a kernel.

const sec = uint64(time.Second)

func ev(t uint64, typ event.Type) event.Event { return event.Event{Time: t, Type: typ} }

func snapPatch(t uint64, name string, seq int, enabled, inTr bool) event.Event {
	return event.Event{Time: t, Type: event.PatchSnapshot, Patch: name, Seq: seq, Enabled: enabled, InTransition: inTr}
}

func snapTask(t uint64, pid int, comm string, ps int) event.Event {
	return event.Event{Time: t, Type: event.TaskSnapshot, PID: pid, TGID: pid, Comm: comm, PatchState: ps}
}

func initTr(t uint64, patch string, target int) event.Event {
	return event.Event{Time: t, Type: event.TransitionInit, Patch: patch, Target: target}
}

func check(t uint64, pid int, comm, reason, fn string) event.Event {
	return event.Event{Time: t, Type: event.TaskCheck, PID: pid, Comm: comm, Reason: reason, Func: fn}
}

func sw(t uint64, pid int, comm string, ps int, path string) event.Event {
	return event.Event{Time: t, Type: event.TaskSwitch, PID: pid, Comm: comm, PatchState: ps, Path: path}
}

// idleSnapshot: three tasks, no patch, nothing in transition.
func idleSnapshot() []event.Event {
	return []event.Event{
		snapTask(1, 1, "systemd", -1),
		snapTask(1, 42, "kworker/0:1", -1),
		snapTask(1, 100, "bash", -1),
		ev(1, event.SnapshotEnd),
	}
}

// checkInvariants fails if the incremental counters disagree with the tasks.
func checkInvariants(t *testing.T, s *State, step int) {
	t.Helper()
	tr := s.Transition
	if tr == nil {
		return
	}
	total, switched := 0, 0
	for _, tk := range s.Tasks {
		if participates(tk.PatchState) {
			total++
			if tk.PatchState == tr.Target {
				switched++
			}
		}
	}
	if total != tr.Total || switched != tr.Switched {
		t.Fatalf("step %d: counters total=%d switched=%d, tasks say %d/%d", step, tr.Total, tr.Switched, total, switched)
	}
	if p := len(s.Pending()); p != tr.Total-tr.Switched {
		t.Fatalf("step %d: %d pending, counters say %d", step, p, tr.Total-tr.Switched)
	}
}

func apply(t *testing.T, evs []event.Event) *State {
	t.Helper()
	s := New()
	for i, e := range evs {
		s.Apply(e)
		checkInvariants(t, s, i)
	}
	return s
}

func pids(ts []*Task) []int {
	var out []int
	for _, t := range ts {
		out = append(out, t.PID)
	}
	return out
}

func patchNames(s *State) []string {
	var out []string
	for _, p := range s.Patches {
		out = append(out, p.Name)
	}
	return out
}

func TestHandMadeSequences(t *testing.T) {
	cat := func(parts ...[]event.Event) []event.Event { return slices.Concat(parts...) }
	tests := []struct {
		name   string
		events []event.Event
		check  func(t *testing.T, s *State)
	}{
		{
			name: "hand-made: patching completes after a stalled kworker switches",
			events: cat(idleSnapshot(), []event.Event{
				{Time: 10 * sec, Type: event.PatchEnable, Patch: "livepatch_demo"},
				initTr(10*sec, "livepatch_demo", 1),
				ev(10*sec, event.TransitionStart),
				ev(11*sec, event.SweepStart),
				check(11*sec, 1, "systemd", event.ReasonSwitched, ""),
				check(11*sec, 100, "bash", event.ReasonSwitched, ""),
				check(11*sec, 42, "kworker/0:1", event.ReasonSleeping, "busymod_work_func"),
				{Time: 11*sec + 500, Type: event.SweepEnd, Pending: 1, Duration: 500},
			}),
			check: func(t *testing.T, s *State) {
				tr := s.Transition
				if tr == nil || tr.Total != 3 || tr.Switched != 2 || tr.Sweeps != 1 || tr.Target != 1 {
					t.Fatalf("transition = %+v", tr)
				}
				p := s.Pending()
				if len(p) != 1 || p[0].PID != 42 || p[0].Func != "busymod_work_func" || p[0].Reason != event.ReasonSleeping {
					t.Fatalf("pending = %+v", p)
				}
				if p[0].PendingSince != 10*sec || p[0].Checks != 1 {
					t.Fatalf("pending since %d checks %d", p[0].PendingSince, p[0].Checks)
				}
				if got := tr.Elapsed(25 * sec); got != 15*time.Second {
					t.Fatalf("elapsed %v", got)
				}
				if ps := s.Patches; len(ps) != 1 || !ps[0].Enabled || !ps[0].InTransition {
					t.Fatalf("patches %+v", ps[0])
				}
			},
		},
		{
			name: "hand-made: complete idles all tasks and records history",
			events: cat(idleSnapshot(), []event.Event{
				initTr(10*sec, "p1", 1),
				sw(10*sec, 100, "bash", 1, event.PathUser),
				sw(10*sec, 1, "systemd", 1, event.PathUser),
				check(12*sec, 42, "kworker/0:1", event.ReasonSwitched, ""),
				ev(12*sec, event.TransitionComplete),
			}),
			check: func(t *testing.T, s *State) {
				if s.Transition != nil || len(s.History) != 1 {
					t.Fatalf("transition %+v history %d", s.Transition, len(s.History))
				}
				h := s.Last()
				if h.Outcome != OutcomeComplete || h.Elapsed(99*sec) != 2*time.Second || h.Switched != 3 || h.Total != 3 {
					t.Fatalf("last = %+v", h)
				}
				for _, tk := range s.Tasks {
					if tk.PatchState != -1 {
						t.Fatalf("task %d state %d", tk.PID, tk.PatchState)
					}
				}
				if p := s.Patch("p1"); p == nil || !p.Enabled || p.InTransition {
					t.Fatalf("patch %+v", p)
				}
				if s.Tasks[100].SwitchPath != event.PathUser || s.Tasks[42].SwitchPath != event.PathSweep {
					t.Fatal("switch paths")
				}
			},
		},
		{
			name: "hand-made: attach mid-transition from the snapshot",
			events: []event.Event{
				snapPatch(50*sec, "base", 0, true, false),
				snapPatch(50*sec, "fix2", 1, true, true),
				snapTask(50*sec, 1, "systemd", 1),
				snapTask(50*sec, 42, "kworker/0:1", 0),
				snapTask(50*sec, 7, "sshd", 0),
				ev(50*sec, event.SnapshotEnd),
				check(51*sec, 42, "kworker/0:1", event.ReasonSleeping, "busymod_work_func"),
				check(51*sec, 7, "sshd", event.ReasonSwitched, ""),
			},
			check: func(t *testing.T, s *State) {
				tr := s.Transition
				if tr == nil || !tr.Attached || tr.Patch != "fix2" || tr.Target != 1 || tr.Total != 3 || tr.Switched != 2 {
					t.Fatalf("transition = %+v", tr)
				}
				if got := pids(s.Pending()); !slices.Equal(got, []int{42}) {
					t.Fatalf("pending %v", got)
				}
				if got := patchNames(s); !slices.Equal(got, []string{"base", "fix2"}) {
					t.Fatalf("stack %v", got)
				}
			},
		},
		{
			name: "hand-made: attach mid-unpatching, target inferred from enabled=0",
			events: []event.Event{
				snapPatch(5, "p", 0, false, true),
				snapTask(5, 1, "a", 0),
				snapTask(5, 2, "b", 1),
				snapTask(5, 3, "c", 1),
				ev(5, event.SnapshotEnd),
			},
			check: func(t *testing.T, s *State) {
				tr := s.Transition
				if tr == nil || tr.Target != 0 || tr.Switched != 1 || tr.Total != 3 {
					t.Fatalf("transition %+v", tr)
				}
				if got := pids(s.Pending()); !slices.Equal(got, []int{2, 3}) {
					t.Fatalf("pending %v", got)
				}
			},
		},
		{
			name: "hand-made: tasks mid-transition but no patch flagged it",
			events: []event.Event{
				snapPatch(5, "p", 0, true, false),
				snapTask(5, 1, "a", 1),
				snapTask(5, 2, "b", 1),
				snapTask(5, 3, "c", 0),
				ev(5, event.SnapshotEnd),
			},
			check: func(t *testing.T, s *State) {
				tr := s.Transition
				if tr == nil || tr.Patch != "p" || tr.Target != 1 || tr.Switched != 2 {
					t.Fatalf("transition %+v", tr)
				}
			},
		},
		{
			name: "hand-made: reverse flips pending and switched tasks",
			events: cat(idleSnapshot(), []event.Event{
				initTr(10*sec, "p", 1),
				check(11*sec, 1, "systemd", event.ReasonSwitched, ""),
				check(11*sec, 42, "kworker/0:1", event.ReasonSleeping, "busymod_work_func"),
				check(11*sec, 100, "bash", event.ReasonRunning, ""),
				{Time: 20 * sec, Type: event.TransitionReverse, Patch: "p", Target: 0},
			}),
			check: func(t *testing.T, s *State) {
				tr := s.Transition
				if tr.Target != 0 || tr.Reversed != 1 || tr.Switched != 2 || tr.Total != 3 {
					t.Fatalf("transition %+v", tr)
				}
				p := s.Pending()
				if got := pids(p); !slices.Equal(got, []int{1}) {
					t.Fatalf("pending %v", got)
				}
				if p[0].PendingSince != 20*sec {
					t.Fatalf("pending since %d", p[0].PendingSince)
				}
				if pt := s.Patch("p"); pt.Enabled {
					t.Fatal("reversed patch still enabled")
				}
			},
		},
		{
			name: "hand-made: reversed patching completes, patch is freed",
			events: cat(idleSnapshot(), []event.Event{
				initTr(10*sec, "p", 1),
				{Time: 20 * sec, Type: event.TransitionReverse, Target: 0},
				ev(21*sec, event.TransitionComplete),
			}),
			check: func(t *testing.T, s *State) {
				if s.Last().Outcome != OutcomeReversed || len(s.Patches) != 0 {
					t.Fatalf("outcome %s patches %v", s.Last().Outcome, patchNames(s))
				}
			},
		},
		{
			name: "hand-made: forced patching switches everything and leaves every patch removable",
			events: cat(idleSnapshot(), []event.Event{
				snapPatch(1, "old", 0, true, false),
				initTr(10*sec, "new", 1),
				check(11*sec, 42, "kworker/0:1", event.ReasonSleeping, "f"),
				ev(30*sec, event.TransitionForce),
			}),
			check: func(t *testing.T, s *State) {
				tr := s.Transition
				if tr.Switched != 3 || len(s.Pending()) != 0 || !tr.Forced {
					t.Fatalf("transition %+v", tr)
				}
				for _, p := range s.Patches {
					if p.Forced {
						t.Fatalf("patch %s forced: klp_force_transition marks none on a plain patching", p.Name)
					}
				}
				s.Apply(ev(30*sec, event.TransitionComplete))
				if s.Last().Outcome != OutcomeForced {
					t.Fatalf("outcome %s", s.Last().Outcome)
				}
			},
		},
		{
			name: "hand-made: forced unpatching marks the patch being removed",
			events: cat(idleSnapshot(), []event.Event{
				snapPatch(1, "below", 0, true, false),
				snapPatch(1, "gone", 1, true, false),
				initTr(10*sec, "gone", 0),
				check(11*sec, 42, "kworker/0:1", event.ReasonSleeping, "f"),
				ev(30*sec, event.TransitionForce),
			}),
			check: func(t *testing.T, s *State) {
				for _, p := range s.Patches {
					if p.Forced != (p.Name == "gone") {
						t.Fatalf("patch %s forced=%v", p.Name, p.Forced)
					}
				}
			},
		},
		{
			name: "hand-made: forced atomic replace marks the patches it supersedes",
			events: cat(idleSnapshot(), []event.Event{
				snapPatch(1, "old", 0, true, false),
				{Time: 10 * sec, Type: event.PatchEnable, Patch: "new", Replace: true},
				{Time: 10 * sec, Type: event.TransitionInit, Patch: "new", Target: 1, Replace: true},
				check(11*sec, 42, "kworker/0:1", event.ReasonSleeping, "f"),
				ev(30*sec, event.TransitionForce),
			}),
			check: func(t *testing.T, s *State) {
				seen := 0
				for _, p := range s.Patches {
					seen++
					if p.Forced != (p.Name == "old") {
						t.Fatalf("patch %s forced=%v", p.Name, p.Forced)
					}
				}
				if seen != 2 {
					t.Fatalf("patches %v", patchNames(s))
				}
			},
		},
		{
			name: "hand-made: cancelled enable frees the patch",
			events: cat(idleSnapshot(), []event.Event{
				{Time: 10, Type: event.PatchEnable, Patch: "bad"},
				initTr(10, "bad", 1),
				ev(11, event.TransitionCancel),
			}),
			check: func(t *testing.T, s *State) {
				if len(s.Patches) != 0 || s.Last().Outcome != OutcomeCancelled || s.Transition != nil {
					t.Fatalf("patches %v last %+v", patchNames(s), s.Last())
				}
			},
		},
		{
			name: "hand-made: unpatch completes and removes the patch from the stack",
			events: []event.Event{
				snapPatch(1, "a", 0, true, false),
				snapPatch(1, "b", 1, true, false),
				snapTask(1, 1, "x", -1),
				ev(1, event.SnapshotEnd),
				initTr(5, "a", 0),
				sw(6, 1, "x", 0, event.PathUser),
				ev(7, event.TransitionComplete),
			},
			check: func(t *testing.T, s *State) {
				if got := patchNames(s); !slices.Equal(got, []string{"b"}) {
					t.Fatalf("stack %v", got)
				}
			},
		},
		{
			name: "hand-made: atomic replace frees the patches below",
			events: []event.Event{
				snapPatch(1, "a", 0, true, false),
				snapPatch(1, "b", 1, true, false),
				ev(1, event.SnapshotEnd),
				{Time: 5, Type: event.PatchEnable, Patch: "c", Replace: true},
				initTr(5, "c", 1),
				ev(7, event.TransitionComplete),
			},
			check: func(t *testing.T, s *State) {
				if got := patchNames(s); !slices.Equal(got, []string{"c"}) {
					t.Fatalf("stack %v", got)
				}
			},
		},
		{
			name: "hand-made: unknown tasks appear in checks, forks inherit pending state",
			events: []event.Event{
				ev(1, event.SnapshotEnd),
				initTr(10*sec, "p", 1),
				check(12*sec, 500, "stress", event.ReasonRunning, ""),
				sw(13*sec, 501, "stress", 0, event.PathFork),
				check(14*sec, 502, "late", event.ReasonUnreliable, ""),
				check(14*sec, 503, "ok", event.ReasonSwitched, ""),
			},
			check: func(t *testing.T, s *State) {
				p := s.Pending()
				if got := pids(p); !slices.Equal(got, []int{500, 502, 501}) {
					t.Fatalf("pending %v", got)
				}
				if p[0].PendingSince != 10*sec || p[2].PendingSince != 13*sec {
					t.Fatalf("since %d %d", p[0].PendingSince, p[2].PendingSince)
				}
				if tr := s.Transition; tr.Total != 4 || tr.Switched != 1 {
					t.Fatalf("transition %+v", tr)
				}
			},
		},
		{
			name: "hand-made: per-CPU idle tasks are distinct",
			events: []event.Event{
				snapTask(1, 0, "swapper/0", -1),
				snapTask(1, 0, "swapper/1", -1),
				initTr(2, "p", 1),
				sw(3, 0, "swapper/1", 1, event.PathIdle),
			},
			check: func(t *testing.T, s *State) {
				if len(s.Tasks) != 2 {
					t.Fatalf("%d tasks", len(s.Tasks))
				}
				p := s.Pending()
				if len(p) != 1 || p[0].Comm != "swapper/0" {
					t.Fatalf("pending %+v", p)
				}
			},
		},
		{
			name: "hand-made: lost events are counted, time never rewinds",
			events: []event.Event{
				{Time: 100, Type: event.Lost, Count: 7},
				{Time: 50, Type: event.Lost, Count: 3},
			},
			check: func(t *testing.T, s *State) {
				if s.Lost != 10 || s.Now != 100 {
					t.Fatalf("lost %d now %d", s.Lost, s.Now)
				}
			},
		},
		{
			name: "hand-made: a second init closes the one whose end was lost",
			events: cat(idleSnapshot(), []event.Event{
				initTr(10, "a", 1),
				initTr(20, "b", 1),
			}),
			check: func(t *testing.T, s *State) {
				if len(s.History) != 1 || s.Transition.Patch != "b" || s.Transition.Total != 3 {
					t.Fatalf("history %d transition %+v", len(s.History), s.Transition)
				}
			},
		},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			tc.check(t, apply(t, tc.events))
		})
	}
}

// TestHandMadeGarbage feeds random hand-made event soup: Apply must never
// panic and the counters must stay consistent.
func TestHandMadeGarbage(t *testing.T) {
	types := fuzzTypes
	reasons := []string{"", event.ReasonSwitched, event.ReasonRunning, event.ReasonSleeping, "zz"}
	r := rand.New(rand.NewPCG(1, 2))
	for round := range 200 {
		s := New()
		for i := range 300 {
			e := event.Event{
				Time:         r.Uint64N(1000),
				Type:         types[r.IntN(len(types))],
				PID:          r.IntN(8) - 1,
				CPU:          r.IntN(4) - 1,
				Comm:         []string{"", "swapper/1", "swapper/x", "a"}[r.IntN(4)],
				Patch:        []string{"", "a", "b"}[r.IntN(3)],
				Target:       r.IntN(5) - 2,
				PatchState:   r.IntN(6) - 3,
				Seq:          r.IntN(6) - 2,
				Reason:       reasons[r.IntN(len(reasons))],
				Ret:          int32(r.IntN(200) - 100),
				Enabled:      r.IntN(2) == 0,
				InTransition: r.IntN(2) == 0,
				Replace:      r.IntN(3) == 0,
				Pending:      r.IntN(10) - 5,
				Func:         fuzzFuncs[r.IntN(len(fuzzFuncs))],
				Object:       fuzzObjects[r.IntN(len(fuzzObjects))],
				Callback:     fuzzCBs[r.IntN(len(fuzzCBs))],
				Versions:     fuzzVersions(byte(r.IntN(256))),
				ID:           uint64(r.IntN(3)),
				Version:      r.IntN(4) - 1,
				Allocs:       uint64(r.IntN(5)),
				Frees:        uint64(r.IntN(5)),
				Live:         int64(r.IntN(9) - 4),
			}
			s.Apply(e)
			checkInvariants(t, s, round*1000+i)
			_ = s.Transition.Elapsed(s.Now)
		}
	}
	var nilState State
	nilState.Apply(check(1, 5, "x", event.ReasonRunning, ""))
}

func signal(t uint64, pid int, comm, path string) event.Event {
	return event.Event{Time: t, Type: event.Signal, PID: pid, Comm: comm, Path: path, PatchState: 0}
}

// The kernel signals in the 16th sweep (klp_signals_cnt 15): hand-made, one
// kthread woken and one user task signalled. Counts are per transition, per
// task, and per blocker; a new transition starts from zero.
func TestSignalsCounted(t *testing.T) {
	k := NewTracker()
	for _, e := range idleSnapshot() {
		k.Apply(e)
	}
	k.Apply(initTr(10*sec, "p", 1))
	at := 11 * sec
	for n := 1; n <= 16; n++ {
		k.Apply(ev(at, event.SweepStart))
		k.Apply(check(at+1, 57, "kworker/1:2", event.ReasonSleeping, "busymod_work_func"))
		k.Apply(check(at+2, 300, "bash", event.ReasonRunning, ""))
		if n == 16 {
			k.Apply(signal(at+3, 57, "kworker/1:2", event.PathWake))
			k.Apply(signal(at+4, 300, "bash", event.PathSignal))
		}
		k.Apply(ev(at+5, event.SweepEnd))
		at += sec
	}
	s := k.S
	if s.Transition.Signals != 2 || s.Task(57).Signals != 1 || s.Task(300).Signals != 1 {
		t.Fatalf("signals: transition %d, kworker %d, bash %d; want 2, 1, 1",
			s.Transition.Signals, s.Task(57).Signals, s.Task(300).Signals)
	}
	ended := k.Apply(ev(at, event.TransitionComplete))
	if ended == nil || ended.Transition.Signals != 2 {
		t.Fatalf("ended %+v, want 2 signals", ended)
	}
	for _, b := range ended.Blockers {
		if b.Signals != 1 {
			t.Errorf("blocker %d: %d signals, want 1", b.PID, b.Signals)
		}
	}
	k.Apply(initTr(at+sec, "p", 0))
	if s.Transition.Signals != 0 || s.Task(57).Signals != 0 {
		t.Errorf("new transition: signals %d, kworker %d; want 0", s.Transition.Signals, s.Task(57).Signals)
	}
	// A signal outside any transition (trace cut oddly) is counted on the
	// task only, and never panics.
	k.Apply(ev(at+2*sec, event.TransitionComplete))
	k.Apply(signal(at+3*sec, 57, "kworker/1:2", event.PathWake))
}

// Hand-made churn: 50 transitions, each with 1,000 short-lived forks that
// exit before the next sweep (half forked by a pending parent, half by a
// switched one). The kernel's sweep checks every pending task alive; one it
// no longer finds has exited, so the state never holds more than the live
// tasks and one transition's forks.
func TestChurnBounded(t *testing.T) {
	s := New()
	for _, e := range idleSnapshot() {
		s.Apply(e)
	}
	const forks = 1000
	now := uint64(10 * sec)
	pid := 1000
	most := 0
	for n := range 50 {
		target := 1 - n%2
		s.Apply(initTr(now, "p", target))
		s.Apply(ev(now, event.TransitionStart))
		for i := range forks {
			pid++
			ps := target
			if i%2 == 0 {
				ps = 1 - target
			}
			s.Apply(sw(now+uint64(i), pid, "short", ps, event.PathFork))
		}
		most = max(most, len(s.Tasks))
		now += sec
		s.Apply(ev(now, event.SweepStart))
		for _, p := range []int{1, 42, 100} {
			s.Apply(check(now, p, "", event.ReasonSwitched, ""))
			s.Apply(sw(now, p, "", target, event.PathSweep))
		}
		s.Apply(event.Event{Time: now, Type: event.SweepEnd})
		s.Apply(ev(now, event.TransitionComplete))
		checkInvariants(t, s, n)
		most = max(most, len(s.Tasks))
		now += sec
	}
	if most > 3+2*forks {
		t.Errorf("the state held %d tasks at most; live: 3, forks per transition: %d", most, forks)
	}
	if len(s.Tasks) > 3+forks {
		t.Errorf("%d tasks after 50 transitions of %d forks each", len(s.Tasks), forks)
	}
	t.Logf("at most %d tasks, %d at the end", most, len(s.Tasks))
}

// Hand-made: a pending task and a blocked one exit during a stall
// (release_task, TaskExit). Neither is pending or counted any more, and the
// blocker's story ends in its exit, not in a switch.
func TestExitForgetsTask(t *testing.T) {
	k := NewTracker()
	for _, e := range idleSnapshot() {
		k.Apply(e)
	}
	s := k.S
	k.Apply(initTr(10*sec, "p", 1))
	k.Apply(ev(10*sec, event.SweepStart))
	k.Apply(check(10*sec+1, 1, "systemd", event.ReasonSwitched, ""))
	k.Apply(check(10*sec+2, 42, "kworker/0:1", event.ReasonSleeping, "busymod_work_func"))
	k.Apply(check(10*sec+3, 100, "bash", event.ReasonSwitched, ""))
	k.Apply(ev(10*sec+4, event.SweepEnd))
	k.Apply(sw(11*sec, 500, "bash", 0, event.PathFork))
	if tr := s.Transition; tr.Total != 4 || len(s.Pending()) != 2 {
		t.Fatalf("before the exits: total %d, pending %d; want 4, 2", tr.Total, len(s.Pending()))
	}
	k.Apply(event.Event{Time: 12 * sec, Type: event.TaskExit, PID: 500, Comm: "bash", PatchState: 0})
	k.Apply(event.Event{Time: 13 * sec, Type: event.TaskExit, PID: 42, Comm: "kworker/0:1", PatchState: 0})
	checkInvariants(t, s, 0)
	if tr := s.Transition; tr.Total != 2 || tr.Switched != 2 || len(s.Pending()) != 0 || s.Task(42) != nil || s.Task(500) != nil {
		t.Fatalf("after the exits: total %d, switched %d, pending %d; want 2, 2, 0", tr.Total, tr.Switched, len(s.Pending()))
	}
	ended := k.Apply(ev(14*sec, event.TransitionComplete))
	if ended == nil || len(ended.Blockers) != 1 {
		t.Fatalf("ended %+v, want one blocker", ended)
	}
	b := ended.Blockers[0]
	if b.PID != 42 || b.SwitchPath != event.PathExit || b.SwitchedAt != 13*sec || b.Blocked != 3*sec {
		t.Errorf("blocker %+v: want pid 42 gone by exit at 13s after 3s blocked", b)
	}
	if h := s.Last(); h.Total != 2 || len(s.Tasks) != 2 {
		t.Errorf("after the transition: %d tasks in it, %d kept; want 2, 2", h.Total, len(s.Tasks))
	}
}

// Hand-made churn as the kernel reports it: 50 transitions, each with
// 1,000 forks that exit (TaskExit) before the next sweep. The state holds
// the live tasks and at most the one fork alive at a time, and the count of
// tasks in the transition stays right throughout.
func TestChurnExact(t *testing.T) {
	s := New()
	for _, e := range idleSnapshot() {
		s.Apply(e)
	}
	now := uint64(10 * sec)
	pid := 1000
	most := 0
	for n := range 50 {
		target := 1 - n%2
		s.Apply(initTr(now, "p", target))
		s.Apply(ev(now, event.SweepStart))
		for _, p := range []int{1, 42, 100} {
			s.Apply(check(now, p, "", event.ReasonSleeping, "f"))
		}
		s.Apply(event.Event{Time: now, Type: event.SweepEnd})
		for i := range 1000 {
			pid++
			s.Apply(sw(now+uint64(i), pid, "short", 1-target, event.PathFork))
			most = max(most, len(s.Tasks))
			s.Apply(event.Event{Time: now + uint64(i), Type: event.TaskExit, PID: pid, Comm: "short", PatchState: 1 - target})
		}
		if tr := s.Transition; tr.Total != 3 || len(s.Pending()) != 3 {
			t.Fatalf("transition %d: total %d, pending %d after the churn; want 3, 3", n, tr.Total, len(s.Pending()))
		}
		now += sec
		s.Apply(ev(now, event.SweepStart))
		for _, p := range []int{1, 42, 100} {
			s.Apply(check(now, p, "", event.ReasonSwitched, ""))
		}
		s.Apply(ev(now, event.TransitionComplete))
		s.Apply(event.Event{Time: now, Type: event.SweepEnd})
		checkInvariants(t, s, n)
		if h := s.Last(); h.Total != 3 {
			t.Fatalf("transition %d ended with %d tasks, want 3", n, h.Total)
		}
		now += sec
	}
	if most > 4 {
		t.Errorf("the state held %d tasks at most; live: 3 and one fork", most)
	}
}

// Hand-made: the sweep that completes a transition calls
// klp_complete_transition before it returns, so its end comes after the
// completion. A task held pending that this sweep did not check (it exited
// unseen, before klptop's exit probe or between transitions) is not
// counted in the finished transition.
func TestCompletingSweepDropsUnchecked(t *testing.T) {
	s := New()
	for _, e := range idleSnapshot() {
		s.Apply(e)
	}
	s.Apply(initTr(10*sec, "p", 1))
	s.Apply(ev(10*sec, event.SweepStart))
	s.Apply(check(10*sec+1, 1, "systemd", event.ReasonSwitched, ""))
	s.Apply(check(10*sec+2, 42, "kworker/0:1", event.ReasonSwitched, ""))
	s.Apply(ev(10*sec+3, event.TransitionComplete))
	s.Apply(ev(10*sec+4, event.SweepEnd))
	if h := s.Last(); h == nil || h.Total != 2 || h.Switched != 2 || s.Task(100) != nil {
		t.Fatalf("last %+v, bash %+v: want 2 tasks, bash gone", h, s.Task(100))
	}
}
