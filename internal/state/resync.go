package state

import (
	"cmp"
	"maps"
	"slices"

	"github.com/klptop/klptop/internal/event"
)

// Repair is a stretch of the recording in which events were lost, and the
// resync that put the picture right again at its end.
type Repair struct {
	// From is the start of the first loss's window, At the resync's time.
	From, At uint64
	// Lost counts the events lost in it, Causes by event.Lost* cause.
	Lost   uint64
	Causes map[string]uint64
	// Ended and Began: the transition klptop held ended, or one it did not
	// know of began, in the stretch; Forgotten counts the tasks that left
	// unseen.
	Ended, Began bool
	Forgotten    int
}

// maxRepairs bounds State.Repairs (as maxHistory does History).
const maxRepairs = 256

// resyncing collects a Resync's snapshot until its SnapshotEnd: the tasks
// and patches are applied together at the end, once the transition the
// snapshot shows is settled, since that decides which tasks are pending.
type resyncing struct {
	at uint64
	// attached: a resync after the probes of forks and exits went on,
	// not after a loss (event.ResyncAttached).
	attached bool
	patches  []event.Event
	tasks    []event.Event
	funcs    map[string]bool
}

func (s *State) lost(e event.Event) {
	s.Lost += e.Count
	if tr := s.Transition; tr != nil {
		tr.Lost += e.Count
	}
	if e.Count == 0 {
		return
	}
	if s.lostOpen == nil {
		s.lostOpen = &Repair{From: e.Time - min(e.Duration, e.Time), Causes: map[string]uint64{}}
	}
	cause := e.Reason
	if cause == "" {
		cause = event.LostRingFull // traces before 1.9 knew no other
	}
	s.lostOpen.Lost += e.Count
	s.lostOpen.Causes[cause] += e.Count
}

// LostSinceResync is the number of events lost since the last resync: the
// picture may be off by them until the next one.
func (s *State) LostSinceResync() uint64 {
	if s.lostOpen == nil {
		return 0
	}
	return s.lostOpen.Lost
}

// Resyncing reports whether the snapshot events being applied belong to a
// Resync (not to the start-up snapshot).
func (s *State) Resyncing() bool { return s.resync != nil }

func (s *State) endResync(e event.Event) {
	r := s.resync
	s.resync = nil
	rep := s.lostOpen
	if rep == nil {
		rep = &Repair{From: r.at}
	}
	s.lostOpen = nil
	rep.At = r.at

	// The transition the snapshot shows: the patch sysfs says is in
	// transition, its direction sysfs "enabled".
	var shown *event.Event
	for i, p := range r.patches {
		if p.InTransition {
			shown = &r.patches[i]
		}
	}
	if tr := s.Transition; tr != nil && (shown == nil || shown.Patch != tr.Patch || target(shownTarget(shown)) != tr.Target) {
		// It ended where events were lost: klptop knows only that it
		// ended before the resync.
		tr.EndResynced = true
		rep.Ended = true
		s.finish(event.Event{Time: r.at}, false)
	}

	// Patches as the snapshot lists them, in its stacking order, keeping
	// what klptop knows of each beyond sysfs.
	slices.SortStableFunc(r.patches, func(a, b event.Event) int { return cmp.Compare(a.Seq, b.Seq) })
	var ps []*Patch
	for _, pe := range r.patches {
		p := s.Patch(pe.Patch)
		if p == nil || slices.Contains(ps, p) {
			p = &Patch{Name: pe.Patch}
		}
		p.Enabled, p.Replace, p.InTransition = pe.Enabled, pe.Replace, pe.InTransition
		ps = append(ps, p)
	}
	s.setPatches(ps)

	if shown != nil && s.Transition == nil {
		s.Transition = &Transition{Patch: shown.Patch, Target: target(shownTarget(shown)), Start: r.at,
			Outcome: OutcomeRunning, Attached: true, StartResynced: true}
		rep.Began = true
		for _, t := range s.Tasks {
			// Whatever state the tasks had, the snapshot below gives it;
			// until then none counts.
			t.PatchState = event.StateIdle
			clearCheck(t)
		}
	}

	seen := make(map[int]bool, len(r.tasks))
	for _, te := range r.tasks {
		seen[Key(te)] = true
		if t := s.Tasks[Key(te)]; t != nil && len(t.Stack) > 0 {
			// The stack a check judged (read with it from /proc) stands:
			// the iterator's, read at another moment, may not show the
			// function the check found.
			te.Stack = nil
		}
		s.taskSnapshot(te)
	}
	for k, t := range s.Tasks {
		if !seen[k] {
			s.setState(t, event.StateIdle, r.at)
			delete(s.Tasks, k)
			rep.Forgotten++
		}
	}
	for k := range s.Funcs {
		if !r.funcs[k] {
			delete(s.Funcs, k)
		}
	}
	s.recount()
	// Tasks that forked or exited before the probes went on are what such
	// a resync is for: no repair, unless the picture was wrong otherwise.
	if !r.attached || rep.Lost > 0 || rep.Ended || rep.Began {
		s.Repairs = append(s.Repairs, rep)
	}
	if len(s.Repairs) > maxRepairs {
		s.Repairs = slices.Delete(s.Repairs, 0, len(s.Repairs)-maxRepairs)
	}
	// A sweep under way when events were lost cannot tell who it skipped.
	s.sweepChecked = nil
}

// shownTarget: sysfs "enabled" is a transition's direction (the kernel
// sets patch->enabled before starting it and flips it on reverse).
func shownTarget(p *event.Event) int {
	if p.Enabled {
		return event.StatePatched
	}
	return event.StateUnpatched
}

// resyncEvent folds an event that belongs to a Resync's snapshot; false if
// e is not one.
func (s *State) resyncEvent(e event.Event) bool {
	r := s.resync
	switch e.Type {
	case event.PatchSnapshot:
		r.patches = append(r.patches, e)
	case event.TaskSnapshot:
		r.tasks = append(r.tasks, e)
	case event.FuncStack:
		s.funcStack(e)
		if r.funcs == nil {
			r.funcs = map[string]bool{}
		}
		r.funcs[funcKey(e.Object, e.Func)] = true
	case event.SnapshotEnd:
		s.endResync(e)
	default:
		return false
	}
	return true
}

// CauseList lists a Repair's causes, most events first.
func (r *Repair) CauseList() []string {
	cs := slices.Collect(maps.Keys(r.Causes))
	slices.SortFunc(cs, func(a, b string) int {
		if c := cmp.Compare(r.Causes[b], r.Causes[a]); c != 0 {
			return c
		}
		return cmp.Compare(a, b)
	})
	return cs
}
