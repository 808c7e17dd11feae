package probes

import (
	"testing"

	"github.com/klptop/klptop/internal/event"
)

func TestStackMatches(t *testing.T) {
	sleeping := event.Event{Reason: event.ReasonSleeping, Func: "busymod_work_func"}
	in := []string{"msleep+0x29/0x40", "busymod_work_func+0x38/0x4d [test_klp_callbacks_busy]", "worker_thread+0xaf/0x380"}
	out := []string{"worker_thread+0xaf/0x380", "kthread+0xda/0x100"}
	if !stackMatches(in, sleeping) || stackMatches(out, sleeping) {
		t.Errorf("sleeping on busymod_work_func: in %v, out %v", stackMatches(in, sleeping), stackMatches(out, sleeping))
	}
	if !stackMatches(out, event.Event{Reason: event.ReasonRunning}) {
		t.Error("a running task's stack is taken as read")
	}
}
