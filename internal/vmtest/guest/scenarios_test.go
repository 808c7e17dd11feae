//go:build guest

package guest

import (
	"bytes"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/klptop/klptop/internal/event"
	"github.com/klptop/klptop/internal/report"
	"github.com/klptop/klptop/internal/state"
)

// The scenarios: klptop records the kernel's own livepatch modules through
// every kind of transition, and each recording is checked against the
// kernel's own account (its log, sysfs, /proc) before it is trusted. `make
// testdata` runs only these (-test.run ^TestScenario) and copies the
// recordings, outDir/testdata/NAME.jsonl, to the repository's
// testdata/linux-<KERNEL>/NAME.jsonl, where the unit tests of report, export,
// replay and the trace reader read them.

const (
	scenarioDir   = outDir + "/testdata"
	demoLP        = sysLP + "/" + demoName
	dynamicDebug  = "/sys/kernel/debug/dynamic_debug/control"
	scReplace     = "test_klp_atomic_replace"
	scKlpTest     = "test_klp_livepatch"
	busyModule    = "test_klp_callbacks_busy"
	stallHoldTime = 3 * time.Second // a few sweeps, well before klp_send_signals (15)
)

// scenarioLib is prepended to every scenario's script. `say X` tells the test
// X happened; `hold X` waits until the test says X (the test checks the
// kernel's state meanwhile); `settle P` waits for P's transition to end;
// `gone P` for P to leave sysfs.
const scenarioLib = `set -e
lp=/sys/kernel/livepatch
say() { : > "$SYNC/$1"; }
hold() { i=0; while [ ! -e "$SYNC/$1" ]; do sleep 0.1; i=$((i+1)); [ $i -lt 1800 ]; done; }
settle() { while [ "$(cat $lp/$1/transition)" != 0 ]; do sleep 0.05; done; }
gone() { while [ -e $lp/$1 ]; do sleep 0.05; done; }
`

type scenario struct {
	t    *testing.T
	sync string
	mark uint64
	wait func() *recording
}

// startScenario runs `klptop record -o outDir/testdata/NAME.jsonl -- sh -c
// SCRIPT`.
func startScenario(t *testing.T, name, script string) *scenario {
	t.Helper()
	s := &scenario{t: t, sync: t.TempDir(), mark: kmsgMark(t)}
	t.Setenv("SYNC", s.sync)
	s.wait = startRecordTo(t, filepath.Join(scenarioDir, name+".jsonl"), scenarioLib+script)
	return s
}

// said waits for the script's `say what`.
func (s *scenario) said(what string) {
	s.t.Helper()
	waitFor(s.t, 3*time.Minute, "the script to say "+what, func() bool { return fileExists(filepath.Join(s.sync, what)) })
}

// tell lets the script's `hold what` go on.
func (s *scenario) tell(what string) {
	s.t.Helper()
	if err := os.WriteFile(filepath.Join(s.sync, what), nil, 0o644); err != nil {
		s.t.Fatal(err)
	}
}

// finish waits for the recording and returns it with the kernel log records
// written meanwhile.
func (s *scenario) finish() (*recording, []kmsg) {
	s.t.Helper()
	rec := s.wait()
	return rec, readKmsg(s.t, s.mark)
}

// reportOf folds the recording as `klptop report --json` does.
func reportOf(t *testing.T, rec *recording) []report.Transition {
	t.Helper()
	f, err := os.Open(rec.path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	var out bytes.Buffer
	sum, err := report.Run(f, &out, report.Options{JSON: true})
	if err != nil {
		t.Fatalf("report: %v", err)
	}
	if len(sum.UnknownEvents) > 0 || sum.Truncated || sum.LostUnrepaired > 0 {
		t.Errorf("report summary %+v: unknown events, truncated or lost unrepaired", sum)
	}
	// Runs the kernel skipped (a probe's missed count, fentry and kprobe
	// recursion) come by its timing, not klptop's: counted and repaired,
	// they are logged. A ring too full or a record undecodable is
	// klptop's doing, in a scenario's few hundred events.
	var repaired uint64
	for _, r := range sum.Repairs {
		repaired += r.Lost
		for cause := range r.Causes {
			if cause != event.LostMissed && cause != event.LostRecursion {
				t.Errorf("report: %d events lost (%v) from %v to the resync at %v", r.Lost, r.Causes, r.From, r.At)
			}
		}
	}
	if repaired != sum.LostEvents {
		t.Errorf("report: %d events lost, %d of them in a repaired stretch", sum.LostEvents, repaired)
	} else if repaired > 0 {
		t.Logf("report: %d runs skipped by the kernel, each counted and repaired: %+v", repaired, sum.Repairs)
	}
	var r struct {
		Transitions []report.Transition `json:"transitions"`
	}
	if err := json.Unmarshal(out.Bytes(), &r); err != nil {
		t.Fatal(err)
	}
	return r.Transitions
}

// checkOutcomes: the report lists the transitions patch/direction/outcome
// given, in order.
func checkOutcomes(t *testing.T, trs []report.Transition, want ...string) {
	t.Helper()
	var got []string
	for _, tr := range trs {
		got = append(got, tr.Patch+"/"+tr.Direction+"/"+tr.Outcome)
	}
	if strings.Join(got, " ") != strings.Join(want, " ") {
		t.Errorf("report: transitions %v, want %v", got, want)
	}
	t.Logf("report: %v", got)
}

// checkMilestones: the trace's transition-level events, in order, are types
// (type or type/target) and never go back in time.
func checkMilestones(t *testing.T, rec *recording, want ...string) {
	t.Helper()
	ms, _ := rec.milestones()
	var got []string
	for _, e := range ms {
		if e.Type == event.TransitionInit {
			got = append(got, fmt.Sprintf("%s/%d", e.Type, e.Target))
		} else {
			got = append(got, string(e.Type))
		}
	}
	if strings.Join(got, " ") != strings.Join(want, " ") {
		t.Errorf("milestones %v\nwant       %v", got, want)
	}
	checkNonDecreasing(t, ms)
}

// kernelSaid returns the index of the first kernel log record holding msg at
// or after from, or -1.
func kernelSaid(recs []kmsg, from int, msg string) int {
	for i := max(from, 0); i < len(recs); i++ {
		if strings.Contains(recs[i].msg, msg) {
			return i
		}
	}
	return -1
}

// checkKernelSequence: the kernel logged msgs in this order.
func checkKernelSequence(t *testing.T, recs []kmsg, msgs ...string) {
	t.Helper()
	at := 0
	for _, m := range msgs {
		i := kernelSaid(recs, at, m)
		if i < 0 {
			t.Errorf("kernel log: no %q after record %d", m, at)
			return
		}
		at = i + 1
	}
}

// stuckKworker waits for the patching transition of test_klp_callbacks_demo
// to be held up by the one kworker test_klp_callbacks_busy parks in
// busymod_work_func, lets a few sweeps see it, and returns its pid.
func stuckKworker(t *testing.T) int {
	t.Helper()
	waitFor(t, 90*time.Second, "the stalled transition", func() bool { return readAttr(demoLP+"/transition") == "1" })
	var stuck []int
	waitFor(t, 30*time.Second, "a task in "+busyFunc, func() bool {
		stuck = tasksWithFunc(busyFunc)
		return len(stuck) > 0
	})
	if len(stuck) != 1 {
		t.Fatalf("tasks in %s: %v, want one kworker", busyFunc, stuck)
	}
	time.Sleep(stallHoldTime)
	kw := stuck[0]
	ps := readAttr(fmt.Sprintf("/proc/%d/patch_state", kw))
	if readAttr(demoLP+"/transition") != "1" || ps != "0" {
		t.Fatalf("not stuck any more: transition=%s, pid %d (%s) patch_state=%s", readAttr(demoLP+"/transition"), kw, comm(kw), ps)
	}
	t.Logf("stuck: pid %d (%s), patch_state %s", kw, comm(kw), ps)
	return kw
}

func cleanupDemo(t *testing.T) {
	t.Cleanup(func() { unloadPatch(t, demoName, "test_klp_callbacks_demo", busyModule) })
}

// TestScenarioSample: the kernel's sample livepatch, enabled and disabled.
func TestScenarioSample(t *testing.T) {
	t.Cleanup(func() { unloadPatch(t, sampleName, "livepatch_sample") })
	s := startScenario(t, "sample", `modprobe livepatch-sample
settle livepatch_sample
say patched; hold go
echo 0 > $lp/livepatch_sample/enabled
gone livepatch_sample
unload livepatch_sample
`)
	s.said("patched")
	if got := readAttr("/proc/cmdline"); !strings.Contains(got, "this has been live patched") {
		t.Errorf("/proc/cmdline = %q while patched, want the sample's text", got)
	}
	if e := readAttr(sysLP + "/" + sampleName + "/enabled"); e != "1" {
		t.Errorf("enabled = %q while patched", e)
	}
	s.tell("go")
	rec, klog := s.finish()
	if got := readAttr("/proc/cmdline"); strings.Contains(got, "live patched") {
		t.Errorf("/proc/cmdline = %q after the patch was removed", got)
	}
	checkAgainstKernelLog(t, rec, klog)
	checkMilestones(t, rec, "transition_init/1", "transition_start", "transition_complete",
		"transition_init/0", "transition_start", "transition_complete")
	checkOutcomes(t, reportOf(t, rec), sampleName+"/patching/complete", sampleName+"/unpatching/complete")
}

// TestScenarioStall: a patching transition stuck on a kworker sleeping in
// the function the patch replaces, until the kworker is let go.
func TestScenarioStall(t *testing.T) {
	cleanupDemo(t)
	s := startScenario(t, "stall", `modprobe test_klp_callbacks_busy block_transition=Y
modprobe test_klp_callbacks_demo
hold unblock
echo 0 > /sys/module/test_klp_callbacks_busy/parameters/block_transition
settle test_klp_callbacks_demo
echo 0 > $lp/test_klp_callbacks_demo/enabled
gone test_klp_callbacks_demo
unload test_klp_callbacks_demo test_klp_callbacks_busy
`)
	kw := stuckKworker(t)
	unblocked := monoNow(t)
	s.tell("unblock")
	rec, klog := s.finish()

	checkAgainstKernelLog(t, rec, klog)
	checkMilestones(t, rec, "transition_init/1", "transition_start", "transition_complete",
		"transition_init/0", "transition_start", "transition_complete")
	trs := reportOf(t, rec)
	checkOutcomes(t, trs, demoName+"/patching/complete", demoName+"/unpatching/complete")
	if len(trs) == 0 {
		return
	}
	tr := trs[0]
	if !tr.Stall || tr.Sweeps < 2 {
		t.Errorf("patching transition: stall %v after %d sweeps, want a stall", tr.Stall, tr.Sweeps)
	}
	var b *report.Blocker
	for i := range tr.Blockers {
		if tr.Blockers[i].PID == kw {
			b = &tr.Blockers[i]
		}
	}
	if b == nil {
		t.Fatalf("the stuck kworker %d (%s) is not among the blockers %+v", kw, comm(kw), tr.Blockers)
	}
	if b.Func != busyFunc || b.Reason != string(event.ReasonSleeping) || !strings.Contains(strings.Join(b.Stack, " "), busyFunc+"+") {
		t.Errorf("blocker: func %q reason %q stack %v; want %s, %s, a stack through it", b.Func, b.Reason, b.Stack, busyFunc, event.ReasonSleeping)
	}
	if b.BlockedNs < uint64(stallHoldTime) {
		t.Errorf("blocker blocked %v, the test held it at least %v", time.Duration(b.BlockedNs), stallHoldTime)
	}
	if b.Switched == nil || b.Switched.Mono < unblocked {
		t.Errorf("blocker switched at %+v, want after the unblock at %d", b.Switched, unblocked)
	}
	t.Logf("blocker: pid %d %s %s, %d checks, blocked %v, switched by %s", b.PID, b.Comm, b.Reason, b.Checks, time.Duration(b.BlockedNs), b.SwitchPath)
}

// TestScenarioReverse: a stuck patching transition, disabled while it runs:
// the kernel reverses it to unpatching, which completes without the stuck
// kworker (it never left the old code).
func TestScenarioReverse(t *testing.T) {
	cleanupDemo(t)
	dyndbg(t)
	s := startScenario(t, "reverse", `modprobe test_klp_callbacks_busy block_transition=Y
modprobe test_klp_callbacks_demo
hold reverse
echo 0 > $lp/test_klp_callbacks_demo/enabled
gone test_klp_callbacks_demo
echo 0 > /sys/module/test_klp_callbacks_busy/parameters/block_transition
unload test_klp_callbacks_demo test_klp_callbacks_busy
`)
	kw := stuckKworker(t)
	s.tell("reverse")
	rec, klog := s.finish()

	q := "'" + demoName + "': "
	checkKernelSequence(t, klog, q+"starting patching transition",
		q+"reversing transition from patching to unpatching",
		q+"starting unpatching transition", q+"unpatching complete")
	checkAgainstKernelLog(t, rec, klog)
	// The kernel restarts the reversed transition (klp_start_transition in
	// klp_reverse_transition); on 6.1 that call is inlined, out of the
	// probe's sight.
	if ms, _ := rec.milestones(); len(ms) == 5 {
		checkMilestones(t, rec, "transition_init/1", "transition_start", "transition_reverse",
			"transition_start", "transition_complete")
	} else {
		checkMilestones(t, rec, "transition_init/1", "transition_start", "transition_reverse",
			"transition_complete")
	}
	trs := reportOf(t, rec)
	checkOutcomes(t, trs, demoName+"/patching/reversed")
	if len(trs) == 1 {
		if trs[0].Reverses != 1 {
			t.Errorf("reverses %d, want 1", trs[0].Reverses)
		}
		found := false
		for _, b := range trs[0].Blockers {
			found = found || b.PID == kw && b.Func == busyFunc
		}
		if !found {
			t.Errorf("the stuck kworker %d is not among the blockers %+v", kw, trs[0].Blockers)
		}
	}
}

// TestScenarioReplace: test_klp_livepatch, then test_klp_atomic_replace
// replace=1, which replaces it: the first patch leaves sysfs without a
// transition of its own.
func TestScenarioReplace(t *testing.T) {
	t.Cleanup(func() {
		unloadPatch(t, scReplace, scReplace)
		unloadPatch(t, scKlpTest, scKlpTest)
	})
	s := startScenario(t, "replace", `modprobe test_klp_livepatch
settle test_klp_livepatch
say first; hold go
modprobe test_klp_atomic_replace replace=1
settle test_klp_atomic_replace
gone test_klp_livepatch
say replaced; hold go2
unload test_klp_livepatch
echo 0 > $lp/test_klp_atomic_replace/enabled
gone test_klp_atomic_replace
unload test_klp_atomic_replace
`)
	s.said("first")
	if !strings.Contains(readAttr("/proc/cmdline"), scKlpTest+": this has been live patched") {
		t.Errorf("/proc/cmdline = %q with %s enabled", readAttr("/proc/cmdline"), scKlpTest)
	}
	s.tell("go")
	s.said("replaced")
	if fileExists(sysLP + "/" + scKlpTest) {
		t.Errorf("%s still in sysfs after the atomic replace", scKlpTest)
	}
	if e := readAttr(sysLP + "/" + scReplace + "/enabled"); e != "1" {
		t.Errorf("%s enabled = %q after the replace", scReplace, e)
	}
	if r := readAttr(sysLP + "/" + scReplace + "/replace"); r != "" && r != "1" {
		t.Errorf("%s replace = %q", scReplace, r) // the attribute is newer than 6.1
	}
	if strings.Contains(readAttr("/proc/cmdline"), "live patched") {
		t.Errorf("/proc/cmdline still patched after the replace: %q", readAttr("/proc/cmdline"))
	}
	meminfo, _ := os.ReadFile("/proc/meminfo")
	if !strings.Contains(string(meminfo), scReplace+": this has been live patched") {
		t.Errorf("/proc/meminfo not patched by %s", scReplace)
	}
	s.tell("go2")
	rec, klog := s.finish()

	checkAgainstKernelLog(t, rec, klog)
	checkMilestones(t, rec, "transition_init/1", "transition_start", "transition_complete",
		"transition_init/1", "transition_start", "transition_complete",
		"transition_init/0", "transition_start", "transition_complete")
	checkOutcomes(t, reportOf(t, rec), scKlpTest+"/patching/complete",
		scReplace+"/patching/complete", scReplace+"/unpatching/complete")
	for _, e := range rec.events {
		if e.Type == event.PatchEnable && e.Patch == scReplace && !e.Replace {
			t.Errorf("patch_enable of %s without replace: %v", scReplace, e)
		}
	}
}

// TestScenarioForce: a stuck patching transition, forced: every task is
// marked patched, the kworker still inside the old function, and the
// transition completes. (A forced patching transition leaves the module
// removable; a forced unpatching one would not.)
func TestScenarioForce(t *testing.T) {
	cleanupDemo(t)
	s := startScenario(t, "force", `modprobe test_klp_callbacks_busy block_transition=Y
modprobe test_klp_callbacks_demo
hold force
echo 1 > $lp/test_klp_callbacks_demo/force
settle test_klp_callbacks_demo
say forced; hold go
echo 0 > /sys/module/test_klp_callbacks_busy/parameters/block_transition
echo 0 > $lp/test_klp_callbacks_demo/enabled
gone test_klp_callbacks_demo
unload test_klp_callbacks_demo test_klp_callbacks_busy
`)
	kw := stuckKworker(t)
	s.tell("force")
	s.said("forced")
	if e := readAttr(demoLP + "/enabled"); e != "1" {
		t.Errorf("enabled = %q after the forced transition", e)
	}
	if got := tasksWithFunc(busyFunc); len(got) != 1 || got[0] != kw {
		t.Errorf("tasks in %s after the force: %v, want the kworker %d still there", busyFunc, got, kw)
	}
	s.tell("go")
	rec, klog := s.finish()

	q := "'" + demoName + "': "
	checkKernelSequence(t, klog, q+"starting patching transition",
		"forcing remaining tasks to the patched state", q+"patching complete",
		q+"starting unpatching transition", q+"unpatching complete")
	checkAgainstKernelLog(t, rec, klog)
	checkMilestones(t, rec, "transition_init/1", "transition_start", "transition_force", "transition_complete",
		"transition_init/0", "transition_start", "transition_complete")
	// The kernel let the module go (the script's rmmod), and klptop did
	// not mark the patch unremovable: klp_force_transition marks only
	// patches being removed or replaced.
	if _, err := os.Stat("/sys/module/" + demoName); err == nil {
		t.Errorf("%s still loaded after the script's rmmod", demoName)
	}
	st := state.New()
	for _, e := range rec.events {
		st.Apply(e)
		if e.Type == event.TransitionComplete {
			break
		}
	}
	if len(st.Patches) != 1 || st.Patches[0].Name != demoName || st.Patches[0].Forced {
		t.Errorf("patches after the forced patching: %+v, want %s, not forced", st.Patches, demoName)
	}
	trs := reportOf(t, rec)
	checkOutcomes(t, trs, demoName+"/patching/forced", demoName+"/unpatching/complete")
	if len(trs) > 0 {
		found := false
		for _, b := range trs[0].Blockers {
			if b.PID == kw {
				found = true
				if b.SwitchPath != "force" {
					t.Errorf("the kworker was released by %q, want force", b.SwitchPath)
				}
			}
		}
		if !found {
			t.Errorf("the stuck kworker %d is not among the blockers %+v", kw, trs[0].Blockers)
		}
	}
}

// dyndbg turns on the livepatch core's pr_debug lines for the test: the
// kernel says "reversing transition" only there.
func dyndbg(t *testing.T) {
	t.Helper()
	if err := os.WriteFile(dynamicDebug, []byte("file kernel/livepatch/* +p"), 0); err != nil {
		t.Fatalf("dynamic debug: %v", err)
	}
	t.Cleanup(func() { _ = os.WriteFile(dynamicDebug, []byte("file kernel/livepatch/* -p"), 0) })
}
