//go:build guest

package guest

import (
	"os"
	"path/filepath"
	"slices"
	"testing"
	"time"

	"github.com/klptop/klptop/internal/event"
	"github.com/klptop/klptop/internal/trace"
)

// signalsHold keeps the transition stuck past the kernel's first round of
// signals: 15 retries about a second apart after the first sweep, plus slack.
const signalsHold = 17 * time.Second

// TestSignals: a transition held up long enough for klp_send_signals, which
// is inlined, so klptop sees it at wake_up_state. The stuck kworker must get
// a signal event, in the sweep the kernel logs "signaling remaining tasks"
// from, not before.
func TestSignals(t *testing.T) {
	cleanupDemo(t)
	sync := t.TempDir()
	t.Setenv("SYNC", sync)
	mark := kmsgMark(t)
	wait := startRecord(t, "signals", scenarioLib+`modprobe test_klp_callbacks_busy block_transition=Y
modprobe test_klp_callbacks_demo
hold unblock
echo 0 > /sys/module/test_klp_callbacks_busy/parameters/block_transition
settle test_klp_callbacks_demo
echo 0 > $lp/test_klp_callbacks_demo/enabled
gone test_klp_callbacks_demo
unload test_klp_callbacks_demo test_klp_callbacks_busy
`)
	start := time.Now()
	kw := stuckKworker(t)
	waitFor(t, 90*time.Second, `the kernel's "signaling remaining tasks"`, func() bool {
		return kernelSaid(readKmsg(t, mark), 0, "signaling remaining tasks") >= 0
	})
	if d := signalsHold - time.Since(start); d > 0 {
		time.Sleep(d)
	}
	if readAttr(demoLP+"/transition") != "1" {
		t.Fatal("the transition ended while the test held it")
	}
	if err := os.WriteFile(filepath.Join(sync, "unblock"), nil, 0o644); err != nil {
		t.Fatal(err)
	}
	rec := wait()
	klog := readKmsg(t, mark)

	if !rec.header.SignalsObservable() {
		t.Fatalf("header: %s not attached (attached %v, missing %v)", event.SignalProbe, rec.header.Attached, rec.header.Missing)
	}
	if slices.ContainsFunc(rec.header.Missing, func(m trace.Missing) bool { return m.Symbol == event.SignalSymbol }) {
		t.Errorf("header lists %s as missing although %s is attached: %v", event.SignalSymbol, event.SignalProbe, rec.header.Missing)
	}
	checkKernelSequence(t, klog, "starting patching transition", "signaling remaining tasks", "patching complete")

	// Sweeps of the patching transition before each signal; every signal must
	// fall inside a sweep.
	sweeps, inSweep, patching := 0, false, false
	var mine []int // sweep numbers of the kworker's signals
	total := 0
	for _, e := range rec.events {
		switch e.Type {
		case event.TransitionInit:
			patching = e.Target == event.StatePatched
			sweeps = 0
		case event.SweepStart:
			sweeps++
			inSweep = true
		case event.SweepEnd:
			inSweep = false
		case event.Signal:
			total++
			if !inSweep {
				t.Errorf("signal outside a sweep: %v", e)
			}
			if !patching {
				t.Errorf("signal in the unpatching transition, which never stalled: %v", e)
			}
			if e.PID == kw {
				mine = append(mine, sweeps)
				if e.Path != event.PathWake {
					t.Errorf("kworker %d signalled by path %q, want %q (a kthread is woken)", kw, e.Path, event.PathWake)
				}
			}
		}
	}
	if len(mine) == 0 {
		t.Fatalf("no signal event for the stuck kworker %d (%d signal events in all)", kw, total)
	}
	if mine[0] < 15 {
		t.Errorf("first signal to the kworker in sweep %d, want after at least 14 sweeps without (SIGNALS_TIMEOUT)", mine[0])
	}
	t.Logf("signals to kworker %d in sweeps %v; %d signal events in all", kw, mine, total)

	trs := reportOf(t, rec)
	if len(trs) == 0 {
		t.Fatal("report: no transitions")
	}
	tr := trs[0]
	if !tr.SignalsObservable || tr.Signals < len(mine) {
		t.Errorf("report: signals %d (observable %v), want at least %d", tr.Signals, tr.SignalsObservable, len(mine))
	}
	for _, b := range tr.Blockers {
		if b.PID == kw && b.Signals != len(mine) {
			t.Errorf("report: blocker %d has %d signals, the trace %d", kw, b.Signals, len(mine))
		}
	}
	t.Logf("report: %d sweeps, %d signals", tr.Sweeps, tr.Signals)
}
