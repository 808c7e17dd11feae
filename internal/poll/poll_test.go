package poll

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/klptop/klptop/internal/event"
	"github.com/klptop/klptop/internal/state"
)

// handMade is a hand-made sysfs and /proc tree in a temp dir, shaped like a
// 6.1 kernel's during the stall scenario: test_klp_callbacks_demo patches
// busymod_work_func, which one kworker sleeps in.
type handMade struct {
	t    *testing.T
	root string
	now  uint64
}

func newHandMade(t *testing.T) *handMade {
	h := &handMade{t: t, root: t.TempDir(), now: 1_000_000_000}
	h.mkdir("sys/kernel/livepatch")
	h.write("proc/modules", "")
	h.thread(1, 1, "init", -1, "S", "do_epoll_wait+0x1/0x2\n")
	h.thread(100, 100, "bash", -1, "S", "do_wait+0x1/0x2\n")
	h.thread(100, 101, "bash-worker", -1, "R", "")
	h.thread(22, 22, "kworker/1:0", -1, "I", "worker_thread+0x1/0x2\n")
	return h
}

func (h *handMade) write(rel, content string) {
	h.t.Helper()
	p := filepath.Join(h.root, rel)
	if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
		h.t.Fatal(err)
	}
	if err := os.WriteFile(p, []byte(content), 0o644); err != nil {
		h.t.Fatal(err)
	}
}

func (h *handMade) mkdir(rel string) {
	h.t.Helper()
	if err := os.MkdirAll(filepath.Join(h.root, rel), 0o755); err != nil {
		h.t.Fatal(err)
	}
}

func (h *handMade) thread(tgid, tid int, comm string, ps int, st, stack string) {
	d := fmt.Sprintf("proc/%d/task/%d/", tgid, tid)
	h.write(d+"comm", comm+"\n")
	h.write(d+"stat", fmt.Sprintf("%d (%s) %s 1 2 3\n", tid, comm, st))
	h.write(d+"stack", stack)
	h.setState(tgid, tid, ps)
}

func (h *handMade) setState(tgid, tid, ps int) {
	h.write(fmt.Sprintf("proc/%d/task/%d/patch_state", tgid, tid), fmt.Sprintf("%d\n", ps))
}

func (h *handMade) setStack(tgid, tid int, stack string) {
	h.write(fmt.Sprintf("proc/%d/task/%d/stack", tgid, tid), stack)
}

func (h *handMade) patch(name string, enabled, transition bool, funcs ...string) {
	lp := "sys/kernel/livepatch/" + name + "/"
	h.write(lp+"enabled", fmt.Sprintf("%d\n", btoi(enabled)))
	h.write(lp+"transition", fmt.Sprintf("%d\n", btoi(transition)))
	for _, f := range funcs {
		obj, fn, _ := strings.Cut(f, ":")
		h.write(lp+obj+"/patched", "1\n")
		h.mkdir(lp + obj + "/" + fn + ",1")
	}
}

func (h *handMade) unpatch(name string) {
	if err := os.RemoveAll(filepath.Join(h.root, "sys/kernel/livepatch", name)); err != nil {
		h.t.Fatal(err)
	}
}

// stall: test_klp_callbacks_demo is enabled and the kernel's first sweep
// switched every task but the kworker, parked in the function the patch
// replaces.
func (h *handMade) stall() {
	h.patch("test_klp_callbacks_demo", true, true, "test_klp_callbacks_busy:busymod_work_func")
	for _, x := range [][2]int{{1, 1}, {100, 100}, {100, 101}} {
		h.setState(x[0], x[1], 1)
	}
	h.setState(22, 22, 0)
	h.setStack(22, 22, "msleep+0x29/0x40\nbusymod_work_func+0x38/0x4d [test_klp_callbacks_busy]\nprocess_one_work+0x1c7/0x380\n")
}

func btoi(b bool) int {
	if b {
		return 1
	}
	return 0
}

func (h *handMade) poller() *Poller {
	p := New(h.root)
	p.Now = func() uint64 { h.now += 250_000_000; return h.now }
	return p
}

// short renders events for comparison: type, and what matters for it.
func short(evs []event.Event) []string {
	var out []string
	for _, e := range evs {
		s := string(e.Type)
		switch e.Type {
		case event.TransitionInit, event.TransitionReverse:
			s += fmt.Sprintf(" %s/%d", e.Patch, e.Target)
		case event.TransitionComplete, event.TransitionCancel, event.PatchEnable:
			s += " " + e.Patch
		case event.TaskSwitch:
			s += fmt.Sprintf(" %d->%d %s", e.PID, e.PatchState, e.Path)
		case event.TaskCheck:
			s += fmt.Sprintf(" %d %s", e.PID, e.Reason)
			if e.Func != "" {
				s += " " + e.Func
			}
			if len(e.Stack) > 0 {
				s += " +stack"
			}
		case event.TaskSnapshot:
			s += fmt.Sprintf(" %d=%d", e.PID, e.PatchState)
			if e.Reason != "" {
				s += " " + e.Reason + " " + e.Func
			}
		case event.PatchSnapshot:
			s += fmt.Sprintf(" %s enabled=%v transition=%v", e.Patch, e.Enabled, e.InTransition)
		}
		out = append(out, s)
	}
	return out
}

func expect(t *testing.T, step string, got []event.Event, want ...string) {
	t.Helper()
	g := short(got)
	if strings.Join(g, "\n") != strings.Join(want, "\n") {
		t.Errorf("%s:\ngot\n  %s\nwant\n  %s", step, strings.Join(g, "\n  "), strings.Join(want, "\n  "))
	}
}

func mustPoll(t *testing.T, p *Poller) []event.Event {
	t.Helper()
	evs, err := p.Poll()
	if err != nil {
		t.Fatal(err)
	}
	return evs
}

// TestStall: the stall scenario, poll by poll, and the state the events fold
// to at each step.
func TestStall(t *testing.T) {
	h := newHandMade(t)
	p := h.poller()
	st := state.New()
	apply := func(evs []event.Event) {
		for _, e := range evs {
			st.Apply(e)
		}
	}
	snap, err := p.Snapshot()
	if err != nil {
		t.Fatal(err)
	}
	expect(t, "snapshot, idle", snap, "task 1=-1", "task 22=-1", "task 100=-1", "task 101=-1", "snapshot_end")
	apply(snap)
	expect(t, "nothing changed", mustPoll(t, p))

	// The patch is enabled; the kernel's first sweep switched every task
	// but the kworker, parked in the function the patch replaces.
	h.stall()
	evs := mustPoll(t, p)
	expect(t, "transition starts", evs,
		"patch_enable test_klp_callbacks_demo",
		"transition_init test_klp_callbacks_demo/1",
		"transition_start",
		"task_switch 1->1 poll",
		"task_check 22 sleeping_on_func busymod_work_func +stack",
		"task_switch 100->1 poll",
		"task_switch 101->1 poll")
	apply(evs)
	if tr := st.Transition; tr == nil || tr.Target != 1 || tr.Total != 4 || tr.Switched != 3 {
		t.Fatalf("state after start: %+v", tr)
	}
	if pend := st.Pending(); len(pend) != 1 || pend[0].PID != 22 || pend[0].Func != "busymod_work_func" {
		t.Fatalf("pending: %+v", pend)
	}

	// Still stuck: a check per poll, the stack only once.
	evs = mustPoll(t, p)
	expect(t, "still stuck", evs, "task_check 22 sleeping_on_func busymod_work_func")
	apply(evs)

	// A thread forks (it inherits the patched state) and one exits.
	h.thread(200, 200, "sh", 1, "S", "")
	if err := os.RemoveAll(filepath.Join(h.root, "proc/100/task/101")); err != nil {
		t.Fatal(err)
	}
	evs = mustPoll(t, p)
	expect(t, "fork and exit", evs, "task_check 22 sleeping_on_func busymod_work_func", "task_switch 200->1 poll")
	apply(evs)

	// Unblocked: the kworker switched and the transition completed between
	// two polls: its switch comes first.
	h.patch("test_klp_callbacks_demo", true, false)
	for _, x := range [][2]int{{1, 1}, {100, 100}, {22, 22}, {200, 200}} {
		h.setState(x[0], x[1], -1)
	}
	evs = mustPoll(t, p)
	expect(t, "complete", evs, "task_switch 22->1 poll", "transition_complete test_klp_callbacks_demo")
	apply(evs)
	if st.Transition != nil || st.Last() == nil || st.Last().Outcome != state.OutcomeComplete {
		t.Fatalf("state after complete: %+v", st.Last())
	}

	// Disabled and freed between two polls.
	h.unpatch("test_klp_callbacks_demo")
	evs = mustPoll(t, p)
	expect(t, "quick unpatch", evs,
		"transition_init test_klp_callbacks_demo/0", "transition_start", "transition_complete test_klp_callbacks_demo")
	apply(evs)
	if len(st.Patches) != 0 || len(st.History) != 2 {
		t.Errorf("patches %v, %d transitions", st.Patches, len(st.History))
	}
}

// TestReverse: a stuck patching transition is disabled: "enabled" flips
// while "transition" stays, then the patch leaves sysfs.
func TestReverse(t *testing.T) {
	h := newHandMade(t)
	h.patch("p", true, true, "vmlinux:cmdline_proc_show")
	h.setState(22, 22, 0)
	h.setStack(22, 22, "cmdline_proc_show+0x1/0x2\nseq_read+0x1/0x2\n")
	h.setState(1, 1, 1)
	h.setState(100, 100, 1)
	h.setState(100, 101, 0) // running, no patched function on its stack
	p := h.poller()
	snap, err := p.Snapshot()
	if err != nil {
		t.Fatal(err)
	}
	expect(t, "snapshot mid-transition", snap,
		"patch p enabled=true transition=true",
		"task 1=1", "task 22=0 sleeping_on_func cmdline_proc_show", "task 100=1", "task 101=0 running ",
		"snapshot_end")

	h.patch("p", false, true)
	evs := mustPoll(t, p)
	expect(t, "reverse", evs, "transition_reverse p/0",
		"task_check 1 no_patched_func_on_stack +stack", "task_check 100 no_patched_func_on_stack +stack")

	// Unpatching: a frame in the patch's own module blocks.
	h.setStack(1, 1, "livepatch_fn+0x1/0x2 [p]\nkthread+0x1/0x2\n")
	h.setState(100, 100, 0)
	evs = mustPoll(t, p)
	expect(t, "unpatching, stuck in the new function", evs,
		"task_check 1 sleeping_on_func livepatch_fn +stack", "task_switch 100->0 poll")

	h.unpatch("p")
	for _, x := range [][2]int{{1, 1}, {100, 100}, {22, 22}, {100, 101}} {
		h.setState(x[0], x[1], -1)
	}
	evs = mustPoll(t, p)
	expect(t, "freed", evs, "task_switch 1->0 poll", "transition_complete p")
}

// TestQuick: a patch enabled and its transition over between two polls,
// then an atomic replace superseding it, without the replace attribute.
func TestQuick(t *testing.T) {
	h := newHandMade(t)
	p := h.poller()
	if _, err := p.Snapshot(); err != nil {
		t.Fatal(err)
	}
	h.patch("a", true, false, "vmlinux:f")
	expect(t, "enabled between polls", mustPoll(t, p),
		"patch_enable a", "transition_init a/1", "transition_start", "transition_complete a")
	h.patch("b", true, false, "vmlinux:f")
	h.unpatch("a")
	expect(t, "replaced between polls", mustPoll(t, p),
		"patch_enable b", "transition_init b/1", "transition_start", "transition_complete b")
	h.unpatch("b")
	expect(t, "b disabled", mustPoll(t, p),
		"transition_init b/0", "transition_start", "transition_complete b")
}

// TestNoLivepatch: Poll fails once the livepatch directory is gone.
func TestNoLivepatch(t *testing.T) {
	p := New(t.TempDir())
	if _, err := p.Snapshot(); err == nil {
		t.Fatal("snapshot of a tree without livepatch succeeded")
	}
}

// TestRunPollsOnceMoreAtTheEnd: a recording stopped right after a change
// still has it.
func TestRunPollsOnceMoreAtTheEnd(t *testing.T) {
	h := newHandMade(t)
	p := h.poller()
	if _, err := p.Snapshot(); err != nil {
		t.Fatal(err)
	}
	h.patch("a", true, false, "vmlinux:f")
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	var got []event.Event
	if err := p.Run(ctx, time.Hour, func(e event.Event) { got = append(got, e) }); err != context.Canceled {
		t.Fatalf("Run: %v", err)
	}
	expect(t, "final poll", got, "patch_enable a", "transition_init a/1", "transition_start", "transition_complete a")
}

// TestPartialScans: between full scans only pending threads are read; a
// fork shows at the next full scan, a pending thread's exit at once.
func TestPartialScans(t *testing.T) {
	h := newHandMade(t)
	p := h.poller()
	p.FullEvery = 3
	if _, err := p.Snapshot(); err != nil {
		t.Fatal(err)
	}
	h.patch("p", true, true, "vmlinux:f")
	h.setState(1, 1, 1)
	h.setState(22, 22, 0)
	h.setState(100, 100, 0)
	h.setState(100, 101, 1)
	expect(t, "start: full", mustPoll(t, p), "patch_enable p", "transition_init p/1", "transition_start",
		"task_switch 1->1 poll", "task_check 22 no_patched_func_on_stack +stack",
		"task_check 100 no_patched_func_on_stack +stack", "task_switch 101->1 poll")
	h.thread(300, 300, "new", 0, "S", "")
	if err := os.RemoveAll(filepath.Join(h.root, "proc/100")); err != nil {
		t.Fatal(err)
	}
	expect(t, "partial", mustPoll(t, p), "task_check 22 no_patched_func_on_stack", "task_switch 100->-1 exit")
	expect(t, "partial", mustPoll(t, p), "task_check 22 no_patched_func_on_stack")
	expect(t, "full", mustPoll(t, p), "task_check 22 no_patched_func_on_stack", "task_switch 300->0 poll",
		"task_check 300 running") // its stack reads empty
}

// TestCompleteThenDisable: the patching transition completes and the patch
// is disabled between two polls: "enabled" flips while "transition" stays
// 1. Only the kernel log tells this from a reverse.
func TestCompleteThenDisable(t *testing.T) {
	for _, logged := range []bool{false, true} {
		h := newHandMade(t)
		h.patch("p", true, true, "vmlinux:f")
		h.setState(22, 22, 0)
		p := h.poller()
		var log []string
		p.Log = func() []string { l := log; log = nil; return l }
		if _, err := p.Snapshot(); err != nil {
			t.Fatal(err)
		}
		h.patch("p", false, true)
		h.setState(22, 22, 1)
		if logged {
			log = []string{"livepatch: 'p': patching complete", "livepatch: 'p': starting unpatching transition"}
			expect(t, "logged", mustPoll(t, p), "task_switch 22->1 poll", "transition_complete p",
				"transition_init p/0", "transition_start", "task_switch 1->-1 poll",
				"task_check 22 no_patched_func_on_stack +stack", "task_switch 100->-1 poll", "task_switch 101->-1 poll")
		} else {
			expect(t, "not logged", mustPoll(t, p), "transition_reverse p/0",
				"task_switch 22->1 poll", "task_check 22 no_patched_func_on_stack")
		}
	}
}

// TestEnabling: while the kernel patches the objects of a patch being
// enabled, "transition" is 1 and "enabled" still 0: a patching transition,
// not a disable.
func TestEnabling(t *testing.T) {
	h := newHandMade(t)
	p := h.poller()
	if _, err := p.Snapshot(); err != nil {
		t.Fatal(err)
	}
	h.patch("p", false, true, "vmlinux:f")
	for _, x := range [][2]int{{1, 1}, {100, 100}, {22, 22}, {100, 101}} {
		h.setState(x[0], x[1], 0)
	}
	h.setStack(22, 22, "f+0x1/0x2\n")
	expect(t, "enabling", mustPoll(t, p), "patch_enable p", "transition_init p/1", "transition_start",
		"task_check 1 no_patched_func_on_stack +stack", "task_check 22 sleeping_on_func f +stack",
		"task_check 100 no_patched_func_on_stack +stack", "task_check 101 running")
	h.patch("p", true, true)
	expect(t, "enabled", mustPoll(t, p), "task_check 1 no_patched_func_on_stack", "task_check 22 sleeping_on_func f",
		"task_check 100 no_patched_func_on_stack", "task_check 101 running")
	h.patch("p", false, true)
	expect(t, "reversed", mustPoll(t, p), "transition_reverse p/0")
}

// TestWholeLifeBetweenPolls: a patching transition seen running, then the
// patch gone: patched, disabled and freed between two polls (7.x unpatches
// in well under a poll) when the log says patching completed, else a
// cancelled enable. The completion may have been read by the poll before.
func TestWholeLifeBetweenPolls(t *testing.T) {
	for _, logged := range []bool{false, true} {
		h := newHandMade(t)
		p := h.poller()
		var log []string
		p.Log = func() []string { l := log; log = nil; return l }
		if _, err := p.Snapshot(); err != nil {
			t.Fatal(err)
		}
		h.patch("p", true, true, "vmlinux:f")
		if logged {
			log = []string{"livepatch: 'p': patching complete"}
		}
		mustPoll(t, p)
		h.unpatch("p")
		if logged {
			expect(t, "logged", mustPoll(t, p), "transition_complete p", "transition_init p/0", "transition_start",
				"transition_complete p")
		} else {
			expect(t, "not logged", mustPoll(t, p), "transition_cancel p")
		}
	}
}

// TestDisableBeforeEnabledFlips: the kernel starts the unpatching
// transition before it clears "enabled": a poll in between sees a fully
// patched patch in transition with "enabled" still 1. That is its
// unpatching, whether or not the kernel's log was read.
func TestDisableBeforeEnabledFlips(t *testing.T) {
	for _, logged := range []bool{false, true} {
		h := newHandMade(t)
		h.patch("p", true, true, "vmlinux:f")
		p := h.poller()
		var log []string
		p.Log = func() []string { l := log; log = nil; return l }
		if _, err := p.Snapshot(); err != nil {
			t.Fatal(err)
		}
		h.patch("p", true, false)
		if logged {
			log = []string{"livepatch: 'p': patching complete"}
		}
		mustPoll(t, p)
		h.patch("p", true, true)
		var inits []string
		for _, e := range mustPoll(t, p) {
			if e.Type == event.TransitionInit || e.Type == event.TransitionReverse {
				inits = append(inits, short([]event.Event{e})...)
			}
		}
		if strings.Join(inits, ",") != "transition_init p/0" {
			t.Errorf("logged=%v: %v, want the unpatching transition", logged, inits)
		}
	}
}

// TestSwitchedThenCompletedMidPoll: the kernel completes the transition
// between a poll's read of sysfs (still in transition) and its read of the
// stuck thread, now reset to -1: the thread reached the target first.
func TestSwitchedThenCompletedMidPoll(t *testing.T) {
	h := newHandMade(t)
	p := h.poller()
	if _, err := p.Snapshot(); err != nil {
		t.Fatal(err)
	}
	h.stall()
	mustPoll(t, p)
	h.setState(22, 22, -1)
	var got []string
	for _, e := range mustPoll(t, p) {
		if e.PID == 22 {
			got = append(got, short([]event.Event{e})...)
		}
	}
	if strings.Join(got, ",") != "task_switch 22->1 poll,task_switch 22->-1 poll" {
		t.Errorf("kworker 22: %v, want its switch to the target, then the reset", got)
	}
}

// TestCompletionLoggedAfterSysfsRead: the poll reads sysfs, then the log.
// A patching that completes between the two shows "transition" 1 and the
// log's completion in the same poll: it is one transition that completed,
// not a completion, a new unpatching and a reverse (seen in a guest: the
// live view said "reversed" of a patching that completed). A transition
// that does follow shows at the next poll, the other way.
func TestCompletionLoggedAfterSysfsRead(t *testing.T) {
	for _, then := range []string{"idle", "unpatching"} {
		h := newHandMade(t)
		h.patch("p", true, true, "vmlinux:f")
		h.setState(22, 22, 0)
		p := h.poller()
		var log []string
		p.Log = func() []string { l := log; log = nil; return l }
		if _, err := p.Snapshot(); err != nil {
			t.Fatal(err)
		}
		h.setState(22, 22, 1)
		log = []string{"livepatch: 'p': patching complete"}
		got := short(mustPoll(t, p))
		if slices.Contains(got, "transition_init p/0") || !slices.Contains(got, "transition_complete p") {
			t.Errorf("%s, completion logged after the sysfs read: %v; want p's patching complete and nothing begun", then, got)
		}
		// The kernel resets every task once the transition completed.
		for _, x := range [][2]int{{1, 1}, {22, 22}, {100, 100}, {100, 101}} {
			h.setState(x[0], x[1], -1)
		}
		if then == "unpatching" {
			// A new transition, before "enabled" flips.
			for _, x := range [][2]int{{1, 1}, {22, 22}, {100, 100}, {100, 101}} {
				h.setState(x[0], x[1], 1)
			}
			got = short(mustPoll(t, p))
			if !slices.Contains(got, "transition_init p/0") || slices.Contains(got, "transition_reverse p/1") {
				t.Errorf("unpatching after it: %v; want it begun as an unpatching", got)
			}
			continue
		}
		h.patch("p", true, false)
		expect(t, then, mustPoll(t, p))
	}
}

// TestSwitchStampedWhenRead (hand-made): the kernel switches the kworker
// while a poll's scan runs. Its switch must not carry the poll's start,
// a time before it happened, but the time it was read.
func TestSwitchStampedWhenRead(t *testing.T) {
	h := newHandMade(t)
	p := h.poller()
	if _, err := p.Snapshot(); err != nil {
		t.Fatal(err)
	}
	h.stall()
	mustPoll(t, p)

	// The clock's first read in the next poll is its start; the kworker
	// switches just after it, before the scan reaches it.
	var start uint64
	p.Now = func() uint64 {
		h.now += 1_000_000
		if start == 0 {
			start = h.now
			h.setState(22, 22, 1)
		}
		return h.now
	}
	evs := mustPoll(t, p)
	expect(t, "switched in the scan", evs, "task_switch 22->1 poll")
	if evs[0].Time <= start {
		t.Errorf("the kworker's switch stamped %d, not after the poll's start %d, before which it was pending", evs[0].Time, start)
	}
}
