//go:build guest

package guest

import (
	"strings"
	"testing"

	"github.com/klptop/klptop/internal/event"
	"github.com/klptop/klptop/internal/state"
)

// schedPathsFor is the scheduler path a kernel's tasks must switch by in
// this scenario, and the ones they may not: 6.4 to 6.15 call
// __klp_sched_try_switch() from cond_resched(), which kworkers reach after
// every work item (and the stuck one once let go), so on 6.12 some task
// always switches there. 6.16+ call it from __schedule(), only on
// TASK_FREEZABLE sleeps: a task must be left pending by the first sweep
// and then sleep freezable before returning to user space, which this
// scenario does not reliably produce on one vCPU, so on 7.x only the name
// is checked. 6.1 has neither.
func schedPathsFor(release string) (want, never []string) {
	switch {
	case strings.HasPrefix(release, "6.1."):
		return nil, []string{event.PathSchedTrySwitch, event.PathSchedule}
	case strings.HasPrefix(release, "6.12."):
		return []string{event.PathSchedTrySwitch}, []string{event.PathSchedule}
	default:
		return nil, []string{event.PathSchedTrySwitch}
	}
}

// TestSchedSwitchPaths: during a stalled transition (and its unpatching),
// tasks that switch themselves from the scheduler are named by the
// kernel's own scheduler path, never by the other kernel generation's.
func TestSchedSwitchPaths(t *testing.T) {
	cleanupDemo(t)
	s := startScenario(t, "schedpaths", `modprobe test_klp_callbacks_busy block_transition=Y
modprobe test_klp_callbacks_demo
hold unblock
echo 0 > /sys/module/test_klp_callbacks_busy/parameters/block_transition
settle test_klp_callbacks_demo
echo 0 > $lp/test_klp_callbacks_demo/enabled
gone test_klp_callbacks_demo
unload test_klp_callbacks_demo test_klp_callbacks_busy
`)
	stuckKworker(t)
	s.tell("unblock")
	rec, _ := s.finish()

	rel := kernelRelease(t)
	want, never := schedPathsFor(rel)
	// Folded as the TUI and report fold it: the path each task switched by.
	st := state.New()
	byPath := map[string]map[string]bool{}
	for _, e := range rec.events {
		st.Apply(e)
		if e.Type != event.TaskSwitch {
			continue
		}
		task := st.Task(state.Key(e))
		if task == nil {
			continue
		}
		p := task.SwitchPath
		if byPath[p] == nil {
			byPath[p] = map[string]bool{}
		}
		byPath[p][task.Comm] = true
	}
	for p, comms := range byPath {
		var names []string
		for c := range comms {
			names = append(names, c)
		}
		t.Logf("switched by %q: %d tasks (%s)", p, len(names), strings.Join(names[:min(8, len(names))], " "))
	}
	for _, p := range never {
		if len(byPath[p]) > 0 {
			t.Errorf("kernel %s: tasks switched by %q, a path this kernel does not have", rel, p)
		}
	}
	for _, p := range want {
		if len(byPath[p]) == 0 {
			t.Errorf("kernel %s: no task switched by %q", rel, p)
		}
	}
	// 6.1: the probe is named as missing, and the old classification stays.
	missing := false
	for _, m := range rec.header.Missing {
		missing = missing || m.Symbol == event.SchedTrySwitchProbe
	}
	if missing != strings.HasPrefix(rel, "6.1.") {
		t.Errorf("kernel %s: %s named missing: %v", rel, event.SchedTrySwitchProbe, missing)
	}
}
