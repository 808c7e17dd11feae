package probes

import (
	"fmt"
	"io"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/link"

	"github.com/klptop/klptop/internal/event"
	"github.com/klptop/klptop/internal/ksym"
	"github.com/klptop/klptop/internal/sysfs"
)

// Snapshot returns the state at this moment: the patches (sysfs, in
// stacking order) and their klp_states, every task's patch_state (BPF task iterator; with its
// kernel stack while a transition waits for it), then SnapshotEnd.
func (s *Session) Snapshot() ([]event.Event, error) {
	return s.snapshot(false, 0)
}

// resyncEvents reads the state again after lost events: a Resync, then
// the snapshot's events, stamped with the time just after sysfs was read,
// so that the ring's events before that time, which sysfs reflects, go
// before it, and those after it, which the task reads may too, after.
func (s *Session) resyncEvents(lost uint64) ([]event.Event, error) {
	return s.snapshot(true, lost)
}

func (s *Session) snapshot(resync bool, lost uint64) ([]event.Event, error) {
	now := monotonicNow()
	var out []event.Event
	patches, err := sysfs.Patches(s.root)
	if err != nil {
		return nil, fmt.Errorf("livepatch sysfs: %w", err)
	}
	if resync {
		now = monotonicNow()
		e := event.Event{Time: now, Type: event.Resync, Count: lost}
		if lost == 0 {
			e.Reason = event.ResyncAttached
		}
		out = append(out, e)
	}
	target := -1
	for i, p := range patches {
		out = append(out, event.Event{
			Time: now, Type: event.PatchSnapshot, Patch: p.Name,
			Replace: p.Replace, Enabled: p.Enabled, InTransition: p.Transition,
			Seq: i, Target: p.Target(),
		})
		if p.Transition {
			target = p.Target()
		}
	}
	// Each patch's klp_state array, after the patches: a missing read costs
	// only the states.
	if states, err := s.stateEvents(now); err == nil || states != nil {
		out = append(out, states...)
	}
	if s.rd != nil && s.cb.why == "" && !resync {
		// Into the ring buffer, for Read: the probes go on them there.
		_ = s.snapshotCallbacks()
	}
	tasks, err := snapshotTasks(s.coll.Programs[iterProg], now, target, s.syms)
	if err != nil {
		return nil, err
	}
	out = append(out, tasks...)
	if s.funcsWhy == "" {
		out = append(out, s.funcEvents(true, now)...)
	}
	out = append(out, event.Event{Time: now, Type: event.SnapshotEnd, Target: target})
	return out, nil
}

// snapshotTasks runs the task iterator once: one TaskSnapshot per thread.
func snapshotTasks(prog *ebpf.Program, now uint64, target int, syms *ksym.Table) ([]event.Event, error) {
	if prog == nil {
		return nil, fmt.Errorf("%w: task iterator not loaded", ErrNoBPF)
	}
	it, err := link.AttachIter(link.IterOptions{Program: prog})
	if err != nil {
		return nil, fmt.Errorf("%w: task iterator: %v", ErrNoBPF, err)
	}
	defer it.Close()
	r, err := it.Open()
	if err != nil {
		return nil, fmt.Errorf("task iterator: %w", err)
	}
	defer r.Close()
	b, err := io.ReadAll(r)
	if err != nil {
		return nil, fmt.Errorf("task iterator: %w", err)
	}
	recs, err := decodeTasks(b)
	if err != nil {
		return nil, err
	}
	out := make([]event.Event, 0, len(recs))
	for _, r := range recs {
		e := event.Event{
			Time: now, Type: event.TaskSnapshot, PID: r.pid, TGID: r.tgid,
			Comm: r.comm, PatchState: r.patchState, Target: target, Running: r.running,
		}
		// The iterator sends stacks during any transition; a task already
		// at the target does not hold it up.
		if r.patchState != target {
			for _, a := range r.stack {
				e.Stack = append(e.Stack, syms.Frame(a))
			}
		}
		out = append(out, e)
	}
	return out, nil
}

// TaskSnapshots reads every task's patch_state again, with the stacks of
// those not at target: one pass of the task iterator.
func (s *Session) TaskSnapshots(target int) ([]event.Event, error) {
	return snapshotTasks(s.coll.Programs[iterProg], monotonicNow(), target, s.syms)
}
