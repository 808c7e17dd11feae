package state

import (
	"testing"

	"github.com/klptop/klptop/internal/event"
)

func lostEv(t uint64, n uint64, cause string) event.Event {
	return event.Event{Time: t, Type: event.Lost, Count: n, Reason: cause, Duration: 100}
}

// resync is a Resync block as the probes send it: the patches, the tasks,
// then SnapshotEnd.
func resync(t uint64, lost uint64, patches []event.Event, tasks ...event.Event) []event.Event {
	out := []event.Event{{Time: t, Type: event.Resync, Count: lost}}
	out = append(out, patches...)
	out = append(out, tasks...)
	return append(out, event.Event{Time: t, Type: event.SnapshotEnd, Target: -1})
}

// patchingStall: p patching, pid 42 blocked, 1 and 100 switched by the
// first sweep.
func patchingStall(s *State) {
	for _, e := range idleSnapshot() {
		s.Apply(e)
	}
	s.Apply(initTr(10*sec, "p", 1))
	s.Apply(ev(10*sec, event.SweepStart))
	s.Apply(check(10*sec, 1, "systemd", event.ReasonSwitched, ""))
	blocked := check(10*sec, 42, "kworker/0:1", event.ReasonSleeping, "f")
	blocked.Stack = []string{"f+0x10/0x20", "worker_thread+0x1a6/0x310"}
	s.Apply(blocked)
	s.Apply(check(10*sec, 100, "bash", event.ReasonSwitched, ""))
	s.Apply(event.Event{Time: 10 * sec, Type: event.SweepEnd, Pending: 1})
}

// Hand-made: events lost during a stall (a task forked, one exited, the
// blocker switched) are repaired by the resync's snapshot; the transition
// goes on, and the repair is recorded with its causes.
func TestResyncRepairsTasks(t *testing.T) {
	s := New()
	patchingStall(s)
	s.Apply(lostEv(11*sec, 7, event.LostRingFull))
	s.Apply(lostEv(11*sec, 2, event.LostMissed))
	if s.LostSinceResync() != 9 || s.Transition.Lost != 9 {
		t.Fatalf("lost since resync %d, in the transition %d; want 9, 9", s.LostSinceResync(), s.Transition.Lost)
	}
	kw := snapTask(12*sec, 42, "kworker/0:1", 0)
	kw.Stack = []string{"msleep+0x1b/0x30", "ftrace_trampoline+0x108b [__builtin__ftrace]"}
	nw := snapTask(12*sec, 300, "new", 0)
	nw.Stack = []string{"do_sys_poll+0x1/0x2"}
	for _, e := range resync(12*sec, 9, []event.Event{snapPatch(12*sec, "p", 0, true, true)},
		snapTask(12*sec, 1, "systemd", 1), kw, nw) {
		s.Apply(e)
		if s.Transition == nil {
			t.Fatalf("after %v: the transition ended", e)
		}
	}
	checkInvariants(t, s, 0)
	if s.Task(100) != nil {
		t.Error("bash (100) is not in the resync, still in the state")
	}
	var pend []int
	for _, p := range s.Pending() {
		pend = append(pend, p.PID)
	}
	if len(pend) != 2 || s.Transition.Total != 3 || s.Transition.Switched != 1 {
		t.Errorf("pending %v, total %d, switched %d; want [42 300], 3, 1", pend, s.Transition.Total, s.Transition.Switched)
	}
	if tk := s.Task(42); tk.Reason != event.ReasonSleeping || tk.PendingSince != 10*sec || len(tk.Stack) == 0 || tk.Stack[0] != "f+0x10/0x20" {
		t.Errorf("the blocker lost its story (its stack is the one its check judged): %+v", tk)
	}
	if tk := s.Task(300); len(tk.Stack) != 1 {
		t.Errorf("a task new to the state has no stack from the resync: %+v", tk)
	}
	if s.LostSinceResync() != 0 || len(s.Repairs) != 1 {
		t.Fatalf("lost since resync %d, repairs %d; want 0, 1", s.LostSinceResync(), len(s.Repairs))
	}
	r := s.Repairs[0]
	if r.From != 11*sec-100 || r.At != 12*sec || r.Lost != 9 || r.Causes[event.LostMissed] != 2 || r.Forgotten != 1 || r.Ended || r.Began {
		t.Errorf("repair %+v", r)
	}
}

// Hand-made: the completion was among the lost events; the resync finds
// no patch in transition and ends it, the end marked as the resync's.
func TestResyncEndsTransition(t *testing.T) {
	k := NewTracker()
	patchingStall(k.S)
	k.Apply(lostEv(11*sec, 3, event.LostRingFull))
	var ended *Ended
	for _, e := range resync(12*sec, 3, []event.Event{snapPatch(12*sec, "p", 0, true, false)},
		snapTask(12*sec, 1, "systemd", -1), snapTask(12*sec, 42, "kworker/0:1", -1), snapTask(12*sec, 100, "bash", -1)) {
		if en := k.Apply(e); en != nil {
			ended = en
		}
	}
	if ended == nil || k.S.Transition != nil {
		t.Fatalf("the resync did not end the transition: %+v", k.S.Transition)
	}
	tr := ended.Transition
	if tr.Outcome != OutcomeComplete || !tr.EndResynced || tr.End != 12*sec || tr.Lost != 3 || tr.Total != 3 {
		t.Errorf("ended %+v", tr)
	}
	if p := k.S.Patch("p"); p == nil || !p.Enabled || p.InTransition {
		t.Errorf("patch after the resync: %+v", p)
	}
	if !k.S.Repairs[0].Ended {
		t.Error("the repair does not say a transition ended in it")
	}
}

// Hand-made: the lost events held an unpatching's whole start; the
// resync shows p in transition with enabled 0 and begins it there.
func TestResyncBeginsTransition(t *testing.T) {
	s := New()
	for _, e := range idleSnapshot() {
		s.Apply(e)
	}
	s.Apply(snapPatch(2*sec, "p", 0, true, false))
	s.Apply(lostEv(11*sec, 5, event.LostRingFull))
	for _, e := range resync(12*sec, 5, []event.Event{snapPatch(12*sec, "p", 0, false, true)},
		snapTask(12*sec, 1, "systemd", 0), snapTask(12*sec, 42, "kworker/0:1", 1), snapTask(12*sec, 100, "bash", 0)) {
		s.Apply(e)
	}
	tr := s.Transition
	if tr == nil || tr.Patch != "p" || tr.Target != event.StateUnpatched || !tr.StartResynced || tr.Start != 12*sec {
		t.Fatalf("transition %+v", tr)
	}
	checkInvariants(t, s, 0)
	if p := s.Pending(); len(p) != 1 || p[0].PID != 42 {
		t.Errorf("pending %v, want kworker 42", p)
	}
	if !s.Repairs[0].Began {
		t.Error("the repair does not say a transition began in it")
	}
}

// Hand-made: a blocker the resync finds at the target switched where
// events were lost: the tracker ends its pending period there.
func TestResyncSwitchesBlocker(t *testing.T) {
	k := NewTracker()
	patchingStall(k.S)
	// The tracker saw none of patchingStall's events; replay the check.
	k.cur = k.S.Transition
	k.Apply(check(10*sec+1, 42, "kworker/0:1", event.ReasonSleeping, "f"))
	k.Apply(lostEv(11*sec, 1, event.LostRingFull))
	for _, e := range resync(12*sec, 1, []event.Event{snapPatch(12*sec, "p", 0, true, true)},
		snapTask(12*sec, 1, "systemd", 1), snapTask(12*sec, 42, "kworker/0:1", 1), snapTask(12*sec, 100, "bash", 0)) {
		k.Apply(e)
	}
	b := k.blockers[42]
	if b == nil || b.open || b.SwitchPath != event.PathResync || b.SwitchedAt != 12*sec {
		t.Errorf("blocker %+v", b)
	}
}

// Hand-made: the probes of forks and exits went on after the first sweep;
// their resync drops a task that exited before (bash) and adds one that
// forked before (300, pending), and lists no repair: nothing was lost. The
// same resync after a loss is a repair.
func TestResyncProbesAttached(t *testing.T) {
	for _, lost := range []uint64{0, 4} {
		s := New()
		patchingStall(s)
		if lost > 0 {
			s.Apply(lostEv(11*sec, lost, event.LostMissed))
		}
		evs := resync(12*sec, 0, []event.Event{snapPatch(12*sec, "p", 0, true, true)},
			snapTask(12*sec, 1, "systemd", 1), snapTask(12*sec, 42, "kworker/0:1", 0), snapTask(12*sec, 300, "new", 0))
		evs[0].Reason = event.ResyncAttached
		for _, e := range evs {
			s.Apply(e)
		}
		checkInvariants(t, s, 0)
		if s.Transition == nil {
			t.Fatalf("lost %d: the transition ended", lost)
		}
		if s.Task(100) != nil || s.Task(300) == nil || s.Transition.Total != 3 || len(s.Pending()) != 2 {
			t.Errorf("lost %d: bash %v, new %v, total %d, pending %d; want gone, there, 3, 2",
				lost, s.Task(100), s.Task(300), s.Transition.Total, len(s.Pending()))
		}
		if want := min(lost, 1); uint64(len(s.Repairs)) != want {
			t.Errorf("lost %d: %d repairs, want %d", lost, len(s.Repairs), want)
		}
		if s.LostSinceResync() != 0 {
			t.Errorf("lost %d: %d lost since the resync", lost, s.LostSinceResync())
		}
	}
}
