//go:build guest

package guest

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/klptop/klptop/internal/event"
	"github.com/klptop/klptop/internal/state"
	"github.com/klptop/klptop/internal/status"
)

// The degraded backend: no BPF, sysfs and /proc polled every 250 ms.

const pollInterval = 250 * time.Millisecond

// startPollRecord starts `klptop record --backend poll -o PATH -- sh -c
// SCRIPT`; it returns klptop's pid and a function that waits for it and
// reads the trace.
func startPollRecord(t *testing.T, path, script string) (int, func() *recording) {
	t.Helper()
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		t.Fatal(err)
	}
	logf, err := os.Create(strings.TrimSuffix(path, filepath.Ext(path)) + ".log")
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	cmd := exec.CommandContext(ctx, klptopBin, "record", "--backend", "poll", "-o", path, "--", "sh", "-c", moduleLib+script)
	cmd.Stdout, cmd.Stderr = logf, logf
	cmd.Cancel = func() error { return cmd.Process.Signal(syscall.SIGINT) }
	cmd.WaitDelay = 10 * time.Second
	if err := cmd.Start(); err != nil {
		cancel()
		logf.Close()
		t.Fatal(err)
	}
	done := false
	t.Cleanup(func() {
		if !done {
			_ = cmd.Process.Kill()
			_ = cmd.Wait()
			cancel()
			logf.Close()
		}
	})
	return cmd.Process.Pid, func() *recording {
		t.Helper()
		err := cmd.Wait()
		done = true
		cancel()
		logf.Close()
		out, _ := os.ReadFile(logf.Name())
		if err != nil {
			t.Fatalf("klptop record --backend poll: %v\n%s", err, out)
		}
		t.Logf("klptop record output:\n%s", out)
		return readTrace(t, path)
	}
}

// cpuTicks is utime+stime of pid, in clock ticks (USER_HZ, 100 on Debian).
func cpuTicks(t *testing.T, pid int) int {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		t.Fatal(err)
	}
	s := string(b)
	f := strings.Fields(s[strings.LastIndexByte(s, ')')+2:])
	u, _ := strconv.Atoi(f[11])
	k, _ := strconv.Atoi(f[12])
	return u + k
}

// TestPollStall: the stall scenario recorded by polling, against the
// kernel's own log and /proc: the transition's start, the stuck kworker
// pending with busymod_work_func from its stack, its switch and the
// completion once let go.
func TestPollStall(t *testing.T) {
	needKlptop(t)
	cleanupDemo(t)
	unblock := filepath.Join(t.TempDir(), "unblock")
	mark := kmsgMark(t)
	t.Setenv("UNBLOCK", unblock)
	pid, wait := startPollRecord(t, filepath.Join(outDir, "traces", "poll-stall.ndjson"), stallScript)

	kw := stuckKworker(t)
	// CPU the poller costs during the stall: a whole /proc scan every poll.
	c0, w0 := cpuTicks(t, pid), time.Now()
	time.Sleep(3 * time.Second)
	c1, w1 := cpuTicks(t, pid), time.Now()
	cpu := float64(c1-c0) / 100 / w1.Sub(w0).Seconds()
	t.Logf("klptop --backend poll during the stall: %.1f%% of a CPU (%d ticks in %v), %d threads in /proc",
		100*cpu, c1-c0, w1.Sub(w0).Round(time.Millisecond), len(procTasks()))
	if readAttr(demoLP+"/transition") != "1" {
		t.Fatal("the transition is no longer stuck")
	}
	unblockedAt := monoNow(t)
	if err := os.WriteFile(unblock, nil, 0o644); err != nil {
		t.Fatal(err)
	}
	rec := wait()
	klog := readKmsg(t, mark)

	t.Run("header", func(t *testing.T) {
		h := rec.header
		if h.Backend != "poll" || time.Duration(h.PollIntervalNs) != pollInterval {
			t.Errorf("header backend %q interval %v, want poll every %v", h.Backend, time.Duration(h.PollIntervalNs), pollInterval)
		}
		var missing []string
		for _, m := range h.Missing {
			missing = append(missing, m.Symbol)
		}
		for _, want := range []string{"klp_try_complete_transition", "klp_check_and_switch_task", "klp_send_signals", "event times"} {
			if !slices.Contains(missing, want) {
				t.Errorf("header's missing %v lacks %s", missing, want)
			}
		}
		if len(h.Attached) != 0 || h.SignalsObservable() {
			t.Errorf("header attached %v: the poller attaches nothing", h.Attached)
		}
		for _, e := range rec.events {
			switch e.Type {
			case event.SweepStart, event.SweepEnd, event.Signal, event.FuncStack:
				t.Fatalf("a poller cannot see %s, yet the trace has %v", e.Type, e)
			}
		}
	})

	t.Run("milestones", func(t *testing.T) {
		checkMilestones(t, rec, "transition_init/1", "transition_start", "transition_complete",
			"transition_init/0", "transition_start", "transition_complete")
	})
	t.Run("kernel_log", func(t *testing.T) { checkAgainstKernelLog(t, rec, klog) })

	t.Run("noticed", func(t *testing.T) {
		// How late polling sees the start: the kernel's log line to the
		// first poll that saw "transition" at 1.
		k := kernelTransitions(klog)
		ms, _ := rec.milestones()
		if len(k) == 0 || len(ms) < 2 {
			t.Fatalf("nothing to compare: the kernel logged %d transitions, the poller saw %d milestones", len(k), len(ms))
		}
		d := time.Duration(int64(ms[1].Time) - int64(k[0].t))
		t.Logf("the patching transition's start noticed %v after the kernel logged it (poll every %v)", d, pollInterval)
		if d > 4*pollInterval+500*time.Millisecond {
			t.Errorf("noticed %v late, polling every %v", d, pollInterval)
		}
	})

	t.Run("stall_reason", func(t *testing.T) {
		// busymod_work_func sleeps in msleep in a loop: a poll may find
		// the kworker running between two sleeps, as a sweep may (-EBUSY),
		// and a running task's stack cannot be read; one waking up may
		// read as a stack cut short, without the function (seen on 7.x).
		n, sleeping, stack := 0, 0, false
		for _, e := range rec.events {
			if e.Type != event.TaskCheck || e.PID != kw || e.Time >= unblockedAt {
				continue
			}
			switch {
			case e.Reason == event.ReasonSleeping && e.Func == busyFunc:
				sleeping++
			case e.Reason == event.ReasonRunning, e.Reason == status.ReasonNoFrame:
			default:
				t.Errorf("poll of pid %d while stuck: reason %q func %q stack %q, want %q %q (or running)", kw, e.Reason, e.Func, e.Stack, event.ReasonSleeping, busyFunc)
			}
			if e.Ret != 0 {
				t.Errorf("poll of pid %d has ret %d: the kernel's return is not observable", kw, e.Ret)
			}
			stack = stack || strings.Contains(strings.Join(e.Stack, " "), busyFunc+"+")
			n++
		}
		if n == 0 {
			t.Fatalf("no task_check for pid %d (%s) while it was stuck", kw, comm(kw))
		}
		if !stack {
			t.Errorf("no stack through %s for pid %d", busyFunc, kw)
		}
		if sleeping*5 < n*4 {
			t.Errorf("pid %d seen sleeping in %s by %d of %d polls while stuck, want most", kw, busyFunc, sleeping, n)
		}
		t.Logf("pid %d seen pending by %d polls while stuck, %d of them sleeping in %s, the others running", kw, n, sleeping, busyFunc)
	})

	t.Run("switch_then_complete", func(t *testing.T) {
		switched, completed := -1, -1
		for i, e := range rec.events {
			if e.Time < unblockedAt {
				continue
			}
			if switched < 0 && e.PID == kw && e.Type == event.TaskSwitch && e.PatchState == event.StatePatched {
				switched = i
			}
			if completed < 0 && e.Type == event.TransitionComplete {
				completed = i
			}
		}
		if switched < 0 || completed < 0 {
			t.Fatalf("after the unblock: switch of pid %d at %d, completion at %d", kw, switched, completed)
		}
		if completed < switched || rec.events[completed].Time < rec.events[switched].Time {
			t.Errorf("transition_complete (%v) before the kworker's switch (%v)", rec.events[completed], rec.events[switched])
		}
		t.Logf("unblocked at %.3fs; switched: %v; then %v", float64(unblockedAt)/1e9, rec.events[switched], rec.events[completed])
	})

	t.Run("folds", func(t *testing.T) {
		// What report and export fold: the kworker is the blocker of the
		// patching transition, for at least the time the test held it.
		k := state.NewTracker()
		// The kworker's stretch in busymod_work_func; once let go it may be
		// seen pending a poll or two more with another stack, until the
		// next sweep switches it.
		var inBusy time.Duration
		k.OnSegment = func(tr *state.Transition, b *state.Blocker, seg state.Segment) {
			if b.PID == kw && seg.Func == busyFunc {
				inBusy += time.Duration(seg.End - seg.Start)
			}
		}
		var ended []*state.Ended
		for _, e := range rec.events {
			if en := k.Apply(e); en != nil {
				ended = append(ended, en)
			}
		}
		if en := k.Close(); en != nil {
			ended = append(ended, en)
		}
		if len(ended) != 2 || ended[0].Transition.Outcome != state.OutcomeComplete || ended[1].Transition.Outcome != state.OutcomeComplete {
			t.Fatalf("transitions: %d, want 2 complete", len(ended))
		}
		var b *state.Blocker
		for _, x := range ended[0].Blockers {
			if x.PID == kw {
				b = x
			}
		}
		if b == nil {
			t.Fatalf("pid %d is not among the patching transition's blockers", kw)
		}
		if inBusy < stallHoldTime || b.SwitchedAt < unblockedAt || time.Duration(b.Blocked) < stallHoldTime {
			t.Errorf("blocker %d: %v in %s, switched at %d (unblocked %d), blocked %v", kw, inBusy, busyFunc, b.SwitchedAt, unblockedAt, time.Duration(b.Blocked))
		}
		t.Logf("blocker pid %d: blocked %v, %v of it in %s; %d polls saw it, last reason %s %s, switched by %s",
			b.PID, time.Duration(b.Blocked), inBusy, busyFunc, b.Checks, b.Reason, b.Func, b.SwitchPath)
	})
}

// TestPollTUI: the live view on the poll backend says it is degraded, and
// still shows the stuck kworker and the function it sleeps in.
func TestPollTUI(t *testing.T) {
	needKlptop(t)
	tui := startTUI(t, "klptop-poll", 140, 40, filepath.Join(outDir, "tui-poll.stderr"), "--backend", "poll")
	t.Cleanup(func() { unloadPatch(t, demoName, "test_klp_callbacks_demo", busyModule) })
	var screen string
	waitFor(t, 30*time.Second, "klptop to draw", func() bool {
		screen = tui.capture()
		return strings.Contains(screen, "PATCHES") || tui.exited()
	})
	tui.failIfExited(screen)
	if !strings.Contains(screen, "degraded: no BPF, polling sysfs and /proc every 250ms") {
		t.Errorf("no degraded label on the screen:\n%s", screen)
	}

	run(t, "modprobe", busyModule, "block_transition=Y")
	run(t, "modprobe", "test_klp_callbacks_demo")
	var kw []int
	waitFor(t, 30*time.Second, "a task in "+busyFunc, func() bool {
		kw = tasksWithFunc(busyFunc)
		return len(kw) == 1
	})
	pidRE := regexp.MustCompile(fmt.Sprintf(`\b%d\b`, kw[0]))
	deadline := time.Now().Add(30 * time.Second)
	for {
		screen = tui.capture()
		if pidRE.MatchString(screen) && strings.Contains(screen, "sleeping on "+busyFunc) &&
			strings.Contains(screen, "sweeps not observable") {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("after 30s of stall, the screen does not show pid %d sleeping on %s:\n%s", kw[0], busyFunc, screen)
		}
		time.Sleep(300 * time.Millisecond)
	}
	_ = os.WriteFile(filepath.Join(outDir, "tui-poll-stall.txt"), []byte(screen), 0o644)
	t.Logf("screen during the stall:\n%s", screen)

	writeAttr(t, "/sys/module/"+busyModule+"/parameters/block_transition", "0")
	for deadline := time.Now().Add(30 * time.Second); ; time.Sleep(300 * time.Millisecond) {
		screen = tui.capture()
		if strings.Contains(screen, "none in progress; last: "+demoName+" patching complete") {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("30s after the unblock (kernel transition %q), the screen does not show the transition complete:\n%s",
				readAttr(demoLP+"/transition"), screen)
		}
	}
	tui.quit()
}
