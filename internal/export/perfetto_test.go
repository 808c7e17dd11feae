package export

import (
	"bytes"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/klptop/klptop/internal/report"
)

type chromeTrace struct {
	TraceEvents []struct {
		Name string         `json:"name"`
		Cat  string         `json:"cat"`
		Ph   string         `json:"ph"`
		Ts   float64        `json:"ts"`
		Dur  float64        `json:"dur"`
		Pid  int            `json:"pid"`
		Tid  int            `json:"tid"`
		S    string         `json:"s"`
		Args map[string]any `json:"args"`
	} `json:"traceEvents"`
}

func export(t *testing.T, name string) (chromeTrace, *Stats, error) {
	t.Helper()
	// The hand-made traces of the report's golden tests.
	f, err := os.Open(filepath.Join("..", "report", "testdata", name))
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	var out bytes.Buffer
	st, err := Perfetto(f, &out)
	var ct chromeTrace
	if jerr := json.Unmarshal(out.Bytes(), &ct); jerr != nil {
		t.Fatalf("output does not parse: %v\n%s", jerr, out.String())
	}
	return ct, st, err
}

func TestPerfettoHandMadeStall(t *testing.T) {
	ct, st, err := export(t, "hand-made-stall.jsonl")
	if err != nil {
		t.Fatal(err)
	}
	if st.Transitions != 2 {
		t.Errorf("transitions %d", st.Transitions)
	}
	var slices_, names []string
	threads := map[[2]int]string{}
	for _, e := range ct.TraceEvents {
		switch e.Ph {
		case "X":
			slices_ = append(slices_, e.Cat+"|"+e.Name)
		case "M":
			if e.Name == "thread_name" || e.Name == "process_name" {
				names = append(names, e.Args["name"].(string))
				threads[[2]int{e.Pid, e.Tid}] = e.Args["name"].(string)
			}
		}
	}
	want := []string{
		"sweep|sweep 1", "sweep|sweep 2", "sweep|sweep 3", "sweep|sweep 4",
		"blocked|sleeping_on_func: busymod_work_func", "blocked|running",
		"transition|livepatch_busy patching: complete",
		"sweep|sweep 1", "transition|livepatch_busy unpatching: complete",
	}
	slices.Sort(want)
	slices.Sort(slices_)
	if !slices.Equal(slices_, want) {
		t.Errorf("slices\n got %q\nwant %q", slices_, want)
	}
	for _, n := range []string{"#1 livepatch_busy patching", "#2 livepatch_busy unpatching", "transition", "kworker/1:2 (pid 57)"} {
		if !slices.Contains(names, n) {
			t.Errorf("no track named %q in %q", n, names)
		}
	}
	for _, e := range ct.TraceEvents {
		if e.Ph != "X" {
			continue
		}
		if threads[[2]int{e.Pid, e.Tid}] == "" {
			t.Errorf("slice %q on an unnamed track %d/%d", e.Name, e.Pid, e.Tid)
		}
		switch e.Name {
		case "livepatch_busy patching: complete":
			// init at +5.0001 s, complete at +8.0011 s, in microseconds.
			if e.Ts != 5000100 || e.Dur != 3001000 || e.Pid != 1 {
				t.Errorf("transition slice %+v", e)
			}
		case "running":
			if e.Ts != 7001020 || e.Dur != 1000000 || threads[[2]int{e.Pid, e.Tid}] != "kworker/1:2 (pid 57)" {
				t.Errorf("blocked slice %+v", e)
			}
		}
	}
}

func TestPerfettoInstantsAndUnfinished(t *testing.T) {
	ct, st, err := export(t, "hand-made-reverse-force-cancel.jsonl")
	if err != nil {
		t.Fatal(err)
	}
	var inst []string
	for _, e := range ct.TraceEvents {
		if e.Ph == "i" {
			inst = append(inst, e.Name)
		}
	}
	if got := strings.Join(inst, ","); got != "cancel,reverse,force,lost 3 events (ring buffer full)" {
		t.Errorf("instants %s", got)
	}
	if st.Lost != 3 {
		t.Errorf("lost %d", st.Lost)
	}

	ct, _, err = export(t, "hand-made-unfinished.jsonl")
	if err != nil {
		t.Fatal(err)
	}
	var open int
	for _, e := range ct.TraceEvents {
		if e.Ph == "X" && e.Args["still_blocked_at_end"] == true {
			open++
		}
		if e.Cat == "transition" && !strings.HasSuffix(e.Name, ": unfinished") {
			t.Errorf("transition slice %q", e.Name)
		}
	}
	if open != 2 {
		t.Errorf("%d open blocked slices, want 2 (the kworker and qemu-ga, failing every sweep)", open)
	}
}

func TestPerfettoCorruptStillValidJSON(t *testing.T) {
	_, _, err := export(t, "hand-made-corrupt.jsonl")
	if err == nil || !strings.Contains(err.Error(), "line 15 (byte ") {
		t.Fatalf("err %v", err)
	}
	_, st, err := export(t, "hand-made-truncated.jsonl")
	if err != nil || !st.Truncated {
		t.Fatalf("truncated: err %v stats %+v", err, st)
	}
}

// Every trace, hand-made or recorded (the repository's testdata/), exports
// to JSON with one transition slice per transition the report lists.
func TestPerfettoEveryTrace(t *testing.T) {
	var paths []string
	for _, pat := range []string{"../report/testdata/*.jsonl", recordedGlob} {
		m, _ := filepath.Glob(pat)
		paths = append(paths, m...)
	}
	for _, path := range paths {
		t.Run(filepath.Base(path), func(t *testing.T) {
			b, err := os.ReadFile(path)
			if err != nil {
				t.Fatal(err)
			}
			var out bytes.Buffer
			_, perr := Perfetto(bytes.NewReader(b), &out)
			var ct chromeTrace
			if err := json.Unmarshal(out.Bytes(), &ct); err != nil {
				t.Fatalf("output does not parse: %v", err)
			}
			var rep bytes.Buffer
			sum, rerr := report.Run(bytes.NewReader(b), &rep, report.Options{JSON: true})
			if (perr == nil) != (rerr == nil) {
				t.Fatalf("export err %v, report err %v", perr, rerr)
			}
			n := 0
			for _, e := range ct.TraceEvents {
				if e.Ph == "X" && e.Cat == "transition" {
					n++
				}
			}
			if n != sum.Transitions {
				t.Errorf("%d transition slices, report lists %d transitions", n, sum.Transitions)
			}
		})
	}
}

// recordedGlob: the recordings of real kernels (make testdata).
const recordedGlob = "../../testdata/linux-*/*.jsonl"

// The recordings of real kernels export with the slices and instants their
// scenario is about.
func TestPerfettoRecorded(t *testing.T) {
	const demo = "test_klp_callbacks_demo"
	const busy = "blocked|sleeping_on_func: busymod_work_func"
	wants := map[string]struct {
		transitions []string // transition slice names, in order
		blocked     string   // a blocked slice that must be there
		instants    string   // transition instants, in order
	}{
		"sample":  {[]string{"livepatch_sample patching: complete", "livepatch_sample unpatching: complete"}, "", ""},
		"stall":   {[]string{demo + " patching: complete", demo + " unpatching: complete"}, busy, ""},
		"reverse": {[]string{demo + " patching: reversed"}, busy, "reverse"},
		"replace": {[]string{"test_klp_livepatch patching: complete", "test_klp_atomic_replace patching: complete",
			"test_klp_atomic_replace unpatching: complete"}, "", ""},
		"force": {[]string{demo + " patching: forced", demo + " unpatching: complete"}, busy, "force"},
	}
	paths, _ := filepath.Glob(recordedGlob)
	if len(paths) == 0 {
		t.Fatal("no recordings in testdata (make testdata)")
	}
	for _, path := range paths {
		w, ok := wants[strings.TrimSuffix(filepath.Base(path), ".jsonl")]
		if !ok {
			continue
		}
		t.Run(filepath.Base(filepath.Dir(path))+"/"+filepath.Base(path), func(t *testing.T) {
			f, err := os.Open(path)
			if err != nil {
				t.Fatal(err)
			}
			defer f.Close()
			var out bytes.Buffer
			st, err := Perfetto(f, &out)
			if err != nil || st.Truncated || st.Lost != 0 {
				t.Fatalf("err %v, stats %+v", err, st)
			}
			var ct chromeTrace
			if err := json.Unmarshal(out.Bytes(), &ct); err != nil {
				t.Fatalf("output does not parse: %v", err)
			}
			var trs, inst []string
			var blocked []string
			sweeps := 0
			for _, e := range ct.TraceEvents {
				switch {
				case e.Ph == "X" && e.Cat == "transition":
					trs = append(trs, e.Name)
				case e.Ph == "X" && e.Cat == "sweep":
					sweeps++
				case e.Ph == "X" && e.Cat == "blocked":
					blocked = append(blocked, e.Cat+"|"+e.Name)
					if e.Dur <= 0 {
						t.Errorf("blocked slice %q of %v us", e.Name, e.Dur)
					}
				case e.Ph == "i" && e.Cat == "transition":
					inst = append(inst, e.Name)
				}
			}
			if !slices.Equal(trs, w.transitions) {
				t.Errorf("transition slices %q, want %q", trs, w.transitions)
			}
			if sweeps < len(w.transitions) {
				t.Errorf("%d sweep slices for %d transitions", sweeps, len(w.transitions))
			}
			if w.blocked != "" && !slices.Contains(blocked, w.blocked) {
				t.Errorf("blocked slices %q, want one %q", blocked, w.blocked)
			}
			if got := strings.Join(inst, ","); got != w.instants {
				t.Errorf("instants %q, want %q", got, w.instants)
			}
		})
	}
}

// The hand-made signals trace: each signal is an instant on the signalled
// task's own track, the one its blocked slices go on.
func TestPerfettoSignals(t *testing.T) {
	ct, _, err := export(t, "hand-made-signals.jsonl")
	if err != nil {
		t.Fatal(err)
	}
	threads := map[[2]int]string{}
	for _, e := range ct.TraceEvents {
		if e.Ph == "M" && e.Name == "thread_name" {
			threads[[2]int{e.Pid, e.Tid}] = e.Args["name"].(string)
		}
	}
	var got []string
	for _, e := range ct.TraceEvents {
		if e.Cat != "signal" {
			continue
		}
		got = append(got, fmt.Sprintf("%s %s @%.0f on %q", e.Ph, e.Name, e.Ts, threads[[2]int{e.Pid, e.Tid}]))
	}
	// The 16th sweep starts 15 s after the first, at +5.001 s.
	want := []string{
		`i signal: wake @20001040 on "kworker/1:2 (pid 57)"`,
		`i signal: fake signal @20001045 on "bash (pid 300)"`,
	}
	if !slices.Equal(got, want) {
		t.Errorf("signal instants\n got %q\nwant %q", got, want)
	}
}
