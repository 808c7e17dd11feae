//go:build guest

package guest

import (
	"bufio"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/klptop/klptop/internal/event"
)

// onDemandScript stalls a transition between gates the test opens: go
// (klptop is recording, no transition), unblock (the transition may
// complete), done (the patch is disabled and removed).
const onDemandScript = `set -e
lp=/sys/kernel/livepatch/test_klp_callbacks_demo
gate() { n=0; while [ ! -e "$SYNC/$1" ] && [ $n -lt 900 ]; do sleep 0.1; n=$((n+1)); done; }
gate go
modprobe test_klp_callbacks_busy block_transition=Y
modprobe test_klp_callbacks_demo
gate unblock
echo 0 > /sys/module/test_klp_callbacks_busy/parameters/block_transition
while [ "$(cat $lp/transition)" != 0 ]; do sleep 0.05; done
gate done
echo 0 > $lp/enabled
while [ -e $lp ]; do sleep 0.05; done
unload test_klp_callbacks_demo test_klp_callbacks_busy
`

// onDemand are the functions klptop probes only during a transition.
var onDemand = []string{"klp_copy_process", "release_task", event.SignalProbe}

// enabledFunctions is the kernel's list of the functions ftrace calls out
// from: kprobes on ftrace, fprobes (kprobe-multi) and BPF trampolines
// (fentry) alike.
func enabledFunctions(t *testing.T) map[string]bool {
	t.Helper()
	f, err := os.Open("/sys/kernel/tracing/enabled_functions")
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	m := map[string]bool{}
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		if fs := strings.Fields(sc.Text()); len(fs) > 0 {
			m[fs[0]] = true
		}
	}
	if err := sc.Err(); err != nil {
		t.Fatal(err)
	}
	return m
}

// TestProbesOnDemand: klptop's probes on forks, exits and wake-ups are in
// the kernel's enabled_functions only while a transition runs, and a fork
// and an exit during the transition are recorded; the kernel's list, not
// klptop's, is the judge.
func TestProbesOnDemand(t *testing.T) {
	needKlptop(t)
	sync := t.TempDir()
	t.Setenv("SYNC", sync)
	t.Cleanup(func() {
		unloadPatch(t, demoName, "test_klp_callbacks_demo", "test_klp_callbacks_busy")
	})
	open := func(gate string) {
		if err := os.WriteFile(filepath.Join(sync, gate), nil, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	traceable := kernelTraceable(t)
	var hot []string
	for _, f := range onDemand {
		if traceable[f] {
			hot = append(hot, f)
		}
	}
	if len(hot) == 0 {
		t.Fatalf("none of %v traceable here", onDemand)
	}
	traced := func(want bool) func() bool {
		return func() bool {
			ef := enabledFunctions(t)
			for _, f := range hot {
				if ef[f] != want {
					return false
				}
			}
			return true
		}
	}
	path := filepath.Join(outDir, "traces", "ondemand.ndjson")
	wait := startRecordTo(t, path, onDemandScript)
	waitForSnapshot(t, path)
	lp := sysLP + "/" + demoName

	ef := enabledFunctions(t)
	if !ef["klp_try_complete_transition"] {
		t.Fatal("klptop is recording, but enabled_functions does not list klp_try_complete_transition")
	}
	for _, f := range hot {
		if ef[f] {
			t.Errorf("no transition runs, and %s is in enabled_functions", f)
		}
	}

	open("go")
	waitFor(t, 90*time.Second, "the stalled transition", func() bool { return readAttr(lp+"/transition") == "1" })
	waitFor(t, 30*time.Second, "klptop's on-demand probes in enabled_functions during the transition", traced(true))
	child := exec.Command("true")
	if err := child.Run(); err != nil {
		t.Fatal(err)
	}
	pid := child.Process.Pid
	if readAttr(lp+"/transition") != "1" {
		t.Fatal("the transition ended before the fork")
	}
	open("unblock")
	waitFor(t, 60*time.Second, "the transition's end", func() bool { return readAttr(lp+"/transition") == "0" })
	waitFor(t, 30*time.Second, "klptop's on-demand probes gone from enabled_functions after the transition", traced(false))
	open("done")
	rec := wait()

	if !slices.Equal(slices.Sorted(slices.Values(rec.header.OnDemand)), slices.Sorted(slices.Values(append(hot, "release_task%return")))) {
		t.Errorf("header on_demand %v, want %v and release_task%%return", rec.header.OnDemand, hot)
	}
	var forked, exited, settled bool
	inited := false
	for _, e := range rec.events {
		switch {
		case e.Type == event.TransitionInit:
			inited = true
		case e.Type == event.Resync && inited && e.Reason == event.ResyncAttached:
			settled = true
		case e.Type == event.TaskSwitch && e.Path == event.PathFork && e.PID == pid:
			forked = true
		case e.Type == event.TaskExit && e.PID == pid:
			exited = true
		}
	}
	if !settled {
		t.Errorf("no resync (reason %s) after the probes went on", event.ResyncAttached)
	}
	if !forked || !exited {
		t.Errorf("pid %d forked and exited during the transition: fork recorded %v, exit recorded %v", pid, forked, exited)
	}
}
