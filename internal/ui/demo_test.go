package ui

import (
	"time"

	"github.com/klptop/klptop/internal/event"
)

// The sequences here are hand-made after what a 6.1 guest showed for
// test_klp_callbacks_busy + test_klp_callbacks_demo (a kworker stuck on
// busymod_work_func); they are not recordings.

const sec = uint64(time.Second)

var busyStack = []string{
	"__schedule+0x2e8/0x870",
	"schedule+0x5a/0xd0",
	"schedule_timeout+0x94/0x150",
	"msleep+0x2d/0x40",
	"busymod_work_func+0x2b/0x40 [test_klp_callbacks_busy]",
	"process_one_work+0x1c7/0x380",
	"worker_thread+0x4d/0x380",
	"kthread+0xe9/0x110",
	"ret_from_fork+0x22/0x30",
}

// handMadeStall: snapshot of an idle machine with one patch, then a second
// patch whose transition stalls on a kworker for 17 sweeps.
func handMadeStall() []event.Event {
	t0 := 1000 * sec
	evs := []event.Event{
		{Time: t0, Type: event.PatchSnapshot, Patch: "test_klp_callbacks_busy", Seq: 0, Enabled: true},
		{Time: t0, Type: event.TaskSnapshot, PID: 1, TGID: 1, Comm: "systemd", PatchState: -1},
		{Time: t0, Type: event.TaskSnapshot, PID: 42, TGID: 42, Comm: "kworker/0:1", PatchState: -1},
		{Time: t0, Type: event.TaskSnapshot, PID: 77, TGID: 77, Comm: "sshd", PatchState: -1},
		{Time: t0, Type: event.TaskSnapshot, PID: 310, TGID: 310, Comm: "bash", PatchState: -1},
		{Time: t0, Type: event.TaskSnapshot, PID: 0, Comm: "swapper/0", PatchState: -1},
		{Time: t0, Type: event.SnapshotEnd},
		{Time: t0 + sec, Type: event.PatchEnable, Patch: "test_klp_callbacks_demo"},
		{Time: t0 + sec, Type: event.TransitionInit, Patch: "test_klp_callbacks_demo", Target: 1},
		{Time: t0 + sec, Type: event.TransitionStart, Target: 1},
		{Time: t0 + sec, Type: event.TaskSwitch, PID: 0, Comm: "swapper/0", PatchState: 1, Path: event.PathIdle},
	}
	// As the kernel does, every sweep checks every task not yet switched.
	for i := range 17 {
		ts := t0 + sec + uint64(i)*sec + sec/100
		evs = append(evs, event.Event{Time: ts, Type: event.SweepStart})
		failed := 0
		check := func(pid int, comm, reason string, ret int32) {
			evs = append(evs, event.Event{Time: ts, Type: event.TaskCheck, PID: pid, TGID: pid, Comm: comm, Reason: reason, Ret: ret})
			if reason != event.ReasonSwitched {
				failed++
			}
		}
		switch i {
		case 0:
			check(1, "systemd", event.ReasonSwitched, 0)
			check(77, "sshd", event.ReasonRunning, -16)
		case 1:
			check(77, "sshd", event.ReasonSwitched, 0)
		case 3:
			evs = append(evs,
				event.Event{Time: ts, Type: event.TaskSwitch, PID: 310, TGID: 310, Comm: "bash", PatchState: 1, Path: event.PathUser})
		case 9:
			evs = append(evs,
				event.Event{Time: ts, Type: event.TaskSwitch, PID: 311, TGID: 311, Comm: "sleep", PatchState: 0, Path: event.PathFork})
		}
		if i < 3 {
			check(310, "bash", event.ReasonRunning, -16)
		}
		if i >= 9 {
			check(311, "sleep", event.ReasonUnreliable, -22)
		}
		kw := event.Event{Time: ts, Type: event.TaskCheck, PID: 42, TGID: 42, Comm: "kworker/0:1",
			Reason: event.ReasonSleeping, Ret: -98, Func: "busymod_work_func"}
		if i == 0 {
			kw.Stack = busyStack
		}
		failed++
		evs = append(evs, kw)
		if i == 15 {
			// klp_signals_cnt reaches SIGNALS_TIMEOUT: every task still
			// pending is prodded.
			evs = append(evs,
				event.Event{Time: ts + 200_000, Type: event.Signal, PID: 311, TGID: 311, Comm: "sleep", Path: event.PathSignal},
				event.Event{Time: ts + 200_000, Type: event.Signal, PID: 42, TGID: 42, Comm: "kworker/0:1", Path: event.PathWake})
		}
		evs = append(evs, event.Event{Time: ts + 300_000, Type: event.SweepEnd, Duration: 300_000, Pending: failed, Checked: failed})
	}
	return evs
}

// handMadeFinish completes handMadeStall's transition.
func handMadeFinish(after uint64) []event.Event {
	return []event.Event{
		{Time: after, Type: event.TaskCheck, PID: 42, Comm: "kworker/0:1", Reason: event.ReasonSwitched},
		{Time: after, Type: event.TaskSwitch, PID: 311, Comm: "sleep", PatchState: 1, Path: event.PathUser},
		{Time: after + sec/10, Type: event.TransitionComplete, Patch: "test_klp_callbacks_demo", Target: 1},
	}
}

// handMadeAttached: klptop starts while a disable of p2 is under way, then
// the operator re-enables it (a reverse).
func handMadeAttached() []event.Event {
	t0 := 50 * sec
	return []event.Event{
		{Time: t0, Type: event.PatchSnapshot, Patch: "p1", Seq: 0, Enabled: true, Replace: true},
		{Time: t0, Type: event.PatchSnapshot, Patch: "p2", Seq: 1, Enabled: false, InTransition: true},
		{Time: t0, Type: event.TaskSnapshot, PID: 1, Comm: "systemd", PatchState: 0},
		{Time: t0, Type: event.TaskSnapshot, PID: 900, Comm: "stress-ng", PatchState: 1, Stack: []string{"do_sys_poll+0x1/0x2"}},
		{Time: t0, Type: event.SnapshotEnd},
		{Time: t0 + sec, Type: event.SweepStart},
		{Time: t0 + sec, Type: event.TaskCheck, PID: 900, Comm: "stress-ng", Reason: event.ReasonRunning, Ret: -16},
		{Time: t0 + sec, Type: event.SweepEnd, Pending: 1, Duration: 2_000_000},
		{Time: t0 + 10*sec, Type: event.TransitionReverse, Patch: "p2", Target: 1},
		{Time: t0 + 10*sec, Type: event.Lost, Count: 12},
	}
}
