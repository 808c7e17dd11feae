//go:build guest

package guest

import (
	"errors"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/klptop/klptop/internal/event"
	"github.com/klptop/klptop/internal/trace"
)

// TestRecordLifecycle: how `klptop record` ends. Under `-- COMMAND` it exits
// with COMMAND's status; without, Ctrl-C (SIGINT) ends it cleanly; killed
// outright, it still leaves a trace that reads up to its last whole line.
func TestRecordLifecycle(t *testing.T) {
	needKlptop(t)
	dir := filepath.Join(outDir, "traces")
	if err := os.MkdirAll(dir, 0o755); err != nil {
		t.Fatal(err)
	}

	t.Run("exit status of COMMAND", func(t *testing.T) {
		path := filepath.Join(dir, "lifecycle-exit.ndjson")
		cmd := exec.Command(klptopBin, "record", "-o", path, "--", "sh", "-c", "exit 7")
		out, err := cmd.CombinedOutput()
		var ee *exec.ExitError
		if !errors.As(err, &ee) || ee.ExitCode() != 7 {
			t.Fatalf("klptop record -- sh -c 'exit 7': %v, want exit status 7\n%s", err, out)
		}
		rec := readTrace(t, path)
		if rec.header.Format != trace.Format || len(rec.header.Attached) == 0 || rec.header.Kernel != kernelRelease(t) {
			t.Errorf("header: %+v", rec.header)
		}
		if got := strings.Join(rec.header.Command, " "); got != "sh -c exit 7" {
			t.Errorf("header command %q", got)
		}
		if !hasType(rec.events, event.SnapshotEnd) {
			t.Error("no snapshot in the trace")
		}
	})

	t.Run("SIGINT ends a recording cleanly", func(t *testing.T) {
		path := filepath.Join(dir, "lifecycle-sigint.ndjson")
		cmd := exec.Command(klptopBin, "record", "-o", path)
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		waitForSnapshot(t, path)
		if err := cmd.Process.Signal(syscall.SIGINT); err != nil {
			t.Fatal(err)
		}
		if err := waitTimeout(cmd, 20*time.Second); err != nil {
			t.Fatalf("after SIGINT: %v, want exit status 0", err)
		}
		rec := readTrace(t, path)
		if !hasType(rec.events, event.SnapshotEnd) {
			t.Error("no snapshot in the trace")
		}
	})

	t.Run("SIGKILL leaves a readable trace", func(t *testing.T) {
		path := filepath.Join(dir, "lifecycle-sigkill.ndjson")
		cmd := exec.Command(klptopBin, "record", "-o", path)
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		waitForSnapshot(t, path)
		// A transition while recording, so there is more than the snapshot.
		run(t, "insmod", "/lib/modules/"+kernelRelease(t)+"/extra/livepatch-sample.ko")
		waitFor(t, time.Minute, "the sample's transition to end", func() bool {
			return readAttr(sysLP+"/"+sampleName+"/transition") == "0"
		})
		// The recorder writes what it reads and flushes every 100 ms; its
		// reader may trail the kernel (symbols re-read for a new patch are
		// slow under emulation), so wait for the transition's end to reach
		// the file, then kill it without a chance to clean up.
		ended := time.Now()
		waitFor(t, 30*time.Second, "transition_complete in the file", func() bool {
			b, _ := os.ReadFile(path)
			return strings.Contains(string(b), `"type":"transition_complete"`)
		})
		t.Logf("transition_complete reached the file %v after sysfs showed the end", time.Since(ended).Round(time.Millisecond))
		cmd.Process.Kill()
		cmd.Wait()
		unloadPatch(t, sampleName, "livepatch_sample")

		f, err := os.Open(path)
		if err != nil {
			t.Fatal(err)
		}
		defer f.Close()
		r, err := trace.NewReader(f)
		if err != nil {
			t.Fatalf("killed recorder's trace: %v", err)
		}
		var evs []event.Event
		for {
			e, err := r.Next()
			if err == io.EOF {
				break
			}
			if err != nil {
				t.Fatalf("killed recorder's trace: %v", err)
			}
			evs = append(evs, e)
		}
		if !hasType(evs, event.TransitionInit) || !hasType(evs, event.TransitionComplete) {
			t.Errorf("%d events read from the killed recorder's trace, without the transition it saw", len(evs))
		}
	})
}

func hasType(evs []event.Event, ty event.Type) bool {
	for _, e := range evs {
		if e.Type == ty {
			return true
		}
	}
	return false
}

// waitForSnapshot waits until the recorder has flushed its start-up snapshot.
func waitForSnapshot(t *testing.T, path string) {
	t.Helper()
	waitFor(t, time.Minute, "the recorder's snapshot", func() bool {
		b, _ := os.ReadFile(path)
		return strings.Contains(string(b), `"type":"snapshot_end"`)
	})
}

func waitTimeout(cmd *exec.Cmd, d time.Duration) error {
	done := make(chan error, 1)
	go func() { done <- cmd.Wait() }()
	select {
	case err := <-done:
		return err
	case <-time.After(d):
		cmd.Process.Kill()
		return errors.New("did not exit")
	}
}

// TestProbePlanAgreesWithKernel: what klptop says it attached is traceable on
// this kernel, and what it says is missing is not; the klp_* functions the
// kernel inlined are logged for the record.
func TestProbePlanAgreesWithKernel(t *testing.T) {
	needKlptop(t)
	traceable := kernelTraceable(t)
	klp := 0
	for fn := range traceable {
		if strings.Contains(fn, "klp") {
			klp++
		}
	}
	t.Logf("%d traceable klp functions", klp)
	var inlined []string
	for _, fn := range []string{"klp_send_signals", "klp_check_stack", "__klp_enable_patch", "__klp_disable_patch",
		"klp_init_patch", "klp_free_patch_start", "klp_free_patch_finish", "klp_try_switch_task", "klp_check_and_switch_task"} {
		if !traceable[fn] {
			inlined = append(inlined, fn)
		}
	}
	t.Logf("not traceable here (inlined or absent): %v", inlined)

	path := filepath.Join(outDir, "traces", "plan.ndjson")
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		t.Fatal(err)
	}
	if out, err := exec.Command(klptopBin, "record", "-o", path, "--", "true").CombinedOutput(); err != nil {
		t.Fatalf("klptop record: %v\n%s", err, out)
	}
	rec := readTrace(t, path)
	if len(rec.header.Attached) == 0 {
		t.Fatal("nothing attached")
	}
	for _, a := range rec.header.Attached {
		if a == event.CallbacksPoint {
			continue // the patches' own callbacks, probed as klptop sees them
		}
		sym := strings.TrimSuffix(a, "%return")
		if !traceable[sym] {
			t.Errorf("klptop attached %s, which available_filter_functions does not list", a)
		}
	}
	for _, m := range rec.header.Missing {
		if traceable[m.Symbol] {
			t.Errorf("klptop calls %s missing (%s), but it is traceable", m.Symbol, m.Why)
		}
	}
	t.Logf("backend %s, attached %d, missing %v", rec.header.Backend, len(rec.header.Attached), rec.header.Missing)
}

// kernelTraceable is the set of functions available_filter_functions lists:
// the kernel's word on what can be probed.
func kernelTraceable(t *testing.T) map[string]bool {
	t.Helper()
	b, err := os.ReadFile("/sys/kernel/tracing/available_filter_functions")
	if err != nil {
		t.Fatal(err)
	}
	traceable := map[string]bool{}
	for _, line := range strings.Split(string(b), "\n") {
		if f := strings.Fields(line); len(f) > 0 {
			traceable[f[0]] = true
		}
	}
	return traceable
}
