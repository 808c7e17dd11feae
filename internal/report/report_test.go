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

// goldenTraces are the traces with golden reports: hand-made ones here, and
// recordings of real kernels in the repository's testdata/ (dropping a
// .jsonl there and running `go test ./internal/report -update` adds one).
func goldenTraces(t *testing.T) []string {
	var out []string
	for _, pat := range []string{"testdata/*.jsonl", "../../testdata/*.jsonl"} {
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
		name := strings.TrimSuffix(filepath.Base(path), ".jsonl")
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
	// switched it (13.00102 s); the last failed check said "running".
	if b.PID != 57 || b.Checks != 3 || b.BlockedNs != 13001020000-10000100000 || b.Reason != "running" ||
		b.Switched == nil || b.SwitchPath != "sweep" || len(b.Stack) != 5 {
		t.Fatalf("blocker %+v", b)
	}
	if b.FirstCheck.Wall != "2025-03-04T03:12:05.00102Z" || b.FirstCheck.Offset != 5.00102 {
		t.Fatalf("first check %+v", b.FirstCheck)
	}
	if r.Transitions[1].Stall || len(r.Transitions[1].Blockers) != 0 {
		t.Fatalf("single-sweep transition reported as a stall: %+v", r.Transitions[1])
	}
}
