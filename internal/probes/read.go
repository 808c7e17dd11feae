package probes

import (
	"context"
	"errors"
	"os"
	"slices"
	"strings"
	"time"

	"github.com/cilium/ebpf/ringbuf"

	"github.com/klptop/klptop/internal/event"
	"github.com/klptop/klptop/internal/sysfs"
)

// pollEvery bounds how often Read reads the kernel's loss counts, and how
// late it comes back for work that waits (a resync owed, callback sites
// whose module is not live yet). The deadline is set from the reading
// goroutine itself: SetDeadline from another goroutine while ReadInto
// blocks deadlocks.
const pollEvery = 200 * time.Millisecond

// Read calls fn for every event until ctx is done (then it returns nil) or
// the session is closed (nil too). fn runs on Read's goroutine, and so does
// the OnDrained function each time the ring is read empty.
//
// Read sleeps until the kernel writes: no timer wakes it while there is
// nothing to do, and the probes hold their wake-ups during a transition's
// start and its sweeps, so that no thread of klptop's is running when a
// sweep checks it. Loss counts are read when the ring is read empty, at most
// every pollEvery, and at the end.
//
// After a loss Read sends a resync (event.Resync): the kernel's state read
// again, placed among the ring's events by its time. It reads once the
// losses pause (a poll without new ones), or after resyncEvery while they
// go on, and at the end if one is owed.
func (s *Session) Read(ctx context.Context, out func(event.Event)) error {
	fn := func(e event.Event) {
		s.track(e)
		out(e)
	}
	stop := context.AfterFunc(ctx, func() { _ = s.rd.Flush() })
	defer stop()
	var rec ringbuf.Record
	draining, lastPass := false, false
	for {
		if !draining && ctx.Err() != nil {
			// What the kernel already wrote belongs to the recording: a
			// command's last transition often ends just before klptop stops.
			// An expired deadline still returns what is in the ring first.
			draining = true
		}
		switch {
		case draining:
			s.rd.SetDeadline(time.Now())
		case s.holding():
			// What waits, waits for the sweep's end, which wakes Read;
			// records held by a hold whose end is missed wake no one.
			s.rd.SetDeadline(time.Now().Add(holdMaxNs))
		case s.waiting():
			s.rd.SetDeadline(time.Now().Add(pollEvery))
		case !s.parkDue().IsZero():
			s.rd.SetDeadline(s.parkDue())
		default:
			s.rd.SetDeadline(time.Time{})
		}
		err := s.rd.ReadInto(&rec)
		switch {
		case errors.Is(err, os.ErrDeadlineExceeded), errors.Is(err, ringbuf.ErrFlushed):
			if !draining && s.holding() {
				// A sweep runs: what waits, waits for its end.
				continue
			}
			// The ring is empty: what was held is in order now.
			s.release(^uint64(0), fn)
			s.changedFuncs(0, draining, fn)
			if !draining {
				s.armHot()
			}
			took := s.checkLost(draining)
			if draining {
				if took && !lastPass {
					// What the kernel wrote while it was read goes first.
					lastPass = true
					continue
				}
				s.release(^uint64(0), fn)
				s.drained()
				return nil
			}
			s.drained()
			continue
		case errors.Is(err, ringbuf.ErrClosed):
			s.release(^uint64(0), fn)
			return nil
		case err != nil:
			return err
		}
		raw, err := decodeEvent(rec.RawSample)
		if err != nil {
			s.undecodable++ // counted as lost at the next check
		} else {
			s.release(raw.Time, fn)
			s.deliver(raw, fn)
		}
		if !draining && s.holding() && s.rd.AvailableBytes() < s.rd.BufferSize()/2 {
			// Awake when a transition started (the records came before
			// the hold): asleep, not running, when its sweep checks us.
			for s.holding() && ctx.Err() == nil {
				time.Sleep(holdNap)
			}
			continue
		}
		if s.rd.AvailableBytes() == 0 {
			s.release(^uint64(0), fn)
			quiet := !draining && !s.holding()
			if quiet {
				s.changedFuncs(0, false, fn)
			}
			armed := quiet && s.armHot()
			if armed || time.Since(s.lostChecked) >= pollEvery {
				s.checkLost(draining)
			}
			s.drained()
		} else if time.Since(s.lostChecked) >= pollEvery {
			s.checkLost(draining)
		}
	}
}

// waiting: Read has work that cannot wait for the kernel's next event.
func (s *Session) waiting() bool {
	return s.resync.owed > 0 || s.resync.attached || s.resync.taken || len(s.held) > 0 || s.cb.anyPending() ||
		!s.funcsOwed.IsZero()
}

// holding: the probes hold their wake-ups (a transition starts or a sweep
// runs), read through the map's mmap: no system call, the briefest run.
func (s *Session) holding() bool {
	var since uint64
	v := s.holdSince
	if v == nil || v.Get(&since) != nil || since == 0 {
		return false
	}
	return monotonicNow()-since < holdMaxNs
}

// sleepThroughHold returns once the probes hold no wake-ups: klptop is
// asleep, not in the kernel, while a transition starts or a sweep runs.
func (s *Session) sleepThroughHold() {
	for s.holding() {
		time.Sleep(holdNap)
	}
}

// holdMaxNs is the BPF side's HOLD_MAX_NS; holdNap how long Read sleeps
// before it looks whether a hold ended.
const (
	holdMaxNs = 3_000_000_000
	holdNap   = 20 * time.Millisecond
)

func (s *Session) drained() {
	if s.onDrained != nil {
		s.onDrained()
	}
}

// resyncEvery bounds how long a run of losses goes without a resync.
const resyncEvery = time.Second

// resync is what Read owes after losses.
type resync struct {
	owed  uint64 // events lost since the last resync taken
	last  time.Time
	taken bool // one is held, not yet sent
	// attached: the hot probes went on (armHot); what they missed before
	// is settled by a resync too.
	attached bool
}

// hold keeps an event klptop made (a loss, a resync, shadow counts) until
// the ring's events before its time are read: the reader trails the
// kernel, most when the ring overflows, and a trace goes forward in time.
func (s *Session) hold(e event.Event) {
	i := len(s.held)
	for i > 0 && s.held[i-1].Time > e.Time {
		i--
	}
	s.held = slices.Insert(s.held, i, e)
}

// release sends the held events up to time t.
func (s *Session) release(t uint64, fn func(event.Event)) {
	n := 0
	for n < len(s.held) && s.held[n].Time <= t {
		if s.held[n].Type == event.Resync {
			s.resync.taken = false
		}
		fn(s.held[n])
		n++
	}
	if n > 0 {
		s.held = slices.Delete(s.held, 0, n)
	}
}

// checkLost reports losses and takes a resync when one is owed and the
// losses paused (or resyncEvery passed, or the reading ends); true if it
// took one. Both are held (see hold).
func (s *Session) checkLost(ending bool) bool {
	n := s.reportLost(s.hold)
	s.resync.owed += n
	if s.resync.owed == 0 && !s.resync.attached || s.resync.taken {
		return false
	}
	if n > 0 && !ending && time.Since(s.resync.last) < resyncEvery {
		return false
	}
	evs, err := s.resyncEvents(s.resync.owed)
	if err != nil {
		if s.warn != nil {
			s.warn("resync: " + err.Error())
		}
		s.resync.attached = false // the next loss's resync settles it
		return false
	}
	s.resync.owed, s.resync.last, s.resync.taken, s.resync.attached = 0, time.Now(), true, false
	// One block, in its order, at one time.
	i := len(s.held)
	for i > 0 && s.held[i-1].Time > evs[0].Time {
		i--
	}
	s.held = slices.Insert(s.held, i, evs...)
	return true
}

// deliver hands one decoded record on, or acts on it.
func (s *Session) deliver(raw rawEvent, fn func(event.Event)) {
	switch raw.Type {
	case funcsChanged:
		// A change before the last read began is in what it read. The
		// read shows the stacks as they are now, which may be past this
		// change already: a stack that lived shorter than the ring
		// buffer's latency is not seen.
		// On the event path, in order: a read off it (tried) came
		// late and out of order on 7.x under emulation, where
		// naming a new module's functions rereads /proc/kallsyms
		// for seconds, and a read folded many changes into one.
		if s.funcsWhy == "" && raw.Time >= s.funcsReadAt {
			s.changedFuncs(raw.Time, false, fn)
		}
		return
	case callbacksSeen:
		s.learnCallbacks(raw)
		return
	case event.Callback:
		if e, ok := s.callbackEvent(raw); ok {
			fn(s.finish(rawEvent{Event: e}))
		} // else no symbol at its address: nothing to name it by
		return
	case event.ModuleGoing:
		s.forgetModule(raw.Object)
	}
	fn(s.finish(raw))
}

// finish adds what the kernel side leaves to user space.
func (s *Session) finish(raw rawEvent) event.Event {
	e := raw.Event
	switch e.Type {
	case event.TaskCheck, event.TaskSwitch, event.Signal:
	default:
		e.PatchState = 0 // does not apply: left zero, as event.Event says
	}
	switch e.Type {
	case event.PatchEnable:
		// A new livepatch module: the kernel names its functions where
		// klptop shows them (%ps in the BPF programs, /proc stacks); the
		// table rereads kallsyms by itself on a miss.
	case event.TaskCheck:
		// Kprobes hold no BTF task pointer, so bpf_get_task_stack() is out
		// of reach there; the task is stuck, so its stack in /proc is the
		// one the check saw. The idle tasks (pid 0) have no /proc entry.
		if e.Reason != event.ReasonSleeping {
			delete(s.needStack, e.PID)
		}
		if (raw.wantStack || s.needStack[e.PID]) && e.PID != 0 {
			if st, err := sysfs.Stack(s.root, e.PID); err == nil && len(st) > 0 && stackMatches(st, e) {
				e.Stack = st
				delete(s.needStack, e.PID)
			} else if e.Reason == event.ReasonSleeping {
				if s.needStack == nil {
					s.needStack = make(map[int]bool)
				}
				s.needStack[e.PID] = true
			}
		}
	}
	return e
}

// stackMatches: the stack read from /proc now can be the one the kernel
// checked only if it holds the function the check found: a task already
// out of it (the check's event read late, under load) would show a stack
// the check never saw. Such a stack is left out; the last good one stands.
func stackMatches(st []string, e event.Event) bool {
	if e.Reason != event.ReasonSleeping || e.Func == "" {
		return true
	}
	for _, f := range st {
		if strings.HasPrefix(f, e.Func+"+") {
			return true
		}
	}
	return false
}
