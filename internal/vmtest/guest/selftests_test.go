//go:build guest

package guest

import (
	"bufio"
	"context"
	"flag"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/klptop/klptop/internal/event"
)

// The kernel's own livepatch selftests as the acceptance bed: they run with
// `klptop record` watching, must pass as they do without it, and the trace
// must tell the same story as the kernel's log.

var selftestsBaseline = flag.Bool("klptop.baseline", false,
	"also run the kernel's livepatch selftests once without klptop, for the wall-time figure")

const (
	selftestsRunner = "/opt/selftests.sh" // vm/guest/selftests.sh
	selftestsDir    = "/opt/selftests"
	dynDebug        = "/sys/kernel/debug/dynamic_debug/control"
	dynDebugQuery   = "file kernel/livepatch/transition.c"
)

// enableTransitionDebug turns on the transition code's pr_debug lines (the
// per-task reasons among them) and checks that this kernel logs them in the
// formats kmsgTaskRE parses. The selftest scripts switch off those of
// klp_try_switch_task while they run and restore ours when they exit.
func enableTransitionDebug(t *testing.T) {
	t.Helper()
	writeAttr(t, dynDebug, dynDebugQuery+" +p")
	t.Cleanup(func() { _ = os.WriteFile(dynDebug, []byte(dynDebugQuery+" -p"), 0) })
	b, err := os.ReadFile(dynDebug)
	if err != nil {
		t.Fatal(err)
	}
	var ours []string
	for _, l := range strings.Split(string(b), "\n") {
		if strings.Contains(l, "kernel/livepatch/transition.c:") {
			ours = append(ours, l)
		}
	}
	all := strings.Join(ours, "\n")
	for _, f := range []string{`%s: %s:%d is running`, `%s: %s:%d has an unreliable stack`,
		`%s: %s:%d is sleeping on function %s`, `'%s': reversing transition from %s`} {
		if !strings.Contains(all, f) {
			t.Errorf("this kernel's transition.c has no pr_debug %q: the checks below parse a format it does not log\n%s", f, all)
		}
	}
}

// timedRun runs name args with its output in logPath and returns how long it
// took. A context deadline interrupts it (SIGINT, then SIGKILL).
func timedRun(t *testing.T, d time.Duration, logPath, name string, args ...string) (time.Duration, error) {
	t.Helper()
	logf, err := os.Create(logPath)
	if err != nil {
		t.Fatal(err)
	}
	defer logf.Close()
	ctx, cancel := context.WithTimeout(context.Background(), d)
	defer cancel()
	cmd := exec.CommandContext(ctx, name, args...)
	cmd.Stdout, cmd.Stderr = logf, logf
	cmd.Cancel = func() error { return cmd.Process.Signal(syscall.SIGINT) }
	cmd.WaitDelay = 15 * time.Second
	start := time.Now()
	err = cmd.Run()
	return time.Since(start), err
}

var selftestResultRE = regexp.MustCompile(`^--- (PASS|FAIL): (\S+)`)

// selftestResults reads the runner's "--- PASS: test-x.sh" lines, and each
// script's output for the report of a failure.
func selftestResults(t *testing.T, logPath string) (order []string, status, output map[string]string) {
	t.Helper()
	f, err := os.Open(logPath)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	status, output = map[string]string{}, map[string]string{}
	var cur strings.Builder
	sc := bufio.NewScanner(f)
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	for sc.Scan() {
		line := sc.Text()
		if strings.HasPrefix(line, "klptop: ") {
			t.Log(line) // klptop record's own lines: probes, backend, attach time
		}
		if m := selftestResultRE.FindStringSubmatch(line); m != nil {
			order = append(order, m[2])
			status[m[2]], output[m[2]] = m[1], cur.String()
			cur.Reset()
			continue
		}
		cur.WriteString(line + "\n")
	}
	return order, status, output
}

// TestKernelSelftests runs tools/testing/selftests/livepatch/test-*.sh under
// `klptop record`: each script must pass, every transition the kernel logs
// must be in the trace once and in the same order, and every per-task reason
// it logs must be in the trace for the same task.
func TestKernelSelftests(t *testing.T) {
	needKlptop(t)
	scripts, _ := filepath.Glob(selftestsDir + "/test-*.sh")
	if len(scripts) == 0 {
		t.Fatalf("no selftests in %s", selftestsDir)
	}
	enableTransitionDebug(t)
	if *selftestsBaseline {
		d, err := timedRun(t, 20*time.Minute, filepath.Join(outDir, "selftests-baseline.log"), "bash", selftestsRunner)
		t.Logf("selftests without klptop: %v (err %v)", d.Round(time.Second), err)
		fmt.Fprintf(os.Stderr, "selftests wall time without klptop: %.1fs\n", d.Seconds())
	}

	dir := filepath.Join(outDir, "traces")
	if err := os.MkdirAll(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	path := filepath.Join(dir, "selftests.ndjson")
	logPath := filepath.Join(outDir, "selftests.log")
	mark := kmsgMark(t)
	d, err := timedRun(t, 20*time.Minute, logPath, klptopBin, "record", "-o", path, "--", "bash", selftestsRunner)
	klog := readKmsg(t, mark)
	t.Logf("selftests under klptop record: %v", d.Round(time.Second))
	fmt.Fprintf(os.Stderr, "selftests wall time with klptop: %.1fs\n", d.Seconds())

	order, status, output := selftestResults(t, logPath)
	for _, s := range scripts {
		name := filepath.Base(s)
		t.Run(name, func(t *testing.T) {
			switch status[name] {
			case "PASS":
			case "":
				t.Errorf("%s has no result (the runner stopped: %v)", name, err)
			default:
				t.Errorf("%s failed under klptop record:\n%s", name, output[name])
			}
		})
	}
	if len(order) == len(scripts) && err != nil {
		// Every script has a result, so the runner's status is theirs:
		// already reported above unless klptop itself failed.
		t.Logf("klptop record: %v", err)
	}
	rec := readTrace(t, path)
	t.Logf("backend %s; attached %v; missing %v", rec.header.Backend, rec.header.Attached, rec.header.Missing)
	t.Run("transitions", func(t *testing.T) { checkTransitionLines(t, rec, klog) })
	t.Run("task_reasons", func(t *testing.T) { checkTaskReasons(t, rec, klog, false) })
}

// reasonsScript stalls a transition on a kworker sleeping in a patched
// function until $UNBLOCK appears, then undoes everything: a transition in
// which the kernel logs why tasks do not switch, with nothing switching its
// debug lines off.
const reasonsScript = stallScript

// TestKernelTaskReasons: with the transition code's debug lines on, every
// per-task reason the kernel logs during a stalled transition is in the
// trace for the same task, and the transitions match.
func TestKernelTaskReasons(t *testing.T) {
	needKlptop(t)
	enableTransitionDebug(t)
	unblock := filepath.Join(t.TempDir(), "unblock")
	t.Cleanup(func() {
		unloadPatch(t, demoName, "test_klp_callbacks_demo", "test_klp_callbacks_busy")
	})
	mark := kmsgMark(t)
	t.Setenv("UNBLOCK", unblock)
	wait := startRecord(t, "reasons", reasonsScript)
	// Until the kernel has said a few times why the kworker does not switch.
	waitFor(t, 120*time.Second, "the kernel to log a task sleeping on "+busyFunc, func() bool {
		n := 0
		for _, r := range readKmsg(t, mark) {
			if m := parseTaskReason(r.msg); m != nil && m.reason == event.ReasonSleeping && m.fn == busyFunc {
				n++
			}
		}
		return n >= 3
	})
	if err := os.WriteFile(unblock, nil, 0o644); err != nil {
		t.Fatal(err)
	}
	rec := wait()
	klog := readKmsg(t, mark)
	t.Run("transitions", func(t *testing.T) { checkTransitionLines(t, rec, klog) })
	t.Run("task_reasons", func(t *testing.T) { checkTaskReasons(t, rec, klog, true) })
}

// A transition milestone the kernel logs with pr_notice (start, complete)
// or pr_debug (reverse), in the kernel's words.
var kmsgMilestoneRE = regexp.MustCompile(`^livepatch: '([^']+)': (?:starting (patching|unpatching) transition|(patching|unpatching) complete|reversing transition from (patching to unpatching|unpatching to patching))$`)

// kernelMilestones returns the kernel's transition lines, and those it
// logged while kernel.ftrace_enabled was 0 apart: test-ftrace.sh turns
// function tracing off, and with it every ftrace-based kprobe (klptop's
// among them) while a livepatch fails to load. The selftests log the switch
// themselves ("livepatch: kernel.ftrace_enabled = N").
func kernelMilestones(recs []kmsg) (out, blind []string) {
	ftraceOff := false
	for _, r := range recs {
		switch r.msg {
		case "livepatch: kernel.ftrace_enabled = 0":
			ftraceOff = true
		case "livepatch: kernel.ftrace_enabled = 1":
			ftraceOff = false
		}
		m := kmsgMilestoneRE.FindStringSubmatch(r.msg)
		if m != nil && ftraceOff {
			blind = append(blind, r.msg)
			continue
		}
		switch {
		case m == nil:
		case m[2] != "":
			out = append(out, fmt.Sprintf("'%s': starting %s transition", m[1], m[2]))
		case m[3] != "":
			out = append(out, fmt.Sprintf("'%s': %s complete", m[1], m[3]))
		default:
			out = append(out, fmt.Sprintf("'%s': reversing transition from %s", m[1], m[4]))
		}
	}
	return out, blind
}

// traceMilestones says the trace's starts, completions and reversals in the
// kernel's words: the direction is the target's at the time, and a reversal
// flips it.
func traceMilestones(evs []event.Event) []string {
	var out []string
	target, patch := event.StatePatched, ""
	for _, e := range evs {
		switch e.Type {
		case event.TransitionInit:
			target = e.Target
			if e.Patch != "" {
				patch = e.Patch
			}
		case event.TransitionStart:
			out = append(out, fmt.Sprintf("'%s': starting %s transition", pick(e.Patch, patch), dirName(target)))
		case event.TransitionComplete:
			out = append(out, fmt.Sprintf("'%s': %s complete", pick(e.Patch, patch), dirName(target)))
		case event.TransitionReverse:
			out = append(out, fmt.Sprintf("'%s': reversing transition from %s to %s", pick(e.Patch, patch), dirName(target), dirName(e.Target)))
			target = e.Target
		case event.TransitionCancel:
			// klp_cancel_transition: "going to unpatch", then completes.
			target = event.StateUnpatched
		}
	}
	return out
}

// checkTransitionLines: the kernel's transition lines and the trace's, one
// for one and in order.
func checkTransitionLines(t *testing.T, rec *recording, klog []kmsg) {
	t.Helper()
	k, blind := kernelMilestones(klog)
	tr := traceMilestones(rec.events)
	if len(blind) > 0 {
		t.Logf("%d transition lines while kernel.ftrace_enabled was 0, when no kprobe fires, not compared: %q", len(blind), blind)
	}
	if len(k) == 0 {
		t.Fatal("no transition lines in the kernel log")
	}
	if d := lineDiff(k, tr); d != "" {
		t.Errorf("kernel log (%d transition lines) and trace (%d) differ (- kernel only, + trace only):\n%s", len(k), len(tr), d)
		return
	}
	t.Logf("%d transition lines agree, first %q, last %q", len(k), k[0], k[len(k)-1])
}

// taskReason is one per-task line of klp_try_switch_task.
type taskReason struct {
	comm   string
	pid    int
	reason string
	fn     string
}

var kmsgTaskRE = regexp.MustCompile(`^livepatch: klp_try_switch_task: (?:(.*):(\d+) (is running|has an unreliable stack|is sleeping on function (.*))|Unknown error code \((-?\d+)\) when trying to switch (.*):(\d+))$`)

func parseTaskReason(msg string) *taskReason {
	m := kmsgTaskRE.FindStringSubmatch(msg)
	if m == nil {
		return nil
	}
	if m[5] != "" {
		ret, _ := strconv.Atoi(m[5])
		pid, _ := strconv.Atoi(m[7])
		return &taskReason{comm: m[6], pid: pid, reason: event.ReasonFor(int32(ret))}
	}
	pid, _ := strconv.Atoi(m[2])
	r := &taskReason{comm: m[1], pid: pid}
	switch {
	case m[3] == "is running":
		r.reason = event.ReasonRunning
	case m[3] == "has an unreliable stack":
		r.reason = event.ReasonUnreliable
	default:
		r.reason, r.fn = event.ReasonSleeping, m[4]
	}
	return r
}

// checkTaskReasons: every (task, reason, function) the kernel logs is in the
// trace as a check of that task with that outcome. The kernel logs a line
// per failed check; the trace has one per failed check of a sweep and, for
// a task checking itself from the scheduler, one per change of outcome. With
// need, the log must hold at least one such line.
func checkTaskReasons(t *testing.T, rec *recording, klog []kmsg, need bool) {
	t.Helper()
	type key struct {
		pid        int
		reason, fn string
	}
	inTrace := map[key]int{}
	for _, e := range rec.events {
		if e.Type == event.TaskCheck && e.Reason != event.ReasonSwitched {
			fn := ""
			if e.Reason == event.ReasonSleeping {
				fn = e.Func
			}
			inTrace[key{e.PID, e.Reason, fn}]++
		}
	}
	inKernel := map[key]int{}
	var keys []key
	for _, r := range klog {
		m := parseTaskReason(r.msg)
		if m == nil {
			continue
		}
		k := key{m.pid, m.reason, m.fn}
		if inKernel[k] == 0 {
			keys = append(keys, k)
		}
		inKernel[k]++
	}
	if need && len(keys) == 0 {
		t.Fatal("the kernel logged no per-task reasons")
	}
	missing := 0
	for _, k := range keys {
		if inTrace[k] == 0 {
			missing++
			t.Errorf("the kernel logs %d× pid %d %s %s; the trace never has it", inKernel[k], k.pid, k.reason, k.fn)
			continue
		}
		t.Logf("pid %d %s %s: kernel %d lines, trace %d checks", k.pid, k.reason, k.fn, inKernel[k], inTrace[k])
	}
	t.Logf("%d distinct per-task reasons in the kernel log, %d not in the trace", len(keys), missing)
}

// lineDiff is a's and b's differences, with two lines of context: "" when
// they are equal.
func lineDiff(a, b []string) string {
	// Longest common subsequence, from the end.
	l := make([][]int, len(a)+1)
	for i := range l {
		l[i] = make([]int, len(b)+1)
	}
	for i := len(a) - 1; i >= 0; i-- {
		for j := len(b) - 1; j >= 0; j-- {
			if a[i] == b[j] {
				l[i][j] = l[i+1][j+1] + 1
			} else {
				l[i][j] = max(l[i+1][j], l[i][j+1])
			}
		}
	}
	type op struct {
		c    byte
		line string
	}
	var ops []op
	i, j := 0, 0
	for i < len(a) || j < len(b) {
		switch {
		case i < len(a) && j < len(b) && a[i] == b[j]:
			ops = append(ops, op{' ', a[i]})
			i, j = i+1, j+1
		case j < len(b) && (i == len(a) || l[i][j+1] >= l[i+1][j]):
			ops = append(ops, op{'+', b[j]})
			j++
		default:
			ops = append(ops, op{'-', a[i]})
			i++
		}
	}
	var out strings.Builder
	last := -1
	for n, o := range ops {
		if o.c == ' ' {
			continue
		}
		for c := max(last+1, n-2); c < n; c++ {
			fmt.Fprintf(&out, "  %4d   %s\n", c, ops[c].line)
		}
		fmt.Fprintf(&out, "  %4d %c %s\n", n, o.c, o.line)
		last = n
		for c := n + 1; c <= min(n+2, len(ops)-1) && ops[c].c == ' '; c++ {
			fmt.Fprintf(&out, "  %4d   %s\n", c, ops[c].line)
			last = c
		}
	}
	return out.String()
}
