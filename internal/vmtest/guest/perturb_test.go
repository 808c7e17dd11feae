//go:build guest

package guest

import (
	"context"
	"fmt"
	"os/exec"
	"path/filepath"
	"slices"
	"testing"
	"time"
)

// perturbScript: the sample patch enabled and disabled perturbCycles times,
// then a patch replaced atomically and the replacement removed. Each first
// sweep runs in the enabling or disabling write, right after
// klp_start_transition, while klptop has just been told the transition
// started. (Not i: unload's counter is i, and shell variables are global.)
const perturbCycles = 8

var perturbScript = fmt.Sprintf(`cycle=0
while [ $cycle -lt %d ]; do
	modprobe livepatch-sample
	settle livepatch_sample
	echo 0 > $lp/livepatch_sample/enabled
	gone livepatch_sample
	unload livepatch_sample
	cycle=$((cycle+1))
done
`+replaceScript, perturbCycles)

// perturbTransitions: the kernel's transitions in perturbScript.
const perturbTransitions = 2*perturbCycles + 3

// TestNoPerturbation: klptop is never the reason a transition waits. The
// kernel logs (pr_debug) every task a sweep fails to switch, with its comm;
// over the same transitions run without klptop and then recorded by it, no
// failed check is of a klptop thread. The durations are the kernel's own
// (its log's start and completion lines), given side by side.
func TestNoPerturbation(t *testing.T) {
	needKlptop(t)
	t.Cleanup(func() {
		unloadPatch(t, scReplace, scReplace)
		unloadPatch(t, scKlpTest, scKlpTest)
		unloadPatch(t, "livepatch_sample", "livepatch_sample")
	})
	enableTransitionDebug(t)
	comm := filepath.Base(klptopBin)
	if len(comm) > 15 {
		comm = comm[:15] // TASK_COMM_LEN
	}

	// Without klptop: the same script, the same shell helpers.
	mark := kmsgMark(t)
	ctx, cancel := context.WithTimeout(context.Background(), 4*time.Minute)
	defer cancel()
	if out, err := exec.CommandContext(ctx, "sh", "-xc", moduleLib+scenarioLib+perturbScript).CombinedOutput(); err != nil {
		t.Fatalf("the script without klptop: %v\n%s", err, out)
	}
	bare := transitionDurations(t, readKmsg(t, mark))

	mark = kmsgMark(t)
	wait, proc := startRecordProc(t, filepath.Join(outDir, "traces", "perturb.ndjson"), scenarioLib+perturbScript)
	pid := proc.Pid
	rec := wait()
	klog := readKmsg(t, mark)
	with := transitionDurations(t, klog)

	failed, ours := 0, 0
	for _, r := range klog {
		tr := parseTaskReason(r.msg)
		if tr == nil {
			continue
		}
		failed++
		if tr.comm == comm {
			ours++
			t.Errorf("the kernel failed a check of klptop's thread %d (klptop pid %d): %s", tr.pid, pid, r.msg)
		}
	}
	t.Logf("recorded %d events; the kernel logged %d failed checks in %d transitions, %d of them klptop's", len(rec.events), failed, len(with), ours)
	t.Logf("transition durations without klptop: median %v, max %v; with klptop: median %v, max %v",
		median(bare), slices.Max(bare), median(with), slices.Max(with))
}

// transitionDurations: from each "starting ... transition" line to the
// "... complete" line of the same patch, in the kernel's log; it wants
// perturbTransitions of them.
func transitionDurations(t *testing.T, klog []kmsg) []time.Duration {
	t.Helper()
	started := map[string]uint64{}
	var ds []time.Duration
	for _, l := range kernelTransitions(klog) {
		switch l.what {
		case "start":
			started[l.patch] = l.t
		case "complete":
			if s, ok := started[l.patch]; ok {
				ds = append(ds, time.Duration(l.t-s))
				delete(started, l.patch)
			}
		}
	}
	if len(ds) != perturbTransitions {
		t.Fatalf("the kernel logged %d complete transitions, the script makes %d", len(ds), perturbTransitions)
	}
	return ds
}

func median(ds []time.Duration) time.Duration {
	s := slices.Clone(ds)
	slices.Sort(s)
	return s[len(s)/2]
}
