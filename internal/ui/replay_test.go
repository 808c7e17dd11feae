package ui

import (
	"bytes"
	"os"
	"path/filepath"
	"reflect"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	tea "charm.land/bubbletea/v2"

	"github.com/klptop/klptop/internal/event"
	"github.com/klptop/klptop/internal/state"
	"github.com/klptop/klptop/internal/trace"
)

// handMadeReplayFile is committed so that `klptop replay` can be tried on
// it by hand; TestHandMadeReplayFile keeps it equal to handMadeReplay.
const handMadeReplayFile = "testdata/hand-made-replay.jsonl"

// handMadeReplay: handMadeStall, its end, then a quick unpatch of the same
// patch: two transitions, two stalls (the kworker at sweep 2, the forked
// sleep at sweep 10).
func handMadeReplay() []event.Event {
	evs := handMadeStall()
	end := evs[len(evs)-1].Time
	evs = append(evs, handMadeFinish(end+2*sec)...)
	t := end + 8*sec
	return append(evs,
		event.Event{Time: t, Type: event.TransitionInit, Patch: "test_klp_callbacks_demo", Target: 0},
		event.Event{Time: t, Type: event.TransitionStart},
		event.Event{Time: t + sec, Type: event.SweepStart},
		event.Event{Time: t + sec, Type: event.TaskCheck, PID: 1, TGID: 1, Comm: "systemd", Reason: event.ReasonSwitched},
		event.Event{Time: t + sec, Type: event.TaskCheck, PID: 42, TGID: 42, Comm: "kworker/0:1", Reason: event.ReasonSwitched},
		event.Event{Time: t + sec, Type: event.TaskCheck, PID: 77, TGID: 77, Comm: "sshd", Reason: event.ReasonSwitched},
		event.Event{Time: t + sec, Type: event.TaskCheck, PID: 310, TGID: 310, Comm: "bash", Reason: event.ReasonSwitched},
		event.Event{Time: t + sec, Type: event.TaskCheck, PID: 311, TGID: 311, Comm: "sleep", Reason: event.ReasonSwitched},
		event.Event{Time: t + sec, Type: event.TaskCheck, PID: 0, Comm: "swapper/0", Reason: event.ReasonSwitched},
		event.Event{Time: t + sec + 200_000, Type: event.SweepEnd, Duration: 200_000},
		event.Event{Time: t + sec + 300_000, Type: event.TransitionComplete, Patch: "test_klp_callbacks_demo"},
	)
}

func handMadeHeader() trace.Header {
	h := trace.NewHeader()
	h.Klptop, h.Kernel, h.Host = "0.1.0-handmade", "6.1.0-56-amd64", "handmade"
	h.BootID = "00000000-hand-made-0000-000000000000"
	h.StartWall, h.StartMono = "2025-03-04T03:12:00Z", 1000*sec
	h.Backend = "kprobe-multi"
	h.Attached = []string{"klp_init_transition", "klp_try_complete_transition", "klp_check_and_switch_task", event.SignalProbe}
	h.Missing = []trace.Missing{{Symbol: "klp_force_transition", Why: "not in available_filter_functions (inlined?)"}}
	return h
}

func encodeTrace(t *testing.T, evs []event.Event) []byte {
	t.Helper()
	var b bytes.Buffer
	w, err := trace.NewWriter(&b, handMadeHeader())
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
	return b.Bytes()
}

func TestHandMadeReplayFile(t *testing.T) {
	want := encodeTrace(t, handMadeReplay())
	if *update {
		if err := os.WriteFile(handMadeReplayFile, want, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	got, err := os.ReadFile(handMadeReplayFile)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(got, want) {
		t.Fatalf("%s is stale: go test -update rewrites it", handMadeReplayFile)
	}
}

// replayWall is a wall clock tests move by hand.
type replayWall struct{ t time.Time }

func (w *replayWall) now() time.Time { return w.t }

func openReplay(t *testing.T, path string, o ReplayOptions) (*Replay, *replayWall) {
	t.Helper()
	w := &replayWall{t: time.Unix(1e6, 0)}
	o.Wall = w.now
	r, err := OpenReplay(path, o)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { r.Close() })
	return r, w
}

func newReplayTest(t *testing.T, path string, w, h int, o ReplayOptions) (Model, *replayWall) {
	t.Helper()
	r, wall := openReplay(t, path, o)
	opts := Options{Title: "replay: hand-made-replay.jsonl  handmade 6.1.0-56-amd64"}
	m := NewReplay(r, opts)
	return step(t, m, tea.WindowSizeMsg{Width: w, Height: h}), wall
}

func writeTrace(t *testing.T, b []byte) string {
	t.Helper()
	p := filepath.Join(t.TempDir(), "hand-made.jsonl")
	if err := os.WriteFile(p, b, 0o644); err != nil {
		t.Fatal(err)
	}
	return p
}

// fold is the state after the first n events, folded directly.
func fold(evs []event.Event, n int) *state.State {
	s := state.New()
	for _, e := range evs[:n] {
		s.Apply(e)
	}
	return s
}

func TestReplayGoldenHandMade(t *testing.T) {
	paused := ReplayOptions{Paused: true}
	tests := []struct {
		name string
		w, h int
		keys []string
	}{
		{name: "replay_start_80x24", w: 80, h: 24},
		{name: "replay_transition_120x40", w: 120, h: 40, keys: []string{"]"}},
		{name: "replay_stall_120x40", w: 120, h: 40, keys: []string{"s", "s"}},
		{name: "replay_stall_80x24", w: 80, h: 24, keys: []string{"s", "n", "n"}},
		{name: "replay_second_transition_120x40", w: 120, h: 40, keys: []string{"]", "]", "n", "n"}},
		{name: "replay_end_120x40", w: 120, h: 40, keys: []string{"3", " "}},
		{name: "replay_help_120x50", w: 120, h: 50, keys: []string{"?"}},
		{name: "replay_stack_120x40", w: 120, h: 40, keys: []string{"s", "enter", "n"}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			m, _ := newReplayTest(t, handMadeReplayFile, tc.w, tc.h, paused)
			for _, k := range tc.keys {
				var cmd tea.Cmd
				m, cmd = press(t, m, k)
				m = drain(t, m, cmd)
			}
			golden(t, tc.name, checkScreen(t, m, tc.w, tc.h))
		})
	}
}

// drain runs the replay's immediate follow-up messages (max speed) until it
// waits for the wall clock or stops.
func drain(t *testing.T, m Model, cmd tea.Cmd) Model {
	t.Helper()
	for range 1000 {
		if cmd == nil || m.replay.speed != SpeedMax {
			return m
		}
		msg, ok := cmd().(replayTickMsg)
		if !ok {
			return m
		}
		nm, c := m.Update(msg)
		m, cmd = nm.(Model), c
	}
	t.Fatal("replay did not stop")
	return m
}

func TestReplayKeysHandMade(t *testing.T) {
	evs := handMadeReplay()
	m, _ := newReplayTest(t, handMadeReplayFile, 120, 40, ReplayOptions{})
	r := m.replay
	if r.Paused() || r.Total() != int64(len(evs)) || r.Pos() != 0 {
		t.Fatalf("paused %v, total %d, pos %d", r.Paused(), r.Total(), r.Pos())
	}
	if m.Init() == nil {
		t.Fatal("a playing replay schedules nothing")
	}

	m, _ = press(t, m, " ")
	if !r.Paused() {
		t.Fatal("space did not pause")
	}
	m, cmd := press(t, m, " ")
	if r.Paused() || cmd == nil {
		t.Fatal("space did not resume")
	}
	m, _ = press(t, m, " ")

	// Each step applies exactly one event, n and . alike, and pauses.
	m, _ = press(t, m, " ")
	for i, k := range []string{"n", ".", "n", "n", "."} {
		m, _ = press(t, m, k)
		if !r.Paused() || r.Pos() != int64(i+1) || !reflect.DeepEqual(r.Last(), evs[i]) {
			t.Fatalf("after %d steps: pos %d, paused %v, last %v", i+1, r.Pos(), r.Paused(), r.Last())
		}
		if !reflect.DeepEqual(m.State(), fold(evs, i+1)) {
			t.Fatalf("state after %d steps differs from the fold of %d events", i+1, i+1)
		}
	}

	var inits []int
	for i, e := range evs {
		if e.Type == event.TransitionInit {
			inits = append(inits, i+1)
		}
	}
	if len(inits) != 2 {
		t.Fatalf("want 2 transitions in the hand-made trace, got %d", len(inits))
	}
	at := func(what string, pos int) {
		t.Helper()
		if r.Pos() != int64(pos) || !r.Paused() {
			t.Fatalf("%s: pos %d paused %v, want %d paused", what, r.Pos(), r.Paused(), pos)
		}
		if !reflect.DeepEqual(m.State(), fold(evs, pos)) {
			t.Fatalf("%s: state differs from the fold of %d events", what, pos)
		}
	}
	m, _ = press(t, m, "]")
	at("] from the start", inits[0])
	if r.Last().Type != event.TransitionInit || m.State().Transition == nil {
		t.Fatal("] did not land on a transition_init")
	}
	m, _ = press(t, m, "]")
	at("] again", inits[1])
	m, _ = press(t, m, "]")
	at("] past the last", inits[1])
	if !strings.Contains(screen(m), "no later transition") {
		t.Error("no note at the last transition")
	}
	m, _ = press(t, m, "n")
	m, _ = press(t, m, "n")
	m, _ = press(t, m, "[")
	at("[ inside the second", inits[1])
	m, _ = press(t, m, "[")
	at("[ at the second", inits[0])
	m, _ = press(t, m, "[")
	at("[ at the first", 0)

	// Stalls: bash and the kworker in sweep 2, then the forked sleep in sweep 10.
	m, _ = press(t, m, "s")
	if e := r.Last(); e.Type != event.TaskCheck || e.PID != 310 || m.State().Transition.Sweeps != 2 {
		t.Fatalf("first stall at %v, sweep %d", e, m.State().Transition.Sweeps)
	}
	m, _ = press(t, m, "s")
	if e := r.Last(); e.Type != event.TaskCheck || e.PID != 42 || m.State().Transition.Sweeps != 2 {
		t.Fatalf("kworker stall at %v, sweep %d", e, m.State().Transition.Sweeps)
	}
	m, _ = press(t, m, "s")
	if e := r.Last(); e.Type != event.TaskCheck || e.PID != 311 || m.State().Transition.Sweeps != 10 {
		t.Fatalf("second stall at %v, sweep %d", e, m.State().Transition.Sweeps)
	}
	pos := r.Pos()
	m, _ = press(t, m, "s")
	if r.Pos() != pos || !strings.Contains(screen(m), "no later stall") {
		t.Fatal("s past the last stall moved")
	}

	// Speeds.
	for _, c := range []struct {
		k    string
		want Speed
	}{{"+", Speed10x}, {"+", SpeedMax}, {"+", SpeedMax}, {"-", Speed10x}, {"-", Speed1x}, {"-", Speed1x},
		{"3", SpeedMax}, {"2", Speed10x}, {"1", Speed1x}} {
		m, _ = press(t, m, c.k)
		if r.Speed() != c.want {
			t.Fatalf("%s: speed %v, want %v", c.k, r.Speed(), c.want)
		}
	}
	if !strings.Contains(screen(m), "1x") {
		t.Error("speed not shown")
	}

	// Keys of the live view still work, and q quits.
	m, _ = press(t, m, "?")
	if m.view != viewHelp || !strings.Contains(screen(m), "the first failed check") {
		t.Fatal("help does not explain stalls")
	}
	m, _ = press(t, m, "n")
	if r.Pos() != pos {
		t.Fatal("n stepped under help")
	}
	m, _ = press(t, m, "esc")
	if _, cmd := press(t, m, "q"); cmd == nil || cmd() != tea.Quit() {
		t.Error("q does not quit")
	}
}

// TestReplayPacingHandMade: 1x follows the wall clock on event time, 10x
// ten times as fast, max in bounded batches; stale ticks do nothing.
func TestReplayPacingHandMade(t *testing.T) {
	evs := handMadeReplay()
	dueBy := func(t uint64) int64 {
		n := int64(0)
		for _, e := range evs {
			if e.Time <= t {
				n++
			}
		}
		return n
	}
	m, wall := newReplayTest(t, handMadeReplayFile, 120, 40, ReplayOptions{})
	r := m.replay
	start := evs[0].Time
	tick := func() {
		t.Helper()
		m = step(t, m, replayTickMsg{gen: r.gen})
	}
	tick()
	if r.Pos() != dueBy(start) {
		t.Fatalf("at the start: pos %d, want the snapshot (%d)", r.Pos(), dueBy(start))
	}
	wall.t = wall.t.Add(500 * time.Millisecond)
	tick()
	if r.Pos() != dueBy(start) || r.playhead != start+sec/2 {
		t.Fatalf("after 0.5 s: pos %d playhead %d", r.Pos(), r.playhead-start)
	}
	if s := screen(m); !strings.Contains(s, "0.500s / ") {
		t.Fatalf("position not shown:\n%s", s)
	}
	wall.t = wall.t.Add(600 * time.Millisecond)
	tick()
	if want := dueBy(start + 1100*uint64(time.Millisecond)); r.Pos() != want {
		t.Fatalf("after 1.1 s: pos %d, want %d", r.Pos(), want)
	}
	// A tick from before a pause is ignored.
	old := r.gen
	m, _ = press(t, m, "2")
	pos := r.Pos()
	wall.t = wall.t.Add(time.Second)
	m = step(t, m, replayTickMsg{gen: old})
	if r.Pos() != pos {
		t.Fatal("a stale tick played")
	}
	tick()
	if want := dueBy(start + 11100*uint64(time.Millisecond)); r.Pos() != want {
		t.Fatalf("10x for 1 s: pos %d, want %d", r.Pos(), want)
	}
	m, cmd := press(t, m, "3")
	m = drain(t, m, cmd)
	if !r.Ended() || r.Pos() != int64(len(evs)) || !strings.Contains(screen(m), "end of recording") {
		t.Fatalf("max did not play to the end: pos %d", r.Pos())
	}
	if !reflect.DeepEqual(m.State(), fold(evs, len(evs))) {
		t.Fatal("final state differs from the fold")
	}
	// Space at the end plays again from the start.
	m, _ = press(t, m, " ")
	if r.Ended() || r.Paused() || r.Pos() != 0 {
		t.Fatalf("space at the end: pos %d ended %v", r.Pos(), r.Ended())
	}
}

// TestReplayBudgetHandMade: at max speed one message folds at most
// replayBudget events, so that keys get through.
func TestReplayBudgetHandMade(t *testing.T) {
	evs := make([]event.Event, 0, replayBudget+10)
	for i := range replayBudget + 10 {
		evs = append(evs, event.Event{Time: 1000*sec + uint64(i), Type: event.SweepStart})
	}
	r, _ := openReplay(t, writeTrace(t, encodeTrace(t, evs)), ReplayOptions{Speed: SpeedMax})
	if !r.advance(time.Time{}) || r.Pos() != replayBudget {
		t.Fatalf("first batch: pos %d", r.Pos())
	}
	if r.advance(time.Time{}) || !r.Ended() {
		t.Fatalf("second batch: pos %d ended %v", r.Pos(), r.Ended())
	}
}

func TestReplayCorruptHandMade(t *testing.T) {
	good := encodeTrace(t, handMadeReplay())
	lines := bytes.SplitAfter(good, []byte("\n"))
	off := 0
	for _, l := range lines[:10] {
		off += len(l)
	}
	bad := bytes.Join(slices.Concat(lines[:10], [][]byte{[]byte("{\"t\":1,\"type\":\n")}, lines[10:]), nil)
	_, err := OpenReplay(writeTrace(t, bad), ReplayOptions{})
	if err == nil || !strings.Contains(err.Error(), "line 11 (byte "+strconv.Itoa(off)+")") || strings.Contains(err.Error(), "\n") {
		t.Fatalf("want a one-line error at line 11, byte %d; got %v", off, err)
	}

	// Corruption met while playing: the file changed after the first pass.
	p := writeTrace(t, good)
	m, _ := newReplayTest(t, p, 120, 40, ReplayOptions{Paused: true})
	if err := os.WriteFile(p, bad, 0o644); err != nil {
		t.Fatal(err)
	}
	// The first read-ahead holds the old content: going back re-reads.
	m, _ = press(t, m, "n")
	m, _ = press(t, m, "[")
	m, _ = press(t, m, "3")
	m, cmd := press(t, m, " ")
	m = drain(t, m, cmd)
	r := m.replay
	if r.Err() == nil || r.Pos() != 9 {
		t.Fatalf("pos %d, err %v", r.Pos(), r.Err())
	}
	s := checkScreen(t, m, 120, 40)
	if !strings.Contains(s, "corrupt trace: line 11 (byte "+strconv.Itoa(off)+")") || !strings.Contains(s, "✗ stopped") {
		t.Fatalf("corruption not shown:\n%s", s)
	}
	golden(t, "replay_corrupt_120x40", s)
	if _, cmd := press(t, m, "q"); cmd == nil || cmd() != tea.Quit() {
		t.Error("q does not quit")
	}
}

func TestReplayTruncatedHandMade(t *testing.T) {
	b := encodeTrace(t, handMadeReplay())
	b = append(b, []byte(`{"t":1099000000000,"type":"sweep_st`)...)
	m, _ := newReplayTest(t, writeTrace(t, b), 80, 24, ReplayOptions{Speed: SpeedMax})
	m = drain(t, m, m.Init())
	m = drain(t, m, m.replay.schedule())
	s := checkScreen(t, m, 80, 24)
	if !m.replay.Ended() || m.replay.Err() != nil || !strings.Contains(s, "cut short") {
		t.Fatalf("truncated trace: ended %v err %v\n%s", m.replay.Ended(), m.replay.Err(), s)
	}
	golden(t, "replay_truncated_80x24", s)
}

func TestReplayResizeHandMade(t *testing.T) {
	sizes := [][2]int{{80, 24}, {200, 50}, {20, 5}, {1, 1}, {40, 10}, {120, 40}}
	for _, keys := range [][]string{nil, {"s"}, {"s", "enter"}, {"?"}} {
		m, _ := newReplayTest(t, handMadeReplayFile, 80, 24, ReplayOptions{Paused: true})
		for _, k := range keys {
			m, _ = press(t, m, k)
		}
		for _, sz := range sizes {
			m = step(t, m, tea.WindowSizeMsg{Width: sz[0], Height: sz[1]})
			checkScreen(t, m, sz[0], sz[1])
		}
	}
}

func TestParseSpeed(t *testing.T) {
	for in, want := range map[string]Speed{"1": Speed1x, "1x": Speed1x, "10": Speed10x, "10x": Speed10x, "max": SpeedMax, "MAX": SpeedMax} {
		if got, err := ParseSpeed(in); err != nil || got != want {
			t.Errorf("%q: %v %v", in, got, err)
		}
	}
	if _, err := ParseSpeed("2"); err == nil {
		t.Error("2 accepted")
	}
}

// BenchmarkReplaySeekBack: going back re-reads and re-folds from the start;
// it must stay well under a second for a recording of a long stall.
func BenchmarkReplaySeekBack(b *testing.B) {
	const tasks, sweeps = 1000, 100
	evs := []event.Event{{Time: 1000 * sec, Type: event.TransitionInit, Patch: "p", Target: 1}}
	for s := range sweeps {
		ts := 1001*sec + uint64(s)*sec
		evs = append(evs, event.Event{Time: ts, Type: event.SweepStart})
		for pid := range tasks {
			evs = append(evs, event.Event{Time: ts, Type: event.TaskCheck, PID: pid + 1, Comm: "t",
				Reason: event.ReasonSleeping, Ret: -98, Func: "f"})
		}
		evs = append(evs, event.Event{Time: ts + 1000, Type: event.SweepEnd, Pending: tasks})
	}
	var buf bytes.Buffer
	w, _ := trace.NewWriter(&buf, handMadeHeader())
	for _, e := range evs {
		w.Write(e)
	}
	w.Flush()
	p := filepath.Join(b.TempDir(), "hand-made-bench.jsonl")
	if err := os.WriteFile(p, buf.Bytes(), 0o644); err != nil {
		b.Fatal(err)
	}
	r, err := OpenReplay(p, ReplayOptions{Paused: true})
	if err != nil {
		b.Fatal(err)
	}
	defer r.Close()
	b.ReportMetric(float64(len(evs)), "events")
	b.ResetTimer()
	for range b.N {
		r.seek(int64(len(evs)))
		r.PrevTransition()
	}
	b.ReportMetric(float64(len(evs))*float64(b.N)/b.Elapsed().Seconds(), "events/s")
}
