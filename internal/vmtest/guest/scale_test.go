//go:build guest

package guest

import (
	"bufio"
	"encoding/json"
	"flag"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/klptop/klptop/internal/event"
	"github.com/klptop/klptop/internal/report"
	"github.com/klptop/klptop/internal/state"
)

const threadsBin = "/opt/klptop-threads" // vm/guest/threads.c

// scaleThreads: the extra threads of TestScale, a server's count; make
// bench-vm asks for 50,000.
var scaleThreads = flag.Int("klptop.threads", 10_000, "extra threads in TestScale")

// scaleSmallRing: TestScale's second run records with an events ring too
// small for what a stopped reader misses, so that events are lost.
var scaleSmallRing = flag.String("klptop.small-ring", "64K", "--ring-size of TestScale's lossy run")

// TestScale: with 10,000 extra threads (-klptop.threads), klptop records a stalled patching
// (test_klp_callbacks_busy), its unblocking and the unpatching, twice.
// With the ring sized for the tasks it loses nothing: while the
// transition stalls, klptop's fold (internal/state, as the live view and
// the report fold it) has every task at the patch_state /proc gives it
// and the kernel's pending tasks as its pending ones; at each completion
// it has no task left pending; the report shows both transitions as the
// kernel's log does. With a small ring and klptop stopped (SIGSTOP) while
// 1,000 tasks fork and exit, the ring fills: every loss is counted and
// followed by a resync, after which the same holds.
func TestScale(t *testing.T) {
	needKlptop(t)
	cleanupDemo(t)
	raiseThreadLimits(t, *scaleThreads)
	holdThreads(t, *scaleThreads)
	t.Run("ring_sized", func(t *testing.T) { scaleRun(t, "") })
	t.Run("ring_"+*scaleSmallRing, func(t *testing.T) { scaleRun(t, *scaleSmallRing) })
}

func scaleRun(t *testing.T, ring string) {
	t.Setenv("SYNC", t.TempDir())
	mark := kmsgMark(t)
	// Not under outDir: the host needs only the figures.
	path := filepath.Join(t.TempDir(), "scale.ndjson")
	var flags []string
	if ring != "" {
		flags = []string{"--ring-size", ring}
	}
	began := time.Now()
	wait, proc := startRecordProc(t, path, scenarioLib+`modprobe test_klp_callbacks_busy block_transition=Y
modprobe test_klp_callbacks_demo
hold unblock
echo 0 > /sys/module/test_klp_callbacks_busy/parameters/block_transition
settle test_klp_callbacks_demo
echo 0 > $lp/test_klp_callbacks_demo/enabled
gone test_klp_callbacks_demo
unload test_klp_callbacks_demo test_klp_callbacks_busy
`, flags...)
	kw := stuckKworker(t)
	// Short-lived tasks during the stall: each is reaped (release_task)
	// before Wait returns, so before the samples below.
	if ring != "" {
		// A reader that does not run (starved, or stopped as here) while
		// the kernel sends more than the ring holds: a fork and an exit
		// event for each task.
		if err := proc.Signal(syscall.SIGSTOP); err != nil {
			t.Fatal(err)
		}
	}
	churn := forkChurn(t, 1000)
	if ring != "" {
		if err := proc.Signal(syscall.SIGCONT); err != nil {
			t.Fatal(err)
		}
		// The samples judge the picture as repaired: after the resync
		// that follows the last loss.
		waitResynced(t, path)
	}
	// Two samples of the kernel's truth, each bracketed by the trace's
	// clock: only tasks the same in both, and folded the same at both
	// ends, are judged.
	a0 := monoNow(t)
	sa := procTasks()
	a1 := monoNow(t)
	time.Sleep(200 * time.Millisecond)
	b0 := monoNow(t)
	sb := procTasks()
	b1 := monoNow(t)
	if readAttr(demoLP+"/transition") != "1" || sa[kw] != event.StateUnpatched {
		t.Fatalf("not stalled while sampling: transition=%s, pid %d patch_state %d", readAttr(demoLP+"/transition"), kw, sa[kw])
	}
	if err := os.WriteFile(filepath.Join(os.Getenv("SYNC"), "unblock"), nil, 0o644); err != nil {
		t.Fatal(err)
	}
	rec := wait()
	took := time.Since(began)
	klog := readKmsg(t, mark)

	var lost, ringLost, resynced, lostBeforeA0 uint64
	causes := map[string]uint64{}
	types := map[event.Type]int{}
	for _, e := range rec.events {
		types[e.Type]++
		switch e.Type {
		case event.Lost:
			lost += e.Count
			causes[strings.TrimSpace(e.Reason+" "+e.Func)] += e.Count
			if e.Reason == event.LostRingFull {
				ringLost += e.Count
			}
			if e.Time <= a0 {
				lostBeforeA0 += e.Count
			}
		case event.Resync:
			resynced += e.Count
		}
	}
	t.Logf("scale: %d tasks at start, ring %d KiB, %d events (%d task, %d task_check, %d sweep_end, %d task_exit), %d lost %v, %d resyncs, loss counted: %v, recorded in %v",
		rec.header.Tasks, rec.header.RingBytes>>10, len(rec.events), types[event.TaskSnapshot], types[event.TaskCheck], types[event.SweepEnd], types[event.TaskExit],
		lost, causes, types[event.Resync], rec.header.LossCounted, took.Round(time.Millisecond))
	if rec.header.Tasks < *scaleThreads {
		t.Errorf("header: %d tasks at start, want at least %d", rec.header.Tasks, *scaleThreads)
	}
	// A ring sized for the tasks holds every event; what the kernel
	// drops elsewhere (a probe's missed runs, fentry recursion) must be
	// counted and repaired, as below.
	switch {
	case ring == "" && ringLost != 0:
		t.Errorf("%d events lost with the ring full", ringLost)
	case ring != "" && ringLost == 0:
		t.Errorf("a %s ring lost no events while klptop was stopped and %d tasks forked and exited", ring, len(churn))
	}
	if resynced != lost {
		t.Errorf("%d events lost, %d of them followed by a resync", lost, resynced)
	}
	// Every loss has its resync after it.
	open := false
	for _, e := range rec.events {
		switch e.Type {
		case event.Lost:
			open = true
		case event.Resync:
			open = false
		}
	}
	if open {
		t.Errorf("the trace ends with a loss no resync followed")
	}

	t.Run("stall_matches_proc", func(t *testing.T) {
		at0, at1 := foldTo(rec.events, a0), foldTo(rec.events, b1)
		judged, pendingKernel := 0, 0
		for pid, ps := range sa {
			if sb[pid] != ps {
				continue // switched, gone or new between the samples
			}
			if ps == event.StateUnpatched {
				pendingKernel++
			}
			t0, t1 := at0.Task(pid), at1.Task(pid)
			if t0 == nil || t1 == nil || t0.PatchState != t1.PatchState {
				continue // not yet seen at a0 (forked since), or switched while sampled
			}
			judged++
			if t0.PatchState != ps {
				t.Errorf("pid %d (%s): /proc patch_state %d, klptop's fold %d (sampled %.3fs-%.3fs)", pid, comm(pid), ps, t0.PatchState, float64(a0)/1e9, float64(a1)/1e9)
			}
		}
		var pending []string
		for _, p := range at0.Pending() {
			pending = append(pending, fmt.Sprintf("%d (%s)", p.PID, p.Comm))
			if ps, ok := sa[p.PID]; ok && sb[p.PID] == ps && ps != event.StateUnpatched {
				t.Errorf("klptop's fold has pid %d (%s) pending; /proc has patch_state %d", p.PID, p.Comm, ps)
			}
		}
		t.Logf("%d tasks judged of %d in /proc (second sample %.3fs-%.3fs); pending: kernel %d, klptop %v", judged, len(sa), float64(b0)/1e9, float64(b1)/1e9, pendingKernel, pending)
		if judged < *scaleThreads {
			t.Errorf("only %d tasks judged, want at least %d", judged, *scaleThreads)
		}
		if p := at0.Task(kw); p == nil || p.PatchState != event.StateUnpatched {
			t.Errorf("klptop's fold does not have the stuck kworker %d pending: %+v", kw, p)
		}
	})

	// The churn's tasks were forked and reaped during the stall: each has
	// its exit in the trace, and none is in the fold after it (a pid the
	// kernel gave again to a task alive at a sample aside).
	t.Run("exits_forgotten", func(t *testing.T) {
		exited := map[int]bool{}
		for _, e := range rec.events {
			if e.Type == event.TaskExit && e.Time <= a0 {
				exited[e.PID] = true
			}
		}
		at0 := foldTo(rec.events, a0)
		var noExit, kept []int
		for _, pid := range churn {
			if !exited[pid] {
				noExit = append(noExit, pid)
			}
			_, inA := sa[pid]
			_, inB := sb[pid]
			if at0.Task(pid) != nil && !inA && !inB {
				kept = append(kept, pid)
			}
		}
		t.Logf("%d short-lived tasks: %d exits recorded before the sample, %d tasks in klptop's fold then", len(churn), len(churn)-len(noExit), len(at0.Tasks))
		// A lost exit is one the resync forgot the task for: kept says.
		if len(noExit) > 0 && lostBeforeA0 == 0 {
			t.Errorf("%d of %d reaped tasks have no task_exit before %.3fs: %v", len(noExit), len(churn), float64(a0)/1e9, noExit[:min(10, len(noExit))])
		}
		if len(kept) > 0 {
			t.Errorf("%d reaped tasks still in klptop's fold: %v", len(kept), kept[:min(10, len(kept))])
		}
	})

	// A task that exited pending is no longer checked by the kernel and
	// may stay in the fold until the next sweep's end; one still alive now
	// must have been seen to switch. In an aggregate sweep the fold
	// switches, at its end, the tasks it did not report: those the
	// completing sweep checked (sweep_end's checked, counted in BPF as
	// the kernel called the check); after no loss, the live tasks the
	// fold holds pending cannot be more.
	t.Run("none_pending_at_completion", func(t *testing.T) {
		alive := procTasks()
		st := state.New()
		n := 0
		var aggregate, lostInTransition bool
		var failed map[int]bool
		for i, e := range rec.events {
			switch e.Type {
			case event.TransitionInit:
				lostInTransition = false
			case event.Lost:
				lostInTransition = true
			case event.SweepStart:
				aggregate, failed = e.Aggregate, map[int]bool{}
			case event.TaskCheck:
				if e.Reason != event.ReasonSwitched && failed != nil {
					failed[e.PID] = true
				}
			}
			before := st.Transition
			if before != nil && e.Type == event.SnapshotEnd && st.Resyncing() {
				// A resync may find the transition over: its completion
				// was lost. The fold then holds no pending task.
				st.Apply(e)
				if st.Transition == nil {
					n++
				}
				continue
			}
			if e.Type == event.TransitionComplete && st.Transition != nil {
				n++
				var left []string
				unreported := 0
				for _, p := range st.Pending() {
					if _, ok := alive[p.PID]; !ok || p.PID == 0 || comm(p.PID) != p.Comm {
						continue
					}
					if aggregate && !failed[p.PID] {
						unreported++
						continue
					}
					left = append(left, fmt.Sprintf("%d (%s)", p.PID, p.Comm))
				}
				if len(left) > 0 {
					t.Errorf("%s completed with %d live tasks pending in klptop's fold: %v", st.Transition.Patch, len(left), left[:min(10, len(left))])
				}
				if aggregate {
					end := slices.IndexFunc(rec.events[i:], func(e event.Event) bool { return e.Type == event.SweepEnd })
					switch {
					case end < 0:
						t.Errorf("%s: no sweep_end after the completion", st.Transition.Patch)
					case !lostInTransition && unreported > rec.events[i+end].Checked:
						t.Errorf("%s completed with %d live tasks pending in klptop's fold, the completing sweep checked %d", st.Transition.Patch, unreported, rec.events[i+end].Checked)
					default:
						t.Logf("%s: %d live tasks pending in the fold at completion, %d checked by the completing sweep (loss in the transition: %v)", st.Transition.Patch, unreported, rec.events[i+end].Checked, lostInTransition)
					}
				}
			}
			st.Apply(e)
		}
		if n != 2 {
			t.Errorf("%d completions, want 2", n)
		}
	})

	t.Run("kernel_log", func(t *testing.T) {
		if lost == 0 {
			checkAgainstKernelLog(t, rec, klog)
		} else {
			checkFoldAgainstKernelLog(t, rec, klog)
		}
	})

	t.Run("report", func(t *testing.T) {
		out, err := exec.Command(klptopBin, "report", "--json", rec.path).Output()
		if err != nil {
			t.Fatalf("klptop report --json: %v\n%s", err, out)
		}
		var r struct {
			Transitions []report.Transition `json:"transitions"`
		}
		if err := json.Unmarshal(out, &r); err != nil {
			t.Fatal(err)
		}
		var got []string
		for _, tr := range r.Transitions {
			got = append(got, tr.Direction+" "+tr.Outcome)
		}
		var want []string
		for _, l := range kernelTransitions(klog) {
			if l.what == "complete" {
				want = append(want, l.dir+" "+state.OutcomeComplete)
			}
		}
		if strings.Join(got, ", ") != strings.Join(want, ", ") || len(want) != 2 {
			t.Errorf("report: %v; the kernel's log: %v", got, want)
		}
	})
}

// checkFoldAgainstKernelLog: where events were lost, the transitions as
// klptop's fold has them (its history, repaired by the resyncs) are those
// the kernel logged complete, in order, each ending no earlier than the
// kernel logged it less a margin (the log's local_clock() against
// CLOCK_MONOTONIC): an end a resync found is an upper bound.
func checkFoldAgainstKernelLog(t *testing.T, rec *recording, recs []kmsg) {
	t.Helper()
	st := state.New()
	for _, e := range rec.events {
		st.Apply(e)
	}
	var want []transitionLine
	for _, l := range kernelTransitions(recs) {
		if l.what == "complete" {
			want = append(want, l)
		}
	}
	if len(want) != len(st.History) {
		t.Fatalf("the kernel completed %d transitions, klptop's fold has %d", len(want), len(st.History))
	}
	for i, h := range st.History {
		k := want[i]
		dir := dirName(h.Target)
		t.Logf("%v; klptop: %s %s %s, end %.3fs (resynced %v), %d events lost in it", k, h.Patch, dir, h.Outcome, float64(h.End)/1e9, h.EndResynced, h.Lost)
		if h.Patch != k.patch || dir != k.dir || h.Outcome != state.OutcomeComplete {
			t.Errorf("transition %d: kernel %v, klptop %s %s %s", i, k, h.Patch, dir, h.Outcome)
		}
		if d := time.Duration(int64(k.t) - int64(h.End)); d > time.Second || (!h.EndResynced && d < -5*time.Second) {
			t.Errorf("transition %d: kernel log %v, klptop's end %v apart", i, k, d)
		}
	}
}

// waitResynced waits until the recording at path, as flushed so far, has
// lost events and a resync after the last of them.
func waitResynced(t *testing.T, path string) {
	t.Helper()
	deadline := time.Now().Add(time.Minute)
	for {
		b, _ := os.ReadFile(path)
		lost, repaired := false, false
		for _, line := range strings.Split(string(b), "\n") {
			var e event.Event
			if json.Unmarshal([]byte(line), &e) != nil {
				continue
			}
			switch e.Type {
			case event.Lost:
				lost, repaired = true, false
			case event.Resync:
				repaired = repaired || e.Reason != event.ResyncAttached
			}
		}
		if lost && repaired {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("no resync after the lost events in a minute (lost: %v)", lost)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// forkChurn runs n short-lived processes one after another and returns
// their pids; each is reaped when it returns.
func forkChurn(t *testing.T, n int) []int {
	t.Helper()
	pids := make([]int, 0, n)
	for range n {
		c := exec.Command("/bin/true")
		if err := c.Run(); err != nil {
			t.Fatalf("churn: %v", err)
		}
		pids = append(pids, c.Process.Pid)
	}
	return pids
}

// foldTo is klptop's fold of evs up to time at. Events klptop derives in
// user space may be written among the kernel's with later times: skipped,
// not a stop.
func foldTo(evs []event.Event, at uint64) *state.State {
	st := state.New()
	for _, e := range evs {
		if e.Time <= at {
			st.Apply(e)
		}
	}
	return st
}

// raiseThreadLimits lets the guest hold n more threads: threads-max is
// an eighth of memory over the kernel stack size (8k in 1 GiB), and each
// thread's stack and guard page are two of a process's max_map_count
// mappings (65,530: 32k threads).
func raiseThreadLimits(t *testing.T, n int) {
	t.Helper()
	for _, f := range []string{"/proc/sys/kernel/threads-max", "/proc/sys/kernel/pid_max", "/proc/sys/vm/max_map_count"} {
		cur, _ := strconv.Atoi(readAttr(f))
		if want := 4*n + 65536; cur < want {
			writeAttr(t, f, strconv.Itoa(want))
			t.Cleanup(func() { _ = os.WriteFile(f, []byte(strconv.Itoa(cur)), 0o644) })
		}
	}
}

// holdThreads starts n threads sleeping in pause() (klptop-threads) until
// the test ends.
func holdThreads(t *testing.T, n int) {
	t.Helper()
	began := time.Now()
	cmd := exec.Command(threadsBin, strconv.Itoa(n))
	out, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	var stderr strings.Builder
	cmd.Stderr = &stderr
	if err := cmd.Start(); err != nil {
		t.Fatalf("%s: %v", threadsBin, err)
	}
	t.Cleanup(func() {
		_ = cmd.Process.Kill()
		_ = cmd.Wait()
	})
	line, err := bufio.NewReader(out).ReadString('\n')
	if err != nil || line != fmt.Sprintf("ready %d\n", n) {
		t.Fatalf("%s %d: %q %v %s", threadsBin, n, line, err, stderr.String())
	}
	t.Logf("%d threads sleeping in pause() (pid %d), started in %v", n, cmd.Process.Pid, time.Since(began).Round(time.Millisecond))
}
