package report

import (
	"bytes"
	"encoding/json"
	"flag"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

var update = flag.Bool("update", false, "rewrite the golden files in testdata/golden")

// recordedGlob matches the recordings of real kernels that `make testdata`
// puts in the repository's testdata/, one directory per kernel.
const recordedGlob = "../../testdata/linux-*/*.jsonl"

// goldenName names a trace's golden files: the file's name, prefixed with its
// kernel's directory for a recording (linux-6.1-stall).
func goldenName(path string) string {
	name := strings.TrimSuffix(filepath.Base(path), ".jsonl")
	if dir := filepath.Base(filepath.Dir(path)); strings.HasPrefix(dir, "linux-") {
		name = dir + "-" + name
	}
	return name
}

// goldenTraces are the traces with golden reports: hand-made ones here, and
// recordings of real kernels in the repository's testdata/linux-*/ (`make
// testdata`, then `go test ./internal/report -update` and a review).
func goldenTraces(t *testing.T) []string {
	var out []string
	for _, pat := range []string{"testdata/*.jsonl", recordedGlob} {
		m, err := filepath.Glob(pat)
		if err != nil {
			t.Fatal(err)
		}
		out = append(out, m...)
	}
	if len(out) == 0 {
		t.Fatal("no traces in testdata")
	}
	return out
}

// runLikeCLI renders what `klptop report` shows: stdout, then stderr lines
// and the exit status, so that a golden file reviews as a terminal session.
func runLikeCLI(t *testing.T, path string, opts Options) (stdout, session string) {
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	var out bytes.Buffer
	sum, err := Run(f, &out, opts)
	var s strings.Builder
	s.WriteString(out.String())
	for _, w := range sum.Warnings() {
		fmt.Fprintf(&s, "[stderr] warning: %s\n", w)
	}
	if err != nil {
		fmt.Fprintf(&s, "[stderr] %s\n", err)
	}
	fmt.Fprintf(&s, "[exit %d]\n", ExitStatus(sum, err))
	return out.String(), s.String()
}

func TestGolden(t *testing.T) {
	for _, path := range goldenTraces(t) {
		name := goldenName(path)
		t.Run(name, func(t *testing.T) {
			_, text := runLikeCLI(t, path, Options{})
			js, _ := runLikeCLI(t, path, Options{JSON: true})
			var v map[string]any
			if err := json.Unmarshal([]byte(js), &v); err != nil {
				t.Fatalf("--json output does not parse: %v\n%s", err, js)
			}
			golden(t, filepath.Join("testdata", "golden", name+".txt"), text)
			golden(t, filepath.Join("testdata", "golden", name+".json"), js)
		})
	}
}

func golden(t *testing.T, path, got string) {
	t.Helper()
	if *update {
		if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(path, []byte(got), 0o644); err != nil {
			t.Fatal(err)
		}
		return
	}
	want, err := os.ReadFile(path)
	if err != nil {
		t.Fatalf("%v (run go test -update to create it)", err)
	}
	if string(want) != got {
		t.Errorf("%s differs (go test -update rewrites it after review):\n--- got ---\n%s\n--- want ---\n%s", path, got, want)
	}
}

// The facts the golden files encode, checked by name so that a careless
// -update cannot silently bless a regression in them.
func TestHandMadeFacts(t *testing.T) {
	type want struct {
		exit     int
		outcomes []string
		errPart  string
	}
	for name, w := range map[string]want{
		"hand-made-resync":               {0, []string{"complete"}, ""},
		"hand-made-stall":                {0, []string{"complete", "complete"}, ""},
		"hand-made-reverse-force-cancel": {0, []string{"cancelled", "reversed", "forced"}, ""},
		"hand-made-unfinished":           {1, []string{"unfinished"}, ""},
		"hand-made-truncated":            {1, []string{"complete", "unfinished"}, ""},
		"hand-made-corrupt":              {1, []string{"unfinished"}, "line 15 (byte "},
	} {
		t.Run(name, func(t *testing.T) {
			f, err := os.Open(filepath.Join("testdata", name+".jsonl"))
			if err != nil {
				t.Fatal(err)
			}
			defer f.Close()
			var out bytes.Buffer
			sum, err := Run(f, &out, Options{JSON: true})
			if got := ExitStatus(sum, err); got != w.exit {
				t.Errorf("exit %d, want %d (err %v)", got, w.exit, err)
			}
			if w.errPart != "" && (err == nil || !strings.Contains(err.Error(), w.errPart)) {
				t.Errorf("error %v does not name %q", err, w.errPart)
			}
			if err != nil && strings.Contains(err.Error(), "\n") {
				t.Errorf("error is not one line: %q", err)
			}
			var r struct {
				Transitions []Transition `json:"transitions"`
			}
			if err := json.Unmarshal(out.Bytes(), &r); err != nil {
				t.Fatal(err)
			}
			var got []string
			for _, tr := range r.Transitions {
				got = append(got, tr.Outcome)
			}
			if strings.Join(got, ",") != strings.Join(w.outcomes, ",") {
				t.Errorf("outcomes %v, want %v", got, w.outcomes)
			}
		})
	}
}

func TestStallBlockers(t *testing.T) {
	f, err := os.Open("testdata/hand-made-stall.jsonl")
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	var out bytes.Buffer
	if _, err := Run(f, &out, Options{JSON: true}); err != nil {
		t.Fatal(err)
	}
	var r struct {
		Transitions []Transition `json:"transitions"`
	}
	if err := json.Unmarshal(out.Bytes(), &r); err != nil {
		t.Fatal(err)
	}
	tr := r.Transitions[0]
	if !tr.Stall || tr.Sweeps != 4 || len(tr.Blockers) != 1 || tr.SignalsObservable {
		t.Fatalf("transition %+v", tr)
	}
	b := tr.Blockers[0]
	// Pending from klp_init_transition (10.0001 s) to the sweep that
	// switched it (13.00102 s). Two checks found it sleeping in
	// busymod_work_func (2 s), the last one running (1 s): the report gives
	// the longer stretch, with its stack.
	if b.PID != 57 || b.Checks != 3 || b.BlockedNs != 13001020000-10000100000 || b.Reason != "sleeping_on_func" ||
		b.Func != "busymod_work_func" || b.Switched == nil || b.SwitchPath != "sweep" || len(b.Stack) != 6 {
		t.Fatalf("blocker %+v", b)
	}
	if b.FirstCheck.Wall != "2025-03-04T03:12:05.00102Z" || b.FirstCheck.Offset != 5.00102 {
		t.Fatalf("first check %+v", b.FirstCheck)
	}
	if r.Transitions[1].Stall || len(r.Transitions[1].Blockers) != 0 {
		t.Fatalf("single-sweep transition reported as a stall: %+v", r.Transitions[1])
	}
}

// The facts the recordings of real kernels (make testdata) were made to
// show, checked by name like the hand-made ones: a re-recording or an -update
// must keep them.
func TestRecordedFacts(t *testing.T) {
	type want struct {
		outcomes []string // patch/direction/outcome, in order
		blocker  string   // the first transition's first blocker: reason/func/switch path
	}
	const demo, busy = "test_klp_callbacks_demo", "sleeping_on_func/busymod_work_func/"
	wants := map[string]want{
		"sample":  {[]string{"livepatch_sample/patching/complete", "livepatch_sample/unpatching/complete"}, ""},
		"stall":   {[]string{demo + "/patching/complete", demo + "/unpatching/complete"}, busy + "sweep"},
		"reverse": {[]string{demo + "/patching/reversed"}, busy + "reverse"},
		"replace": {[]string{"test_klp_livepatch/patching/complete", "test_klp_atomic_replace/patching/complete",
			"test_klp_atomic_replace/unpatching/complete"}, ""},
		"force": {[]string{demo + "/patching/forced", demo + "/unpatching/complete"}, busy + "force"},
	}
	paths, _ := filepath.Glob(recordedGlob)
	seen := map[string]bool{}
	for _, path := range paths {
		name := strings.TrimSuffix(filepath.Base(path), ".jsonl")
		w, ok := wants[name]
		if !ok {
			continue
		}
		seen[name] = true
		t.Run(goldenName(path), func(t *testing.T) {
			f, err := os.Open(path)
			if err != nil {
				t.Fatal(err)
			}
			defer f.Close()
			var out bytes.Buffer
			sum, err := Run(f, &out, Options{JSON: true})
			if err != nil || ExitStatus(sum, err) != 0 || sum.Truncated || sum.LostEvents > 0 || len(sum.UnknownEvents) > 0 {
				t.Fatalf("err %v, summary %+v", err, sum)
			}
			var r struct {
				Transitions []Transition `json:"transitions"`
			}
			if err := json.Unmarshal(out.Bytes(), &r); err != nil {
				t.Fatal(err)
			}
			var got []string
			for _, tr := range r.Transitions {
				got = append(got, tr.Patch+"/"+tr.Direction+"/"+tr.Outcome)
			}
			if strings.Join(got, " ") != strings.Join(w.outcomes, " ") {
				t.Errorf("transitions %v, want %v", got, w.outcomes)
			}
			if w.blocker == "" || len(r.Transitions) == 0 {
				return
			}
			tr := r.Transitions[0]
			if !tr.Stall || len(tr.Blockers) == 0 {
				t.Fatalf("first transition not a stall: %+v", tr)
			}
			b := tr.Blockers[0]
			if got := b.Reason + "/" + b.Func + "/" + b.SwitchPath; got != w.blocker || !strings.HasPrefix(b.Comm, "kworker/") {
				t.Errorf("first blocker %s %s, want a kworker %s", b.Comm, got, w.blocker)
			}
			if b.BlockedNs < 2e9 || b.Checks < 2 || !strings.Contains(strings.Join(b.Stack, "\n"), "busymod_work_func+") {
				t.Errorf("blocker blocked %dns, %d checks, stack %q", b.BlockedNs, b.Checks, b.Stack)
			}
		})
	}
	for name := range wants {
		if !seen[name] {
			t.Errorf("no recording %s.jsonl in %s (make testdata)", name, filepath.Dir(recordedGlob))
		}
	}
}
