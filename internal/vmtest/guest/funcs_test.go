//go:build guest

package guest

import (
	"encoding/json"
	"fmt"
	"os/exec"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/klptop/klptop/internal/event"
	"github.com/klptop/klptop/internal/state"
	"github.com/klptop/klptop/internal/status"
)

// klptopStatus runs `klptop status --json` and decodes it.
func klptopStatus(t *testing.T) status.Status {
	t.Helper()
	needKlptop(t)
	start := time.Now()
	out, err := exec.Command(klptopBin, "status", "--json").Output()
	if err != nil {
		t.Fatalf("klptop status --json: %v\n%s", err, out)
	}
	var s status.Status
	if err := json.Unmarshal(out, &s); err != nil {
		t.Fatalf("klptop status --json: %v\n%s", err, out)
	}
	t.Logf("klptop status took %v", time.Since(start).Round(time.Millisecond))
	return s
}

func findFunc(s status.Status, object, fn string) *status.Function {
	for i := range s.Functions {
		if s.Functions[i].Object == object && s.Functions[i].Func == fn {
			return &s.Functions[i]
		}
	}
	return nil
}

// stackText is a stack as "patch:func[flags]" entries, newest first.
func stackText(vs []event.FuncVersion) string {
	var out []string
	for _, v := range vs {
		s := v.Patch + ":" + v.Func
		if v.Nop {
			s = v.Patch + ":nop"
		}
		if v.Transition {
			s += "[T]"
		}
		if !v.Patched {
			s += "[!patched]"
		}
		out = append(out, s)
	}
	return strings.Join(out, " ")
}

func waitIdle(t *testing.T, patch string) {
	t.Helper()
	waitFor(t, 60*time.Second, patch+" transition", func() bool {
		return readAttr(sysLP+"/"+patch+"/transition") == "0"
	})
}

const (
	testLPName   = "test_klp_livepatch"
	replaceName  = "test_klp_atomic_replace"
	cmdlineFunc  = "cmdline_proc_show"
	meminfoFunc  = "meminfo_proc_show"
	lpCmdlineNew = "livepatch_cmdline_proc_show"
)

// TestStatusFuncStacks: two patches on cmdline_proc_show stack up, newest on
// top; an atomic replace that does not touch it takes it off (its nops are
// discarded once the transition completes). Checked against sysfs.
func TestStatusFuncStacks(t *testing.T) {
	t.Cleanup(func() {
		unloadPatch(t, replaceName, "test_klp_atomic_replace")
		unloadPatch(t, testLPName, "test_klp_livepatch")
		unloadPatch(t, sampleName, "livepatch_sample")
	})
	run(t, "modprobe", "livepatch-sample")
	waitIdle(t, sampleName)
	s := klptopStatus(t)
	if s.FunctionsNote != "" {
		t.Fatalf("function stacks not observable: %s", s.FunctionsNote)
	}
	f := findFunc(s, "vmlinux", cmdlineFunc)
	if f == nil {
		t.Fatalf("no %s in %+v", cmdlineFunc, s.Functions)
	}
	if got, want := stackText(f.Versions), sampleName+":"+lpCmdlineNew; got != want {
		t.Errorf("one patch: stack %q, want %q", got, want)
	}
	if want := lpCmdlineNew + " (" + sampleName + ")"; f.Runs != want {
		t.Errorf("runs %q, want %q", f.Runs, want)
	}
	if s.Transition != nil || len(s.Patches) != 1 {
		t.Errorf("patches %+v transition %+v", s.Patches, s.Transition)
	}

	run(t, "modprobe", "test_klp_livepatch")
	waitIdle(t, testLPName)
	s = klptopStatus(t)
	f = findFunc(s, "vmlinux", cmdlineFunc)
	if f == nil {
		t.Fatalf("no %s in %+v", cmdlineFunc, s.Functions)
	}
	want := testLPName + ":" + lpCmdlineNew + " " + sampleName + ":" + lpCmdlineNew
	if got := stackText(f.Versions); got != want {
		t.Errorf("two patches: stack %q, want %q (newest first)", got, want)
	}
	if want := lpCmdlineNew + " (" + testLPName + ")"; f.Runs != want {
		t.Errorf("runs %q, want %q", f.Runs, want)
	}
	// The patch order on the stacks is the one sysfs lists the patches in.
	var names []string
	for _, p := range s.Patches {
		names = append(names, p.Name)
	}
	if !slices.Equal(names, []string{sampleName, testLPName}) {
		t.Errorf("patches %v", names)
	}

	run(t, "modprobe", "test_klp_atomic_replace", "replace=1")
	waitIdle(t, replaceName)
	waitFor(t, 30*time.Second, "replaced patches to leave sysfs", func() bool {
		return readAttr(sysLP+"/"+sampleName+"/enabled") == "" && readAttr(sysLP+"/"+testLPName+"/enabled") == ""
	})
	s = klptopStatus(t)
	if f := findFunc(s, "vmlinux", cmdlineFunc); f != nil {
		t.Errorf("after atomic replace %s is still patched: %s", cmdlineFunc, stackText(f.Versions))
	}
	f = findFunc(s, "vmlinux", meminfoFunc)
	if f == nil || stackText(f.Versions) != replaceName+":"+lpMeminfoNew {
		t.Errorf("after atomic replace %s: %+v", meminfoFunc, f)
	}
	if len(s.Functions) != 1 || len(s.Patches) != 1 {
		t.Errorf("after atomic replace: functions %+v patches %+v", s.Functions, s.Patches)
	}
}

const lpMeminfoNew = "livepatch_meminfo_proc_show"

// TestStatusStall: `klptop status` in a stalled transition names the
// kworker sleeping in busymod_work_func, as /proc/PID/stack shows it, and
// says which version of the function runs for tasks in either state.
func TestStatusStall(t *testing.T) {
	t.Cleanup(func() { unloadPatch(t, demoName, "test_klp_callbacks_demo", "test_klp_callbacks_busy") })
	run(t, "modprobe", "test_klp_callbacks_busy", "block_transition=Y")
	run(t, "modprobe", "test_klp_callbacks_demo")
	waitFor(t, 10*time.Second, "a task in "+busyFunc, func() bool { return len(tasksWithFunc(busyFunc)) > 0 })
	if readAttr(sysLP+"/"+demoName+"/transition") != "1" {
		t.Fatal("the demo's transition is not stalled")
	}
	stuck := tasksWithFunc(busyFunc)[0]
	// The kworker sleeps in msleep in a loop: a status may catch it between
	// two sleeps, on a CPU or runnable, where the kernel's own check says
	// "running" too. That is the one other answer allowed; the test waits
	// for the kworker asleep in the function, as /proc/PID/stack shows it.
	var s status.Status
	running := 0
	waitFor(t, 30*time.Second, "klptop status to find pid "+strconv.Itoa(stuck)+" asleep in "+busyFunc, func() bool {
		s = klptopStatus(t)
		if s.Transition == nil || s.Transition.Patch != demoName || s.Transition.Direction != "patching" {
			t.Fatalf("transition %+v", s.Transition)
		}
		i := slices.IndexFunc(s.Pending, func(p status.Task) bool { return p.PID == stuck })
		if i < 0 {
			t.Fatalf("stuck pid %d not among pending %+v", stuck, s.Pending)
		}
		switch p := s.Pending[i]; {
		case p.Reason == status.ReasonSleeping && p.Func == busyFunc:
			return true
		case p.Reason == status.ReasonRunning:
			running++
			t.Logf("pid %d running at each of %d reads", stuck, p.Reads)
			return false
		default:
			t.Fatalf("pid %d: reason %q func %q after %d reads, want %s in %s or %s", p.PID, p.Reason, p.Func,
				p.Reads, status.ReasonSleeping, busyFunc, status.ReasonRunning)
			return false
		}
	})
	t.Logf("statuses that found pid %d running first: %d", stuck, running)
	waitFor(t, 10*time.Second, "/proc/"+strconv.Itoa(stuck)+"/stack to show "+busyFunc, func() bool {
		return slices.Contains(tasksWithFunc(busyFunc), stuck)
	})
	f := findFunc(s, "test_klp_callbacks_busy", busyFunc)
	if f == nil {
		t.Fatalf("no %s [test_klp_callbacks_busy] in %+v", busyFunc, s.Functions)
	}
	if len(f.Versions) != 1 || !f.Versions[0].Transition || f.Versions[0].Patch != demoName {
		t.Errorf("stack %s", stackText(f.Versions))
	}
	if f.RunsUnpatched != busyFunc+" (original)" || !strings.HasSuffix(f.RunsPatched, "("+demoName+")") {
		t.Errorf("runs: patched %q, unpatched %q", f.RunsPatched, f.RunsUnpatched)
	}
	out, _ := exec.Command(klptopBin, "status").CombinedOutput()
	t.Logf("klptop status:\n%s", out)
	writeAttr(t, busyParam, "0")
	waitIdle(t, demoName)
	s = klptopStatus(t)
	if f := findFunc(s, "test_klp_callbacks_busy", busyFunc); f == nil || f.Versions[0].Transition || f.Runs == "" {
		t.Errorf("after the transition: %+v", f)
	}
}

// funcsScript stacks two patches on cmdline_proc_show, replaces both
// atomically, then removes everything. It pauses after each step: klptop
// re-reads the stacks from user space, behind the ring buffer, and a state
// that lasts less than that lag is legitimately skipped; paced, every state
// must show.
const funcsScript = `set -e
lp=/sys/kernel/livepatch
wait_idle() { while [ "$(cat $lp/$1/transition)" != 0 ]; do sleep 0.05; done; sleep 2; }
modprobe livepatch-sample; wait_idle livepatch_sample
modprobe test_klp_livepatch; wait_idle test_klp_livepatch
modprobe test_klp_atomic_replace replace=1; wait_idle test_klp_atomic_replace
while [ -e $lp/livepatch_sample ] || [ -e $lp/test_klp_livepatch ]; do sleep 0.05; done
unload test_klp_livepatch livepatch_sample
sleep 2
echo 0 > $lp/test_klp_atomic_replace/enabled
while [ -e $lp/test_klp_atomic_replace ]; do sleep 0.05; done
sleep 2
unload test_klp_atomic_replace
`

// TestRecordFuncStacks: the stacks klptop record re-reads as they change.
func TestRecordFuncStacks(t *testing.T) {
	t.Cleanup(func() {
		unloadPatch(t, replaceName, "test_klp_atomic_replace")
		unloadPatch(t, testLPName, "test_klp_livepatch")
		unloadPatch(t, sampleName, "livepatch_sample")
	})
	rec := startRecord(t, "funcs", funcsScript)()
	var seq []string
	st := state.New()
	nops := 0
	for _, e := range rec.events {
		st.Apply(e)
		if e.Type != event.FuncStack {
			continue
		}
		seq = append(seq, fmt.Sprintf("%s=[%s]", e.Func, stackText(e.Versions)))
		for _, v := range e.Versions {
			if v.Nop {
				nops++
				if v.Patch != replaceName {
					t.Errorf("nop of %s, want %s", v.Patch, replaceName)
				}
			}
		}
	}
	t.Logf("func_stack events:\n  %s", strings.Join(seq, "\n  "))
	t.Logf("%d nop entries seen (the replace transition may finish before a re-read)", nops)
	// klptop re-reads the stacks behind the ring buffer, so a stack that
	// lived shorter than that lag may be skipped; every stack it does
	// report must be one the kernel went through, and each function ends
	// unpatched.
	valid := map[string]bool{}
	for _, s := range []string{
		"[" + sampleName + ":" + lpCmdlineNew + "[T]]",
		"[" + sampleName + ":" + lpCmdlineNew + "]",
		"[" + testLPName + ":" + lpCmdlineNew + "[T] " + sampleName + ":" + lpCmdlineNew + "]",
		"[" + testLPName + ":" + lpCmdlineNew + " " + sampleName + ":" + lpCmdlineNew + "]",
		"[" + replaceName + ":nop[T] " + testLPName + ":" + lpCmdlineNew + " " + sampleName + ":" + lpCmdlineNew + "]",
		"[" + replaceName + ":nop[T]]", // replaced patches freed, nops not yet discarded
		"[" + replaceName + ":nop]",
		"[]",
	} {
		valid[cmdlineFunc+"="+s] = true
	}
	for _, s := range []string{
		"[" + replaceName + ":" + lpMeminfoNew + "[T]]",
		"[" + replaceName + ":" + lpMeminfoNew + "]",
		"[]",
	} {
		valid[meminfoFunc+"="+s] = true
	}
	last := map[string]string{}
	for _, s := range seq {
		if !valid[s] {
			t.Errorf("func_stack %s is no state the kernel goes through here", s)
		}
		fn, st, _ := strings.Cut(s, "=")
		last[fn] = st
	}
	for _, fn := range []string{cmdlineFunc, meminfoFunc} {
		if last[fn] != "[]" {
			t.Errorf("%s: last stack %q, want [] (seen: %v)", fn, last[fn], seq)
		}
	}
	// Each function's settled states, in this order (transitional ones may
	// come between; the two functions' events interleave).
	for fn, want := range map[string][]string{
		cmdlineFunc: {
			"[" + sampleName + ":" + lpCmdlineNew + "]",
			"[" + testLPName + ":" + lpCmdlineNew + " " + sampleName + ":" + lpCmdlineNew + "]",
			"[]",
		},
		meminfoFunc: {"[" + replaceName + ":" + lpMeminfoNew + "]", "[]"},
	} {
		i := 0
		for _, s := range seq {
			if i < len(want) && s == fn+"="+want[i] {
				i++
			}
		}
		if i != len(want) {
			t.Errorf("%s: func_stack sequence lacks %q (want in order %q)", fn, want[i], want)
		}
	}
	if len(st.Funcs) != 0 {
		t.Errorf("at the end %d functions still patched in the folded state", len(st.Funcs))
	}
}
