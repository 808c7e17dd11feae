package state

import (
	"cmp"
	"slices"

	"github.com/klptop/klptop/internal/event"
)

// Blocker is a task that failed at least one check during a transition: what
// report and export show for a stall. State keeps only the latest check of a
// task and forgets it when the transition ends; a Tracker keeps the whole
// story until the transition is handed over.
type Blocker struct {
	Key, PID, TGID int
	Comm           string
	// Reason and Func: the last failed check's while the transition runs;
	// once it ended, those of the stretch that blocked the task longest (a
	// kworker parked for seconds in a function, then seen running once on
	// its way out, was held by the function).
	Reason, Func string
	// Stack is the last stack the recorder sent for the task (it sends one
	// only when the reason or function changes), of that stretch once the
	// transition ended.
	Stack []string
	// FirstCheck and LastCheck are the times of the first and last failed
	// checks; Checks counts them.
	FirstCheck, LastCheck uint64
	Checks                int
	// Signals the kernel sent the task (event.Signal) in this transition.
	Signals int
	// Blocked is how long the task was pending between the start of the
	// transition (or of its pending period) and its switch, summed over
	// pending periods; a reverse starts a new one.
	Blocked uint64
	// SwitchedAt and SwitchPath: how the task finally switched; SwitchedAt is
	// 0 when it never did before the transition ended or the trace did.
	SwitchedAt uint64
	SwitchPath string

	pendingFrom uint64 // start of the open pending period, valid while open
	open        bool
	segStart    uint64 // start of the open Segment
	// The longest Segment so far, and its reason, function and stack.
	longest              uint64
	longReason, longFunc string
	longStack            []string
}

// addBlocked closes the pending period at at; it saturates rather than wrap.
func (b *Blocker) addBlocked(at uint64) {
	if at > b.pendingFrom {
		d := at - b.pendingFrom
		b.Blocked += min(d, 1<<64-1-b.Blocked)
	}
}

// Segment is a stretch of time over which a task was blocked for one reason
// (and function): from the first failed check that gave it, to the check
// that gave another, its switch, or the end.
type Segment struct {
	Start, End   uint64
	Reason, Func string
	// Open: the task was still blocked when the transition or trace ended.
	Open bool
}

// Ended is a transition handed over by a Tracker.
type Ended struct {
	// Index numbers transitions in trace order, from 1.
	Index      int
	Transition *Transition
	// Blockers, longest blocked first.
	Blockers []*Blocker
	// EndLost: a new transition began before this one's end was recorded
	// (lost events), so its outcome is not known; State calls it complete.
	// (A resync that finds it over sets Transition.EndResynced instead.)
	EndLost bool
	// Unfinished: the trace ended during the transition.
	Unfinished bool
	// Until is the transition's end or, when Unfinished, the trace's.
	Until uint64
}

// Tracker folds events into a State and follows each transition's blocking
// tasks. It is what report and export share so that they agree with each
// other and with the live view.
type Tracker struct {
	S *State
	// OnSegment, if set, is called for every Segment as it closes.
	OnSegment func(tr *Transition, b *Blocker, seg Segment)

	cur      *Transition
	index    int
	blockers map[int]*Blocker
}

// NewTracker returns a Tracker over an empty State.
func NewTracker() *Tracker {
	return &Tracker{S: New(), blockers: map[int]*Blocker{}}
}

// Index is the number of the transition in progress (or of the last one).
func (k *Tracker) Index() int { return k.index }

// Apply folds e. When e ends a transition, Apply returns it; at most one
// can end per event.
func (k *Tracker) Apply(e event.Event) *Ended {
	if k.S == nil {
		k.S = New()
	}
	if k.blockers == nil {
		k.blockers = map[int]*Blocker{}
	}
	s := k.S
	endLost := e.Type == event.TransitionInit && s.Transition != nil
	// Times come from State's clock, which never goes back: a reordered or
	// corrupt trace must not make a blocker's durations wrap.
	now := max(e.Time, s.Now)
	if k.cur != nil && e.Type == event.TransitionReverse {
		// The tasks still pending are at the new target once the target
		// flips: their pending period ends here, though they did not switch.
		k.closeAll(now, PathReverse)
	}
	resyncing := s.Resyncing()
	s.Apply(e)

	var ended *Ended
	if k.cur != nil && s.Transition != k.cur {
		ended = k.end(k.cur, k.cur.End, false)
		ended.EndLost = endLost
	} else if k.cur != nil && resyncing && !s.Resyncing() {
		// A resync ended: the blockers it found at the target or gone
		// switched (or left) where events were lost.
		for key, b := range k.blockers {
			if t := s.Tasks[key]; b.open && (t == nil || t.PatchState == k.cur.Target || !participates(t.PatchState)) {
				k.switched(b, now, event.PathResync)
			}
		}
	}
	if s.Transition != nil && s.Transition != k.cur {
		k.cur = s.Transition
		k.index++
	}
	if k.cur == nil {
		return ended
	}
	switch e.Type {
	case event.TaskCheck:
		k.check(e, now)
	case event.TaskSwitch:
		if b := k.blockers[Key(e)]; b != nil && e.PatchState == k.cur.Target {
			k.switched(b, now, e.Path)
		}
	case event.SweepEnd:
		// An aggregate sweep's switches of tasks whose check was not sent.
		for key, b := range k.blockers {
			if t := s.Tasks[key]; b.open && t != nil && t.PatchState == k.cur.Target && t.SwitchedAt == e.Time {
				k.switched(b, now, t.SwitchPath)
			}
		}
	case event.TransitionForce:
		k.closeAll(now, event.PathForce)
	case event.TaskExit:
		if b := k.blockers[Key(e)]; b != nil {
			k.switched(b, now, event.PathExit)
		}
	case event.Signal:
		// The kernel signals only tasks that failed a check in this very
		// sweep, so the blocker exists unless that check was lost.
		if b := k.blockers[Key(e)]; b != nil {
			b.Signals++
		}
	}
	return ended
}

func (k *Tracker) check(e event.Event, now uint64) {
	key := Key(e)
	t := k.S.Tasks[key]
	b := k.blockers[key]
	if t == nil {
		return
	}
	if t.PatchState == k.cur.Target || !participates(t.PatchState) {
		if b != nil && t.SwitchedAt == e.Time {
			k.switched(b, now, t.SwitchPath)
		}
		return
	}
	if b == nil {
		b = &Blocker{Key: key, PID: t.PID}
		k.blockers[key] = b
	}
	b.TGID, b.Comm = t.TGID, t.Comm
	if b.Checks == 0 {
		b.FirstCheck = now
	}
	if !b.open {
		b.open = true
		b.pendingFrom = min(t.PendingSince, now)
		b.SwitchedAt, b.SwitchPath = 0, ""
		b.segStart = now
	} else if t.Reason != b.Reason || t.Func != b.Func {
		k.segment(b, now, false)
		b.segStart = now
	}
	// After closing the last stretch: its stack is the one it had.
	if len(t.Stack) > 0 {
		b.Stack = t.Stack
	}
	b.Reason, b.Func = t.Reason, t.Func
	b.LastCheck = now
	b.Checks++
}

func (k *Tracker) segment(b *Blocker, end uint64, open bool) {
	if b.Checks == 0 {
		return
	}
	seg := Segment{Start: b.segStart, End: max(end, b.segStart), Reason: b.Reason, Func: b.Func, Open: open}
	if d := seg.End - seg.Start; d >= b.longest {
		b.longest, b.longReason, b.longFunc, b.longStack = d, b.Reason, b.Func, b.Stack
	}
	if k.OnSegment != nil {
		k.OnSegment(k.cur, b, seg)
	}
}

func (k *Tracker) switched(b *Blocker, at uint64, path string) {
	if !b.open {
		return
	}
	k.segment(b, at, false)
	b.open = false
	b.addBlocked(at)
	b.SwitchedAt, b.SwitchPath = at, path
}

// PathReverse is a Blocker's SwitchPath when a reverse released it: the
// task did not switch, the target came to its state.
const PathReverse = "reverse"

// closeAll ends the pending period of every blocker.
func (k *Tracker) closeAll(at uint64, path string) {
	for _, b := range k.blockers {
		if b.open {
			k.switched(b, at, path)
		}
	}
}

func (k *Tracker) end(tr *Transition, at uint64, unfinished bool) *Ended {
	out := &Ended{Index: k.index, Transition: tr, Unfinished: unfinished, Until: at}
	for _, b := range k.blockers {
		if b.open {
			k.segment(b, at, true)
			b.addBlocked(at)
			b.open = false
		}
		if b.Checks > 0 {
			b.Reason, b.Func = b.longReason, b.longFunc
			if b.longStack != nil {
				b.Stack = b.longStack
			}
		}
		out.Blockers = append(out.Blockers, b)
	}
	slices.SortFunc(out.Blockers, func(a, b *Blocker) int {
		if c := cmp.Compare(b.Blocked, a.Blocked); c != 0 {
			return c
		}
		return cmp.Compare(a.Key, b.Key)
	})
	k.cur = nil
	clear(k.blockers)
	return out
}

// Close hands over the transition still in progress when the trace ended,
// or returns nil. Tasks the state still holds pending but that were never
// seen failing a check (snapshot at attach) are included as blockers with
// no checks, so that an unfinished transition always names who held it up.
func (k *Tracker) Close() *Ended {
	if k.cur == nil || k.S == nil {
		return nil
	}
	now := max(k.S.Now, k.cur.Start)
	for _, t := range k.S.Pending() {
		key := t.Key()
		if b := k.blockers[key]; b == nil || !b.open {
			if b == nil {
				b = &Blocker{Key: key, PID: t.PID, TGID: t.TGID, Comm: t.Comm,
					Reason: t.Reason, Func: t.Func, Stack: t.Stack, Signals: t.Signals}
				k.blockers[key] = b
			}
			b.open = true
			b.pendingFrom = min(max(t.PendingSince, k.cur.Start), now)
			b.SwitchedAt, b.SwitchPath = 0, ""
		}
	}
	return k.end(k.cur, now, true)
}
