package trace

import (
	"bytes"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/klptop/klptop/internal/event"
)

// TestRecorded: every recording of a real kernel in the repository's
// testdata/linux-*/ (make testdata) reads to the end with no unknown event
// type, no cut-off line and no lost events, as many events as it has lines
// after the header; and writing what was read gives the same events back.
func TestRecorded(t *testing.T) {
	paths, _ := filepath.Glob("../../testdata/linux-*/*.jsonl")
	if len(paths) == 0 {
		t.Fatal("no recordings in testdata (make testdata)")
	}
	for _, path := range paths {
		t.Run(filepath.Base(filepath.Dir(path))+"/"+filepath.Base(path), func(t *testing.T) {
			b, err := os.ReadFile(path)
			if err != nil {
				t.Fatal(err)
			}
			r, evs, err := readAll(t, bytes.NewReader(b))
			if err != nil {
				t.Fatal(err)
			}
			h := r.Header
			if h.Format != "klptop-trace" || !strings.HasPrefix(h.Version, "1.") || h.Clock != "CLOCK_MONOTONIC" ||
				!strings.HasPrefix(filepath.Base(filepath.Dir(path)), "linux-") ||
				!strings.HasPrefix(h.Kernel, strings.TrimPrefix(filepath.Base(filepath.Dir(path)), "linux-")) ||
				h.StartWall == "" || h.StartMono == 0 || len(h.Attached) == 0 || len(h.Command) == 0 {
				t.Errorf("header %+v", h)
			}
			if r.Truncated || len(r.Unknown) > 0 {
				t.Errorf("truncated %v, unknown types %v", r.Truncated, r.Unknown)
			}
			if lines := bytes.Count(b, []byte("\n")); len(evs) != lines-1 {
				t.Errorf("%d events from %d lines", len(evs), lines)
			}
			types := map[event.Type]int{}
			for _, e := range evs {
				types[e.Type]++
				if e.Type == event.Lost {
					t.Errorf("the recorder lost %d events", e.Count)
				}
				if e.Time < h.StartMono-10e9 {
					t.Errorf("event %v long before the recording began", e)
				}
			}
			for _, want := range []event.Type{event.TaskSnapshot, event.SnapshotEnd, event.TransitionInit,
				event.TransitionStart, event.SweepStart, event.SweepEnd, event.TaskCheck, event.TransitionComplete} {
				if types[want] == 0 {
					t.Errorf("no %s event: %v", want, types)
				}
			}

			// Written again, the events read back the same.
			var out bytes.Buffer
			w, err := NewWriter(&out, h)
			if err != nil {
				t.Fatal(err)
			}
			for _, e := range evs {
				if err := w.Write(e); err != nil {
					t.Fatal(err)
				}
			}
			if err := w.Flush(); err != nil {
				t.Fatal(err)
			}
			_, again, err := readAll(t, &out)
			if err != nil || len(again) != len(evs) {
				t.Fatalf("re-read: %d events, err %v", len(again), err)
			}
			for i := range evs {
				if again[i].Type != evs[i].Type || again[i].Time != evs[i].Time || again[i].PID != evs[i].PID ||
					again[i].Reason != evs[i].Reason || len(again[i].Stack) != len(evs[i].Stack) {
					t.Fatalf("event %d: %+v re-read as %+v", i, evs[i], again[i])
				}
			}
		})
	}
}
