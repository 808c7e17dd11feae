package ui

import (
	"flag"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	tea "charm.land/bubbletea/v2"
	"github.com/charmbracelet/x/ansi"

	"github.com/klptop/klptop/internal/event"
)

var update = flag.Bool("update", false, "rewrite the golden files in testdata/")

var testOpts = Options{
	Title: "live: guest 6.1.0-56-amd64",
	Notes: []string{"not observable here: klp_force_transition"},
}

// newTest builds a model at the given size, fed the events, its clock fixed
// at now so that renders are reproducible.
func newTest(t *testing.T, w, h int, now uint64, evs []event.Event) Model {
	t.Helper()
	opts := testOpts
	opts.Clock = FixedClock(now)
	m := New(nil, opts)
	m = step(t, m, tea.WindowSizeMsg{Width: w, Height: h})
	return step(t, m, eventsMsg{events: evs})
}

func step(t *testing.T, m Model, msg tea.Msg) Model {
	t.Helper()
	nm, _ := m.Update(msg)
	return nm.(Model)
}

func press(t *testing.T, m Model, k string) (Model, tea.Cmd) {
	t.Helper()
	var msg tea.KeyPressMsg
	switch k {
	case "enter":
		msg = tea.KeyPressMsg{Code: tea.KeyEnter}
	case "esc":
		msg = tea.KeyPressMsg{Code: tea.KeyEscape}
	case "down":
		msg = tea.KeyPressMsg{Code: tea.KeyDown}
	case "ctrl+c":
		msg = tea.KeyPressMsg{Code: 'c', Mod: tea.ModCtrl}
	default:
		msg = tea.KeyPressMsg{Code: rune(k[0]), Text: k}
	}
	nm, cmd := m.Update(msg)
	return nm.(Model), cmd
}

// screen is the render as plain text, trailing blanks trimmed so that golden
// diffs show content only.
func screen(m Model) string {
	lines := strings.Split(ansi.Strip(m.View().Content), "\n")
	for i, l := range lines {
		lines[i] = strings.TrimRight(l, " ")
	}
	return strings.Join(lines, "\n")
}

// checkScreen fails on a render that does not fill exactly w x h cells.
func checkScreen(t *testing.T, m Model, w, h int) string {
	t.Helper()
	s := screen(m)
	lines := strings.Split(s, "\n")
	if len(lines) > h {
		t.Errorf("%d lines on a %d-line terminal", len(lines), h)
	}
	for i, l := range lines {
		if lw := ansi.StringWidth(l); lw > w {
			t.Errorf("line %d is %d wide on a %d-column terminal: %q", i, lw, w, l)
		}
	}
	return s
}

func golden(t *testing.T, name, got string) {
	t.Helper()
	path := filepath.Join("testdata", name+".golden")
	if *update {
		if err := os.MkdirAll("testdata", 0o755); err != nil {
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
		t.Errorf("%s differs from the render (go test -update rewrites it):\n--- want\n%s\n--- got\n%s", path, want, got)
	}
}

func TestGoldenHandMade(t *testing.T) {
	stall := handMadeStall()
	end := stall[len(stall)-1].Time
	tests := []struct {
		name   string
		w, h   int
		now    uint64
		events []event.Event
		keys   []string
		closed bool
	}{
		{name: "empty", w: 80, h: 24},
		{name: "stall_120x40", w: 120, h: 40, now: end + sec/2, events: stall},
		{name: "stall_80x24", w: 80, h: 24, now: end + sec/2, events: stall},
		{name: "stall_200x50", w: 200, h: 50, now: end + sec/2, events: stall},
		{name: "stack_120x40", w: 120, h: 40, now: end + sec/2, events: stall, keys: []string{"enter"}},
		{name: "help_120x40", w: 120, h: 40, now: end, events: stall, keys: []string{"?"}},
		{name: "attached_reversed_80x24", w: 80, h: 24, now: 70 * sec, events: handMadeAttached()},
		{name: "complete_closed_120x40", w: 120, h: 40, now: end + 5*sec,
			events: append(stall, handMadeFinish(end+2*sec)...), closed: true},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			m := newTest(t, tc.w, tc.h, tc.now, tc.events)
			if tc.closed {
				m = step(t, m, eventsMsg{closed: true})
			}
			for _, k := range tc.keys {
				m, _ = press(t, m, k)
			}
			golden(t, tc.name, checkScreen(t, m, tc.w, tc.h))
		})
	}
}

func TestKeysHandMade(t *testing.T) {
	stall := handMadeStall()
	m := newTest(t, 120, 40, stall[len(stall)-1].Time, stall)

	if _, cmd := press(t, m, "q"); cmd == nil || cmd() != tea.Quit() {
		t.Error("q does not quit")
	}
	if _, cmd := press(t, m, "ctrl+c"); cmd == nil || cmd() != tea.Quit() {
		t.Error("ctrl+c does not quit")
	}

	m, _ = press(t, m, "enter")
	if m.view != viewStack || !strings.Contains(screen(m), "busymod_work_func+0x2b/0x40") {
		t.Fatalf("enter did not open the stack of the longest-pending task:\n%s", screen(m))
	}
	m, _ = press(t, m, "esc")
	if m.view != viewMain {
		t.Fatal("esc did not go back")
	}

	// The selection follows the task, and Enter opens the second one.
	m, _ = press(t, m, "down")
	m, _ = press(t, m, "enter")
	if s := screen(m); !strings.Contains(s, "pid 311") {
		t.Fatalf("second row's stack not shown:\n%s", s)
	}
	m, _ = press(t, m, "esc")

	m, _ = press(t, m, "?")
	if m.view != viewHelp || !strings.Contains(screen(m), "READING THE SCREEN") {
		t.Fatal("? did not open help")
	}
	m, _ = press(t, m, "?")
	if m.view != viewMain {
		t.Fatal("? did not close help")
	}
	if _, cmd := press(t, m, "q"); cmd == nil || cmd() != tea.Quit() {
		t.Error("q does not quit after help")
	}

	// Enter with nothing pending stays on the main view.
	idle := newTest(t, 80, 24, 0, nil)
	if idle, _ = press(t, idle, "enter"); idle.view != viewMain {
		t.Error("enter with no task left the main view")
	}
}

// TestTimeAdvancesHandMade: ticks with a live clock advance the elapsed time
// although no event arrives.
func TestTimeAdvancesHandMade(t *testing.T) {
	wall := time.Unix(0, 0)
	opts := testOpts
	opts.Clock = LiveClock(func() time.Time { return wall })
	m := New(nil, opts)
	m = step(t, m, tea.WindowSizeMsg{Width: 120, Height: 40})
	m = step(t, m, eventsMsg{events: []event.Event{
		{Time: 5 * sec, Type: event.TaskSnapshot, PID: 9, Comm: "x", PatchState: -1},
		{Time: 5 * sec, Type: event.TransitionInit, Patch: "p", Target: 1},
	}})
	if s := screen(m); !strings.Contains(s, "elapsed 0µs") {
		t.Fatalf("want elapsed 0µs:\n%s", s)
	}
	wall = wall.Add(42 * time.Second)
	m = step(t, m, tickMsg{})
	if s := screen(m); !strings.Contains(s, "elapsed 42s") || !strings.Contains(s, "42s") {
		t.Fatalf("want elapsed 42s after 42 s of wall time:\n%s", s)
	}
	// Once the stream ends the clock stops.
	m = step(t, m, eventsMsg{closed: true})
	wall = wall.Add(time.Hour)
	m = step(t, m, tickMsg{})
	if s := screen(m); !strings.Contains(s, "elapsed 42s") || !strings.Contains(s, "event stream ended") {
		t.Fatalf("clock did not stop at the end of the stream:\n%s", s)
	}
}

// TestResizeHandMade: every view at small, usual and large sizes, and sizes
// changing under it, never draws past the terminal.
func TestResizeHandMade(t *testing.T) {
	stall := handMadeStall()
	sizes := [][2]int{{80, 24}, {200, 50}, {120, 40}, {20, 5}, {1, 1}, {40, 10}, {80, 24}}
	for _, keys := range [][]string{nil, {"enter"}, {"?"}} {
		m := newTest(t, 80, 24, stall[len(stall)-1].Time, stall)
		for _, k := range keys {
			m, _ = press(t, m, k)
		}
		for _, sz := range sizes {
			m = step(t, m, tea.WindowSizeMsg{Width: sz[0], Height: sz[1]})
			checkScreen(t, m, sz[0], sz[1])
		}
	}
}

// TestWaitEventsHandMade: the channel reader batches queued events and
// reports the close.
func TestWaitEventsHandMade(t *testing.T) {
	ch := make(chan event.Event, 10)
	for i := range 3 {
		ch <- event.Event{Time: uint64(i), Type: event.Lost, Count: 1}
	}
	close(ch)
	msg := waitEvents(ch)().(eventsMsg)
	if len(msg.events) != 3 || !msg.closed {
		t.Fatalf("got %d events, closed=%v", len(msg.events), msg.closed)
	}
	if waitEvents(nil) != nil {
		t.Fatal("nil channel should not be waited on")
	}
}
