// Package poll is klptop's degraded backend, for kernels where BPF or
// kprobes are not usable: it polls /sys/kernel/livepatch and every task's
// /proc/<pid>/task/<tid>/patch_state, and turns what changed between two
// polls into events of the ordinary vocabulary (internal/event), so that the
// live view, recordings, replay and report work on it unchanged.
//
// What it cannot see, it does not invent: there are no sweeps, no kernel
// check results (a pending task's reason is derived from its kernel stack,
// as `klptop status` derives it), no signals, no switch paths (a switch is
// seen, how it happened is not), no force (a forced transition looks like a
// completed one), no function stacks, and every event carries the time of
// the poll that saw the change, up to one interval late. Tasks exist in
// /proc only: the per-CPU idle tasks are not seen.
package poll

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"time"

	"golang.org/x/sys/unix"

	"github.com/klptop/klptop/internal/event"
	"github.com/klptop/klptop/internal/status"
	"github.com/klptop/klptop/internal/sysfs"
)

// Backend is the name of this backend in a trace header.
const Backend = "poll"

// DefaultInterval is how often the kernel is polled.
const DefaultInterval = 250 * time.Millisecond

// Paths of the TaskSwitch events a poller writes: it sees a task's new
// patch_state, never how the task got there.
const (
	// PathPoll: a poll saw the task at its new state, or the transition
	// completed while it was last seen pending (the kernel completes only
	// once every task is at the target).
	PathPoll = "poll"
	// PathExit: the task left /proc while pending.
	PathExit = "exit"
)

// ReasonNoFrame is a pending task's reason when its stack holds no function
// the transition must replace and it is not running (it switches at its
// next sweep or return to user space).
const ReasonNoFrame = status.ReasonNoFrame

// NotObservable is what a poller cannot see, for the trace header's missing
// list and the start-up line: symbol (or thing) and why.
var NotObservable = [][2]string{
	{"klp_try_complete_transition", "polling: sweeps not observable"},
	{"klp_check_and_switch_task", "polling: the kernel's check and its return not observable; reasons derived from /proc/PID/stack"},
	{"klp_send_signals", "polling: signals not observable"},
	{"klp_update_patch_state", "polling: how a task switched not observable, only that it did"},
	{"klp_force_transition", "polling: a forced transition looks like a completed one"},
	{"klp_ops", "polling: function stacks not observable"},
	{"idle tasks", "polling: the per-CPU idle tasks are not in /proc"},
	{"event times", "polling: each event has the time the poll read the change"},
}

// Poller diffs successive reads of sysfs and /proc. It is not safe for
// concurrent use.
type Poller struct {
	root string
	// Now is the clock events are stamped with (CLOCK_MONOTONIC ns).
	Now func() uint64

	patches map[string]sysfs.Patch
	// enabledOnce: the patch was seen enabled (or disabling) at least once.
	enabledOnce map[string]bool
	// logged: completions the kernel log reported, "patch/direction".
	logged map[string]bool
	// next: the direction of a patch's next transition, when a poll
	// ended one by the log while sysfs still showed it (read before the
	// completion): if the next poll finds one, it is this way.
	next  map[string]int
	tr    *transition
	tasks map[int]*task
	// Log, if set, returns the kernel log messages since its previous call
	// (OpenKmsg); without it a flip of "enabled" mid-transition is taken
	// for a reverse.
	Log func() []string

	// FullEvery: read every thread at every FullEvery-th poll of a
	// transition, only the pending ones in between (Run sets it to about a
	// second's worth; 0 or 1: every poll).
	FullEvery int
	sinceFull int
	fullScan  bool // the next scan reads every thread: the beliefs changed

	// lastPatched: the patch whose patching transition completed in the
	// previous poll, for telling an atomic replace on kernels without the
	// replace attribute.
	lastPatched string
}

type transition struct {
	patch  string
	target int
}

// task is what the consumer of the events believes about one thread.
type task struct {
	tgid        int
	comm        string
	state       int
	seenPending bool // a poll saw it pending in this transition
	reason, fn  string
	stack       string
}

// New returns a poller of the tree at root ("/" on a live system).
func New(root string) *Poller {
	return &Poller{root: root, Now: MonotonicNow, patches: map[string]sysfs.Patch{}, enabledOnce: map[string]bool{}, logged: map[string]bool{}, tasks: map[int]*task{}}
}

// MonotonicNow is CLOCK_MONOTONIC in ns, the clock of every event.
func MonotonicNow() uint64 {
	var ts unix.Timespec
	if unix.ClockGettime(unix.CLOCK_MONOTONIC, &ts) != nil {
		return 0
	}
	return uint64(ts.Nano())
}

// Snapshot reads the state at this moment, as the BPF backend's snapshot
// does: the patches in stacking order, every thread's patch_state (with its
// stack and derived reason when a transition waits for it), SnapshotEnd.
func (p *Poller) Snapshot() ([]event.Event, error) {
	now := p.Now()
	ps, err := sysfs.Patches(p.root)
	if err != nil {
		return nil, err
	}
	var out []event.Event
	target := event.StateIdle
	for i, pt := range ps {
		out = append(out, event.Event{Time: now, Type: event.PatchSnapshot, Patch: pt.Name,
			Replace: pt.Replace, Enabled: pt.Enabled, InTransition: pt.Transition, Seq: i, Target: pt.Target()})
		p.patches[pt.Name] = pt
		// Already in transition but not enabled: taken for a disable, as
		// Target does; the state folds it so too.
		p.enabledOnce[pt.Name] = pt.Enabled || pt.Transition
		if pt.Transition {
			p.tr = &transition{patch: pt.Name, target: pt.Target()}
			target = pt.Target()
		}
	}
	blocking := p.blocking(ps)
	for _, th := range p.threads() {
		st, err := sysfs.ThreadPatchState(p.root, th.tgid, th.tid)
		if err != nil {
			continue
		}
		t := &task{tgid: th.tgid, comm: p.comm(th), state: st}
		p.tasks[th.tid] = t
		e := event.Event{Time: now, Type: event.TaskSnapshot, PID: th.tid, TGID: th.tgid, Comm: t.comm,
			PatchState: st, Target: target}
		if p.tr != nil && participates(st) && st != p.tr.target {
			var stack []string
			e.Reason, e.Func, stack = p.reason(th, blocking)
			e.Stack = stack
			t.seenPending, t.reason, t.fn, t.stack = true, e.Reason, e.Func, strings.Join(stack, "\n")
		}
		out = append(out, e)
	}
	out = append(out, event.Event{Time: now, Type: event.SnapshotEnd, Target: target})
	return out, nil
}

// Poll reads sysfs and, while a transition runs, every thread, and returns
// events for what changed since the previous Poll or Snapshot.
func (p *Poller) Poll() ([]event.Event, error) {
	ps, err := sysfs.Patches(p.root)
	if err != nil {
		return nil, err
	}
	var now uint64 // after the reads: an event is never stamped before the change it tells
	var out []event.Event
	// The scan stamps each thread's events with the time it read the
	// thread: a switch seen late in a long scan may have happened after
	// sysfs was read.
	ev := func(e event.Event) {
		if e.Time == 0 {
			e.Time = now
		}
		out = append(out, e)
	}
	// After sysfs: the kernel logs a completion before "transition" drops.
	if p.Log != nil {
		// Kept until the transition they end is seen to end: a line read
		// just after the previous poll's sysfs read belongs to this poll.
		for k := range completions(p.Log()) {
			p.logged[k] = true
		}
	}
	now = p.Now()
	logged := p.logged
	patched := ""
	cur := make(map[string]sysfs.Patch, len(ps))
	for _, pt := range ps {
		cur[pt.Name] = pt
	}
	for _, pt := range ps {
		old, seen := p.patches[pt.Name]
		p.patches[pt.Name] = pt
		next, hasNext := p.next[pt.Name]
		delete(p.next, pt.Name)
		if !seen {
			ev(event.Event{Type: event.PatchEnable, Patch: pt.Name, Replace: pt.Replace, Target: event.StatePatched})
		}
		// "enabled" is the target, except while a patch is being enabled:
		// the kernel sets it only after klp_start_transition, and until
		// then (objects being patched: ftrace, relocations) "transition"
		// is 1 already. A patch never seen enabled cannot be disabling.
		target := event.StateUnpatched
		if pt.Enabled || !p.enabledOnce[pt.Name] {
			target = event.StatePatched
		}
		if pt.Enabled {
			p.enabledOnce[pt.Name] = true
		}
		switch {
		case p.tr != nil && p.tr.patch == pt.Name && logged[pt.Name+"/"+dirName(p.tr.target)]:
			// The kernel logged the completion: a transition in sysfs now,
			// or "enabled" flipped, is a new transition the other way (a
			// patch's transitions alternate), not a reverse. "enabled"
			// flips only after the new one starts.
			was := p.tr.target
			if was == event.StatePatched {
				patched = pt.Name
			}
			p.complete(ev)
			switch {
			case pt.Transition && target == was:
				// sysfs, read first, may still show the transition
				// the log says ended since: a new one shows at the
				// next poll.
				if p.next == nil {
					p.next = map[string]int{}
				}
				p.next[pt.Name] = 1 - was
			case pt.Transition || target != was:
				p.begin(ev, pt.Name, 1-was, pt.Replace)
				if !pt.Transition {
					p.complete(ev)
				}
			}
		case p.tr != nil && p.tr.patch == pt.Name:
			if target != p.tr.target {
				// sysfs "enabled" is the target: it flipped, the kernel reversed.
				ev(event.Event{Type: event.TransitionReverse, Patch: pt.Name, Target: target})
				p.tr.target = target
				p.fullScan = true
			}
			if !pt.Transition {
				if target == event.StatePatched {
					patched = pt.Name
				}
				p.complete(ev)
			}
		case pt.Transition:
			if p.tr != nil {
				p.complete(ev) // its end fell between two polls
			}
			if seen && old.Enabled && !old.Transition {
				// Fully patched at the last poll: this can only be its
				// unpatching, before "enabled" flips.
				target = event.StateUnpatched
			}
			if hasNext {
				target = next // a patch's transitions alternate
			}
			p.begin(ev, pt.Name, target, pt.Replace)
		case !seen && pt.Enabled, seen && !old.Enabled && pt.Enabled:
			// Enabled, and its transition over, between two polls.
			p.begin(ev, pt.Name, event.StatePatched, pt.Replace)
			p.complete(ev)
			patched = pt.Name
		case seen && old.Enabled && !pt.Enabled:
			// Disabled, and the transition over, between two polls.
			p.begin(ev, pt.Name, event.StateUnpatched, false)
			p.complete(ev)
		}
	}
	// Patches that left sysfs: a patch is freed once its unpatching
	// completes, or when an atomic replace supersedes it.
	var gone []string
	for name := range p.patches {
		if _, ok := cur[name]; !ok {
			gone = append(gone, name)
		}
	}
	slices.Sort(gone)
	for _, name := range gone {
		old := p.patches[name]
		delete(p.patches, name)
		delete(p.enabledOnce, name)
		if p.tr != nil && p.tr.patch == name {
			switch {
			case p.tr.target == event.StateUnpatched:
				p.complete(ev)
			case logged[name+"/patching"]:
				// Patched, disabled, unpatched and freed between two polls.
				p.complete(ev)
				p.begin(ev, name, event.StateUnpatched, false)
				p.complete(ev)
			default:
				// Enabling failed before the transition could finish.
				ev(event.Event{Type: event.TransitionCancel, Patch: name, Target: p.tr.target})
				p.endTransition()
			}
			continue
		}
		if old.Enabled && p.tr == nil && !p.replacedBy(ps, patched) {
			// Disabled and freed between two polls.
			p.begin(ev, name, event.StateUnpatched, false)
			p.complete(ev)
		}
	}
	for _, name := range gone {
		delete(p.logged, name+"/patching")
		delete(p.logged, name+"/unpatching")
	}
	if p.tr != nil {
		p.scan(ev, ps)
	}
	p.lastPatched = patched
	return out, nil
}

// replacedBy reports whether a patch that vanished was superseded by an
// atomic replace that completed now or at the previous poll.
func (p *Poller) replacedBy(ps []sysfs.Patch, patched string) bool {
	for _, pt := range ps {
		if pt.Name != patched && pt.Name != p.lastPatched {
			continue
		}
		// Without the replace attribute (before 6.11), a patch that just
		// finished patching while another vanished is the likeliest replace.
		if !pt.HasReplace || pt.Replace {
			return true
		}
	}
	return false
}

// begin mirrors klp_init_transition and klp_start_transition: every task
// known is set to the opposite of the target.
func (p *Poller) begin(ev func(event.Event), patch string, target int, replace bool) {
	ev(event.Event{Type: event.TransitionInit, Patch: patch, Target: target, Replace: replace})
	ev(event.Event{Type: event.TransitionStart, Patch: patch, Target: target})
	p.tr = &transition{patch: patch, target: target}
	p.fullScan = true
	for _, t := range p.tasks {
		t.state = 1 - target
		t.seenPending, t.reason, t.fn, t.stack = false, "", "", ""
	}
}

// complete ends the transition. The kernel completes only when every task
// is at the target (or forced), so a task last seen pending has switched by
// now: it gets its switch first, as the kernel would have done it.
func (p *Poller) complete(ev func(event.Event)) {
	tr := p.tr
	var pids []int
	for pid, t := range p.tasks {
		if t.seenPending && participates(t.state) && t.state != tr.target {
			pids = append(pids, pid)
		}
	}
	slices.Sort(pids)
	for _, pid := range pids {
		t := p.tasks[pid]
		ev(event.Event{Type: event.TaskSwitch, PID: pid, TGID: t.tgid, Comm: t.comm,
			PatchState: tr.target, Path: PathPoll, Target: tr.target})
	}
	ev(event.Event{Type: event.TransitionComplete, Patch: tr.patch, Target: tr.target})
	delete(p.logged, tr.patch+"/"+dirName(tr.target))
	p.endTransition()
}

func (p *Poller) endTransition() {
	p.tr = nil
	for _, t := range p.tasks {
		t.state = event.StateIdle
		t.seenPending, t.reason, t.fn, t.stack = false, "", "", ""
	}
}

// scan reads every thread's patch_state during a transition: a switch for
// every change, a check (derived from the stack) for every pending thread.
func (p *Poller) scan(ev func(event.Event), ps []sysfs.Patch) {
	tr := p.tr
	blocking := p.blocking(ps)
	// A task at the target stays there until a reverse (a full scan), so
	// between full scans only the pending ones are read again: reading
	// every thread every poll costs more than the rest of klptop.
	full := p.fullScan || p.FullEvery <= 1 || p.sinceFull+1 >= p.FullEvery
	var threads []thread
	if full {
		threads = p.threads()
		p.fullScan, p.sinceFull = false, 0
	} else {
		p.sinceFull++
		for tid, t := range p.tasks {
			if participates(t.state) && t.state != tr.target {
				threads = append(threads, thread{tid: tid, tgid: t.tgid,
					dir: filepath.Join(p.root, "proc", strconv.Itoa(t.tgid), "task", strconv.Itoa(tid))})
			}
		}
		slices.SortFunc(threads, func(a, b thread) int { return a.tid - b.tid })
	}
	seen := make(map[int]bool, len(p.tasks))
	for _, th := range threads {
		st, err := sysfs.ThreadPatchState(p.root, th.tgid, th.tid)
		if err != nil {
			continue // exited while we looked
		}
		at := p.Now()
		seen[th.tid] = true
		t := p.tasks[th.tid]
		if t == nil {
			// New since the last scan: forked, or started while no
			// transition ran (tasks are not scanned then).
			t = &task{tgid: th.tgid, comm: p.comm(th), state: event.StateIdle}
			p.tasks[th.tid] = t
		}
		if st == event.StateIdle && t.seenPending && participates(t.state) && t.state != tr.target {
			// The kernel resets every task only once it completed the
			// transition, which it did with this one at the target: it
			// switched since the last poll, then the transition ended
			// between reading sysfs and reading this thread.
			ev(event.Event{Time: at, Type: event.TaskSwitch, PID: th.tid, TGID: t.tgid, Comm: t.comm,
				PatchState: tr.target, Path: PathPoll, Target: tr.target})
			t.state = tr.target
		}
		if st != t.state {
			ev(event.Event{Time: at, Type: event.TaskSwitch, PID: th.tid, TGID: t.tgid, Comm: t.comm,
				PatchState: st, Path: PathPoll, Target: tr.target})
			t.state = st
		}
		if !participates(st) || st == tr.target {
			continue
		}
		reason, fn, stack := p.reason(th, blocking)
		e := event.Event{Time: at, Type: event.TaskCheck, PID: th.tid, TGID: t.tgid, Comm: t.comm,
			Patch: tr.patch, Target: tr.target, Reason: reason, Func: fn, PatchState: st}
		if s := strings.Join(stack, "\n"); s != t.stack || reason != t.reason || fn != t.fn {
			e.Stack = stack
			t.stack = s
		}
		t.seenPending, t.reason, t.fn = true, reason, fn
		ev(e)
	}
	var gone []int
	for _, th := range threads {
		if !full && !seen[th.tid] {
			gone = append(gone, th.tid)
		}
	}
	for tid := range p.tasks {
		if full && !seen[tid] {
			gone = append(gone, tid)
		}
	}
	slices.Sort(gone)
	end := p.Now()
	for _, tid := range gone {
		if t := p.tasks[tid]; t != nil {
			if participates(t.state) && t.state != tr.target {
				ev(event.Event{Time: end, Type: event.TaskSwitch, PID: tid, TGID: t.tgid, Comm: t.comm,
					PatchState: event.StateIdle, Path: PathExit, Target: tr.target})
			}
		}
	}
	for _, tid := range gone {
		delete(p.tasks, tid)
	}
}

// blockers are what klp_check_stack looks for on a pending task's stack,
// as far as sysfs tells: patching, the functions the patch replaces (by
// name; when another patch already replaced one, that patch's module);
// unpatching, the patch's own new functions (any frame in its module).
type blockers struct {
	funcs   map[string]bool
	modules map[string]bool
}

func (p *Poller) blocking(ps []sysfs.Patch) blockers {
	b := blockers{funcs: map[string]bool{}, modules: map[string]bool{}}
	if p.tr == nil {
		return b
	}
	var trp *sysfs.Patch
	for i := range ps {
		if ps[i].Name == p.tr.patch {
			trp = &ps[i]
		}
	}
	if trp == nil {
		return b
	}
	if p.tr.target == event.StateUnpatched {
		b.modules[trp.Name] = true
		return b
	}
	names := funcNames(*trp)
	for n := range names {
		b.funcs[n] = true
	}
	for _, o := range ps {
		if o.Name == trp.Name || !o.Enabled {
			continue
		}
		for n := range funcNames(o) {
			if names[n] {
				b.modules[o.Name] = true
			}
		}
	}
	return b
}

func funcNames(pt sysfs.Patch) map[string]bool {
	out := map[string]bool{}
	for _, o := range pt.Objects {
		for _, f := range o.Funcs {
			name, _, _ := strings.Cut(f, ",")
			out[name] = true
		}
	}
	return out
}

// reason derives why a pending thread has not switched: a frame in a
// function the transition must replace (innermost first, as the kernel
// walks), else running (state R, or a stack that reads empty), else
// nothing on its stack holds it.
func (p *Poller) reason(th thread, b blockers) (reason, fn string, stack []string) {
	stack, err := sysfs.ThreadStack(p.root, th.tgid, th.tid)
	for _, fr := range stack {
		name, mod := frame(fr)
		base, _, _ := strings.Cut(name, ".")
		if b.funcs[name] || b.funcs[base] || (mod != "" && b.modules[mod]) {
			return event.ReasonSleeping, name, stack
		}
	}
	// The kernel does not unwind a running task: its stack reads empty
	// (and it may be asleep again by the time stat is read).
	if (err == nil && len(stack) == 0) || p.running(th) {
		return event.ReasonRunning, "", stack
	}
	return ReasonNoFrame, "", stack
}

// frame splits "fn+0x1c/0x40 [mod]" into fn and mod.
func frame(f string) (name, mod string) {
	f = strings.TrimSpace(f)
	if i := strings.Index(f, " ["); i >= 0 && strings.HasSuffix(f, "]") {
		mod = f[i+2 : len(f)-1]
		f = f[:i]
	}
	if i := strings.IndexAny(f, "+ "); i >= 0 {
		f = f[:i]
	}
	return f, mod
}

// running: the thread's state in /proc/<pid>/task/<tid>/stat is R.
func (p *Poller) running(th thread) bool {
	b, err := os.ReadFile(filepath.Join(th.dir, "stat"))
	if err != nil {
		return false
	}
	s := string(b)
	i := strings.LastIndexByte(s, ')')
	return i >= 0 && strings.HasPrefix(s[i+1:], " R")
}

type thread struct {
	tid, tgid int
	dir       string
}

// threads lists every thread in /proc.
func (p *Poller) threads() []thread {
	proc := filepath.Join(p.root, "proc")
	ents, err := os.ReadDir(proc)
	if err != nil {
		return nil
	}
	var out []thread
	for _, e := range ents {
		tgid, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		tdir := filepath.Join(proc, e.Name(), "task")
		tents, err := os.ReadDir(tdir)
		if err != nil {
			continue
		}
		for _, te := range tents {
			tid, err := strconv.Atoi(te.Name())
			if err != nil {
				continue
			}
			out = append(out, thread{tid: tid, tgid: tgid, dir: filepath.Join(tdir, te.Name())})
		}
	}
	slices.SortFunc(out, func(a, b thread) int { return a.tid - b.tid })
	return out
}

func (p *Poller) comm(th thread) string {
	b, err := os.ReadFile(filepath.Join(th.dir, "comm"))
	if err != nil {
		return ""
	}
	return strings.TrimSpace(string(b))
}

func participates(ps int) bool {
	return ps == event.StateUnpatched || ps == event.StatePatched
}

// Run polls every interval until ctx is done, handing each event to emit.
// It returns ctx's error, or the error that made sysfs unreadable. It polls
// once more when ctx is done, so that a recording ends with what the kernel
// did up to then (the BPF backend drains its ring buffer likewise).
func (p *Poller) Run(ctx context.Context, interval time.Duration, emit func(event.Event)) error {
	p.FullEvery = max(1, int(time.Second/interval))
	t := time.NewTicker(interval)
	defer t.Stop()
	for {
		var done error
		select {
		case <-ctx.Done():
			done = ctx.Err()
		case <-t.C:
		}
		evs, err := p.Poll()
		if done != nil {
			if err == nil {
				for _, e := range evs {
					emit(e)
				}
			}
			return done
		}
		if err != nil {
			if errors.Is(err, os.ErrNotExist) {
				return err // livepatch sysfs gone: nothing left to watch
			}
			continue
		}
		for _, e := range evs {
			emit(e)
		}
	}
}
