//go:build guest

package guest

import (
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/klptop/klptop/internal/event"
)

// sampleScript enables the kernel's sample livepatch, waits for the patching
// transition, disables it and waits for the unpatching one.
const sampleScript = `set -e
lp=/sys/kernel/livepatch/livepatch_sample
modprobe livepatch-sample
while [ "$(cat $lp/transition)" != 0 ]; do sleep 0.05; done
echo 0 > $lp/enabled
while [ -e $lp ]; do sleep 0.05; done
unload livepatch_sample
`

// TestRecordSample: the transitions of the sample livepatch, as klptop
// records them, against the kernel's own log.
func TestRecordSample(t *testing.T) {
	needKlptop(t)
	t.Cleanup(func() { unloadPatch(t, sampleName, "livepatch_sample") })
	mark := kmsgMark(t)
	rec := startRecord(t, "sample", sampleScript)()
	klog := readKmsg(t, mark)

	t.Run("order", func(t *testing.T) {
		ms, idx := rec.milestones()
		var got []string
		for _, e := range ms {
			got = append(got, fmt.Sprintf("%s/%d", e.Type, e.Target))
		}
		want := []string{"transition_init/1", "transition_start", "transition_complete",
			"transition_init/0", "transition_start", "transition_complete"}
		if len(ms) != len(want) {
			t.Fatalf("milestones %v, want %v", got, want)
		}
		for i, e := range ms {
			w, target, hasTarget := strings.Cut(want[i], "/")
			if string(e.Type) != w || (hasTarget && fmt.Sprint(e.Target) != target) {
				t.Errorf("milestone %d is %s, want %s (all: %v)", i, got[i], want[i], got)
			}
			if e.Type == event.TransitionInit && e.Patch != "" && e.Patch != sampleName {
				t.Errorf("milestone %d: patch %q, want %q", i, e.Patch, sampleName)
			}
		}
		checkNonDecreasing(t, ms)
		// Each transition sweeps at least once: the enable and the disable
		// call klp_try_complete_transition themselves.
		for _, pair := range [][2]int{{1, 2}, {4, 5}} {
			n := 0
			for _, e := range rec.events[idx[pair[0]]:idx[pair[1]]] {
				if e.Type == event.SweepStart {
					n++
				}
			}
			if n == 0 {
				t.Errorf("no sweep between %v and %v", ms[pair[0]], ms[pair[1]])
			}
			t.Logf("%d sweeps in the %s transition", n, dirName(ms[pair[0]-1].Target))
		}
	})
	t.Run("kernel_log", func(t *testing.T) { checkAgainstKernelLog(t, rec, klog) })
}

// stallScript makes a transition that cannot finish: test_klp_callbacks_busy
// parks a kworker in busymod_work_func, which test_klp_callbacks_demo
// patches. It waits for the test to say go ($UNBLOCK appears), then lets the
// kworker out, and undoes everything.
const stallScript = `set -e
lp=/sys/kernel/livepatch/test_klp_callbacks_demo
modprobe test_klp_callbacks_busy block_transition=Y
modprobe test_klp_callbacks_demo
i=0
while [ ! -e "$UNBLOCK" ] && [ $i -lt 900 ]; do sleep 0.1; i=$((i+1)); done
echo 0 > /sys/module/test_klp_callbacks_busy/parameters/block_transition
while [ "$(cat $lp/transition)" != 0 ]; do sleep 0.05; done
echo 0 > $lp/enabled
while [ -e $lp ]; do sleep 0.05; done
unload test_klp_callbacks_demo test_klp_callbacks_busy
`

const busyFunc = "busymod_work_func"

// TestRecordStall: a transition stuck on a kworker sleeping in a patched
// function, as klptop records it, against /proc and the kernel's log.
func TestRecordStall(t *testing.T) {
	needKlptop(t)
	unblock := filepath.Join(t.TempDir(), "unblock")
	t.Cleanup(func() {
		unloadPatch(t, demoName, "test_klp_callbacks_demo", "test_klp_callbacks_busy")
	})
	mark := kmsgMark(t)
	t.Setenv("UNBLOCK", unblock)
	wait := startRecord(t, "stall", stallScript)
	lp := sysLP + "/" + demoName

	waitFor(t, 90*time.Second, "the stalled transition", func() bool { return readAttr(lp+"/transition") == "1" })
	var stuck []int
	waitFor(t, 30*time.Second, "a task in "+busyFunc, func() bool {
		stuck = tasksWithFunc(busyFunc)
		return len(stuck) > 0
	})
	if len(stuck) != 1 {
		t.Fatalf("tasks in %s: %v, want one kworker", busyFunc, stuck)
	}
	kw := stuck[0]
	t.Logf("stuck: pid %d (%s)", kw, comm(kw))
	// Sweeps retry about every second: let a few see the kworker.
	time.Sleep(3 * time.Second)

	// Two samples of every task's patch_state, each bracketed by the clock of
	// the trace: a task that switched while we looked is judged by neither.
	a0 := monoNow(t)
	sa := procTasks()
	a1 := monoNow(t)
	time.Sleep(200 * time.Millisecond)
	b0 := monoNow(t)
	sb := procTasks()
	b1 := monoNow(t)
	if readAttr(lp+"/transition") != "1" || sa[kw] != event.StateUnpatched {
		t.Fatalf("the transition was no longer stuck while sampling (transition=%s, pid %d patch_state=%d)",
			readAttr(lp+"/transition"), kw, sa[kw])
	}
	unblockedAt := monoNow(t)
	if err := os.WriteFile(unblock, nil, 0o644); err != nil {
		t.Fatal(err)
	}
	rec := wait()
	klog := readKmsg(t, mark)

	t.Run("stall_reason", func(t *testing.T) {
		// The kworker wakes from msleep every 20 ms: a sweep may find it
		// on a CPU (-EBUSY, running); asleep, it is in busymod_work_func.
		n, sleeping := 0, 0
		for _, e := range rec.events {
			if e.Type == event.TaskCheck && e.PID == kw && e.Time < unblockedAt {
				switch {
				case e.Reason == event.ReasonSleeping && e.Func == busyFunc:
					sleeping++
				case e.Reason == event.ReasonRunning && e.Ret == -16:
				default:
					t.Errorf("check of pid %d while stuck: ret %d reason %q func %q, want %q %q (or running)",
						kw, e.Ret, e.Reason, e.Func, event.ReasonSleeping, busyFunc)
				}
				n++
			}
		}
		if sleeping == 0 {
			t.Errorf("no check of pid %d (%s) found it in %s while it was stuck (%d checks)", kw, comm(kw), busyFunc, n)
		}
		t.Logf("%d failed checks of pid %d while stuck, %d sleeping in %s, the others running", n, kw, sleeping, busyFunc)
	})

	t.Run("switch_then_complete", func(t *testing.T) {
		switched, completed := -1, -1
		for i, e := range rec.events {
			if e.Time < unblockedAt {
				continue
			}
			if switched < 0 && e.PID == kw && ((e.Type == event.TaskCheck && e.Reason == event.ReasonSwitched) ||
				(e.Type == event.TaskSwitch && e.PatchState == event.StatePatched)) {
				switched = i
			}
			if completed < 0 && e.Type == event.TransitionComplete {
				completed = i
			}
		}
		if switched < 0 {
			t.Fatalf("no switch of pid %d after the unblock", kw)
		}
		if completed < 0 {
			t.Fatalf("no transition_complete after the unblock")
		}
		if completed < switched || rec.events[completed].Time < rec.events[switched].Time {
			t.Errorf("transition_complete (%v) before the kworker's switch (%v)", rec.events[completed], rec.events[switched])
		}
		t.Logf("switched: %v; then %v", rec.events[switched], rec.events[completed])
	})

	t.Run("patch_state_matches_proc", func(t *testing.T) {
		judged, bad := 0, 0
		for pid, ps := range sa {
			if psb, ok := sb[pid]; !ok || psb != ps {
				continue // exited or switched between the samples
			}
			f0, f1 := foldPatchState(rec.events, pid, a0), foldPatchState(rec.events, pid, b1)
			if f0 != f1 {
				continue // the trace has it switch while we sampled
			}
			judged++
			if f0 != ps {
				bad++
				t.Errorf("pid %d (%s): /proc says patch_state %d, the trace %d (sampled at %.3fs-%.3fs)", pid, comm(pid), ps, f0, float64(a0)/1e9, float64(a1)/1e9)
			}
		}
		t.Logf("%d tasks judged, %d disagree (%d in /proc; second sample at %.3fs-%.3fs)", judged, bad, len(sa), float64(b0)/1e9, float64(b1)/1e9)
		if judged < 10 {
			t.Errorf("only %d tasks could be judged", judged)
		}
		if got := foldPatchState(rec.events, kw, a0); got != event.StateUnpatched {
			t.Errorf("trace has the stuck kworker %d at patch_state %d, want %d", kw, got, event.StateUnpatched)
		}
	})

	t.Run("kernel_log", func(t *testing.T) { checkAgainstKernelLog(t, rec, klog) })
}

// foldPatchState is what the trace says pid's patch_state was at time at.
// It follows the kernel, not klptop's own fold (internal/state), so that the
// two are checked against each other: klp_init_transition sets every task to
// the opposite of the target, tasks then switch one by one (a sweep, their
// own way out, or fork inheriting the parent's state), and completion sets
// every task back to idle. An aggregate sweep switched every pending task
// it did not report failing.
func foldPatchState(evs []event.Event, pid int, at uint64) int {
	state, inTransition, target := event.StateIdle, false, event.StatePatched
	aggregate, failed := false, false
	for _, e := range evs {
		// Skip, not stop: the kernel's events come in causal order, but
		// events klptop derives in user space may be written among them
		// with later times.
		if e.Time > at {
			continue
		}
		switch e.Type {
		case event.TransitionInit:
			inTransition, target = true, e.Target
			state = 1 - target
		case event.TransitionReverse:
			target = e.Target
		case event.TransitionForce:
			state = target
		case event.TransitionComplete, event.TransitionCancel:
			inTransition, state = false, event.StateIdle
		case event.TaskSnapshot:
			if e.PID == pid {
				state = e.PatchState
			}
		case event.SweepStart:
			aggregate, failed = e.Aggregate, false
		case event.SweepEnd:
			if aggregate && e.Aggregate && inTransition && state == 1-target && !failed {
				state = target
			}
			aggregate = false
		case event.TaskCheck:
			if e.PID == pid && e.Reason == event.ReasonSwitched {
				state = target
			} else if e.PID == pid {
				failed = true
			}
		case event.TaskSwitch:
			if e.PID == pid {
				state = e.PatchState
			}
		}
	}
	if !inTransition {
		return event.StateIdle
	}
	return state
}

// TestTUIStall: klptop's live view in a real terminal (tmux) shows the stuck
// kworker and the function it sleeps in, and quits cleanly on q.
func TestTUIStall(t *testing.T) {
	needKlptop(t)
	tui := startTUI(t, "klptop-e2e", 120, 40, filepath.Join(outDir, "tui.stderr"))
	t.Cleanup(func() { unloadPatch(t, demoName, "test_klp_callbacks_demo", "test_klp_callbacks_busy") })
	shot := func(name, screen string) {
		_ = os.WriteFile(filepath.Join(outDir, "tui-"+name+".txt"), []byte(screen), 0o644)
	}
	var screen string
	waitFor(t, 60*time.Second, "klptop to draw", func() bool {
		screen = tui.capture()
		return strings.TrimSpace(screen) != "" || tui.exited()
	})
	tui.failIfExited(screen)
	time.Sleep(2 * time.Second) // probes attached and the first frame drawn
	shot("idle", tui.capture())

	run(t, "modprobe", "test_klp_callbacks_busy", "block_transition=Y")
	run(t, "modprobe", "test_klp_callbacks_demo")
	var kw []int
	waitFor(t, 30*time.Second, "a task in "+busyFunc, func() bool {
		kw = tasksWithFunc(busyFunc)
		return len(kw) == 1
	})
	pidRE := regexp.MustCompile(fmt.Sprintf(`\b%d\b`, kw[0]))
	deadline := time.Now().Add(60 * time.Second)
	for {
		screen = tui.capture()
		if pidRE.MatchString(screen) && strings.Contains(screen, busyFunc) {
			break
		}
		if time.Now().After(deadline) {
			shot("stall", screen)
			t.Fatalf("after 60s of stall, the screen does not show pid %d and %s:\n%s", kw[0], busyFunc, screen)
		}
		time.Sleep(500 * time.Millisecond)
	}
	shot("stall", screen)
	t.Logf("screen during the stall:\n%s", screen)
	tui.quit()
}

func fileExists(p string) bool {
	_, err := os.Stat(p)
	return err == nil
}
