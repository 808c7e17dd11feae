package probes

import (
	"context"
	"errors"
	"os"
	"strings"
	"sync"
	"time"

	"github.com/cilium/ebpf/ringbuf"

	"github.com/klptop/klptop/internal/event"
	"github.com/klptop/klptop/internal/sysfs"
)

// pollEvery bounds how late Read notices a cancelled context and reports
// lost events. The deadline is set from the reading goroutine itself:
// SetDeadline from another goroutine while ReadInto blocks deadlocks.
const pollEvery = 200 * time.Millisecond

// stopWait bounds how long Read, once cancelled, waits for a function stack
// read under way.
const stopWait = 15 * time.Second

// Read calls fn for every event until ctx is done (then it returns nil) or
// the session is closed (nil too). Calls of fn never overlap, and none comes
// after Read returned.
func (s *Session) Read(ctx context.Context, fn func(event.Event)) error {
	var mu sync.Mutex
	done := false
	deliver := fn
	emit := func(e event.Event) {
		mu.Lock()
		defer mu.Unlock()
		if !done {
			deliver(e)
		}
	}
	refresh, stopRefresh := s.funcsRefresher(emit)
	defer func() {
		// A re-read asked for before the end is part of the recording.
		stopRefresh()
		mu.Lock()
		done = true
		mu.Unlock()
	}()
	fn = emit

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
			if s.funcsWhy == "" {
				refresh(raw.Time)
			}
			continue
		}
		fn(s.finish(raw))
		if time.Since(s.lostChecked) >= pollEvery {
			s.reportLost(fn)
		}
	}
}

// funcsRefresher re-reads the function stacks off the event path: a read
// walks the kernel's lists and may symbolize a new module's functions, which
// takes seconds under emulation, and a transition asks for several reads in a
// burst. refresh never blocks; requests made while a read is pending or
// running fold into one read after it. stop does the pending read, if any,
// and returns when no read runs any more.
func (s *Session) funcsRefresher(emit func(event.Event)) (refresh func(stamp uint64), stop func()) {
	req := make(chan uint64, 1)
	quit := make(chan struct{})
	exited := make(chan struct{})
	read := func(stamp uint64) {
		// A change before the last read began is in what it read.
		if stamp < s.funcsReadAt {
			return
		}
		for _, e := range s.funcEvents(false, stamp) {
			emit(e)
		}
	}
	go func() {
		defer close(exited)
		for {
			select {
			case stamp := <-req:
				read(stamp)
			case <-quit:
				select {
				case stamp := <-req:
					read(stamp)
				default:
				}
				return
			}
		}
	}()
	refresh = func(stamp uint64) {
		select {
		case req <- stamp:
		default:
		}
	}
	stop = func() {
		close(quit)
		// A read may have to reread /proc/kallsyms for a new module's
		// symbols: seconds under emulation. Past stopWait its events are
		// dropped rather than hold the recording open.
		select {
		case <-exited:
		case <-time.After(stopWait):
		}
	}
	return refresh, stop
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
		// A new livepatch module: its functions are new stack frames.
		_ = s.syms.Reload()
	case event.TaskCheck:
		// Kprobes hold no BTF task pointer, so bpf_get_task_stack() is out
		// of reach there; the task is stuck, so its stack in /proc is the
		// one the check saw. The idle tasks (pid 0) have no /proc entry.
		if raw.wantStack && e.PID != 0 {
			if st, err := sysfs.Stack(s.root, e.PID); err == nil && stackMatches(st, e) {
				e.Stack = st
			}
		}
	}
	return e
}

func (s *Session) reportLost(fn func(event.Event)) {
	s.lostChecked = time.Now()
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
