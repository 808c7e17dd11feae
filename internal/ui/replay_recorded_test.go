package ui

import (
	"errors"
	"io"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"

	tea "charm.land/bubbletea/v2"

	"github.com/klptop/klptop/internal/event"
	"github.com/klptop/klptop/internal/trace"
)

// recordedGlob: klptop's recordings of real kernels (make testdata).
const recordedGlob = "../../testdata/linux-*/*.jsonl"

func readRecording(t *testing.T, path string) (trace.Header, []event.Event) {
	t.Helper()
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	r, err := trace.NewReader(f)
	if err != nil {
		t.Fatal(err)
	}
	var evs []event.Event
	for {
		e, err := r.Next()
		if errors.Is(err, io.EOF) {
			return r.Header, evs
		}
		if err != nil {
			t.Fatal(err)
		}
		evs = append(evs, e)
	}
}

// newRecordedReplay opens a recording as `klptop replay` does, in a w x h
// terminal.
func newRecordedReplay(t *testing.T, path string, w, h int, o ReplayOptions) Model {
	t.Helper()
	r, _ := openReplay(t, path, o)
	hd := r.Header()
	m := NewReplay(r, Options{Title: "replay: " + filepath.Base(path) + "  " + hd.Host + " " + hd.Kernel})
	return step(t, m, tea.WindowSizeMsg{Width: w, Height: h})
}

// TestReplayRecorded: each recording replays to its end at max speed, and
// the state it ends in is the state folding the file directly gives.
func TestReplayRecorded(t *testing.T) {
	paths, _ := filepath.Glob(recordedGlob)
	if len(paths) == 0 {
		t.Fatal("no recordings in testdata (make testdata)")
	}
	for _, path := range paths {
		t.Run(filepath.Base(filepath.Dir(path))+"/"+filepath.Base(path), func(t *testing.T) {
			_, evs := readRecording(t, path)
			m := newRecordedReplay(t, path, 120, 40, ReplayOptions{Speed: SpeedMax})
			r := m.replay
			nm, cmd := m.Update(replayTickMsg{gen: r.gen})
			m = drain(t, nm.(Model), cmd)
			if !r.Ended() || r.Pos() != int64(len(evs)) || r.Err() != nil {
				t.Fatalf("ended %v at %d of %d events, err %v", r.Ended(), r.Pos(), len(evs), r.Err())
			}
			want := fold(evs, len(evs))
			if !reflect.DeepEqual(m.State(), want) {
				t.Errorf("state at the end of the replay differs from the fold of the file")
			}
			if want.Transition != nil {
				t.Errorf("a transition still runs at the end: %+v", want.Transition)
			}
			checkScreen(t, m, 120, 40)

			// Back to the start and through every transition with ]: each
			// stop is a transition_init, and the fold up to it.
			m, _ = press(t, m, " ")
			for range 3 {
				m, _ = press(t, m, "[")
			}
			n := 0
			for i, e := range evs {
				if e.Type != event.TransitionInit {
					continue
				}
				m, _ = press(t, m, "]")
				if r.Pos() != int64(i+1) || !reflect.DeepEqual(m.State(), fold(evs, i+1)) {
					t.Fatalf("] %d: at %d, want %d (the transition_init of %s)", n+1, r.Pos(), i+1, e.Patch)
				}
				n++
			}
			if n == 0 {
				t.Error("no transition in the recording")
			}
		})
	}
}

// TestReplayRecordedStallGolden: the stall recording paused at its first
// stall (s) shows the kworker held in busymod_work_func.
func TestReplayRecordedStallGolden(t *testing.T) {
	path := filepath.Join(filepath.Dir(recordedGlob), "..", "linux-6.1", "stall.jsonl")
	path = filepath.Clean(path)
	if _, err := os.Stat(path); err != nil {
		t.Fatal(err)
	}
	m := newRecordedReplay(t, path, 120, 40, ReplayOptions{Paused: true})
	m, _ = press(t, m, "s")
	s := checkScreen(t, m, 120, 40)
	if !strings.Contains(s, "busymod_work_func") || !strings.Contains(s, "kworker/") {
		t.Errorf("first stall does not show the kworker in busymod_work_func:\n%s", s)
	}
	golden(t, "replay_linux-6.1-stall_first_stall_120x40", s)
}
