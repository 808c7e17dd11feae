package probes

import (
	"context"
	"errors"
	"os"
	"strings"
	"time"

	"github.com/cilium/ebpf/ringbuf"

	"github.com/klptop/klptop/internal/event"
	"github.com/klptop/klptop/internal/sysfs"
)

// pollEvery bounds how late Read notices a cancelled context and reports
// lost events. The deadline is set from the reading goroutine itself:
// SetDeadline from another goroutine while ReadInto blocks deadlocks.
const pollEvery = 200 * time.Millisecond

// Read calls fn for every event until ctx is done (then it returns nil) or
// the session is closed (nil too). fn runs on Read's goroutine.
func (s *Session) Read(ctx context.Context, fn func(event.Event)) error {

	var rec ringbuf.Record
	draining := false
	for {
		if !draining && ctx.Err() != nil {
			// What the kernel already wrote belongs to the recording: a
			// command's last transition often ends just before klptop stops.
			// An expired deadline still returns what is in the ring first.
			draining = true
		}
		if draining {
			s.rd.SetDeadline(time.Now())
		} else {
			s.rd.SetDeadline(time.Now().Add(pollEvery))
		}
		err := s.rd.ReadInto(&rec)
		switch {
		case errors.Is(err, os.ErrDeadlineExceeded):
			s.reportLost(fn)
			if draining {
				return nil
			}
			continue
		case errors.Is(err, ringbuf.ErrClosed):
			return nil
		case err != nil:
			return err
		}
		raw, err := decodeEvent(rec.RawSample)
		if err != nil {
			continue // a newer object's record; skip rather than stop
		}
		if raw.Type == funcsChanged {
			// A change before the last read began is in what it read. The
			// read shows the stacks as they are now, which may be past this
			// change already: a stack that lived shorter than the ring
			// buffer's latency is not seen.
			// On the event path, in order: a read off it (tried) came
			// late and out of order on 7.x under emulation, where
			// naming a new module's functions rereads /proc/kallsyms
			// for seconds, and a read folded many changes into one.
			if s.funcsWhy == "" && raw.Time >= s.funcsReadAt {
				for _, e := range s.funcEvents(false, raw.Time) {
					fn(e)
				}
			}
			continue
		}
		switch raw.Type {
		case callbacksSeen:
			s.learnCallbacks(raw)
			continue
		case event.Callback:
			e, ok := s.callbackEvent(raw)
			if !ok {
				continue // no symbol at its address: nothing to name it by
			}
			fn(s.finish(rawEvent{Event: e}))
			continue
		}
		if raw.Type == event.ModuleGoing {
			s.forgetModule(raw.Object)
		}
		fn(s.finish(raw))
		if time.Since(s.lostChecked) >= pollEvery {
			s.reportLost(fn)
		}
	}
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

func (s *Session) reportLost(fn func(event.Event)) {
	s.lostChecked = time.Now()
	s.placePending()   // same tick: callbacks of patch modules that came live
	s.reportShadow(fn) // same tick: shadow variable counts that changed
	var perCPU []uint64
	if err := s.coll.Maps["lost"].Lookup(uint32(0), &perCPU); err != nil {
		return
	}
	var total uint64
	for _, n := range perCPU {
		total += n
	}
	if total > s.lostSeen {
		fn(event.Event{Time: monotonicNow(), Type: event.Lost, Count: total - s.lostSeen})
		s.lostSeen = total
	}
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
