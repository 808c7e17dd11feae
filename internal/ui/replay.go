package ui

import (
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"strings"
	"time"

	"github.com/klptop/klptop/internal/event"
	"github.com/klptop/klptop/internal/state"
	"github.com/klptop/klptop/internal/trace"
)

// Speed is how fast a replay plays: a multiple of event time, or SpeedMax.
type Speed int

const (
	SpeedMax Speed = -1 // as fast as the recording reads
	Speed1x  Speed = 1  // the zero Speed means this too
	Speed10x Speed = 10
)

var speeds = []Speed{Speed1x, Speed10x, SpeedMax}

func (s Speed) String() string {
	if s == SpeedMax {
		return "max"
	}
	return fmt.Sprintf("%dx", int(s))
}

// ParseSpeed reads --speed: 1, 10 or max ("1x" and "10x" too).
func ParseSpeed(v string) (Speed, error) {
	switch strings.ToLower(strings.TrimSpace(v)) {
	case "1", "1x":
		return Speed1x, nil
	case "10", "10x":
		return Speed10x, nil
	case "max":
		return SpeedMax, nil
	}
	return 0, fmt.Errorf("speed %q: want 1, 10 or max", v)
}

// ReplayOptions say how a replay starts.
type ReplayOptions struct {
	Speed  Speed
	Paused bool
	// Wall is the wall clock pacing 1x and 10x; time.Now unless a test
	// injects another.
	Wall func() time.Time
}

// replayBudget bounds the events one message folds, so that keys stay
// responsive at max speed (the fold does about 1 M events/s).
const replayBudget = 20000

// replayFrame is how often a paced replay advances: smooth enough for the
// elapsed counters, cheap enough not to matter.
const replayFrame = 50 * time.Millisecond

// mark is a place in the recording: n events applied, the last at time t.
type mark struct {
	n int64
	t uint64
}

// Replay feeds a recording into the same state fold the live view uses, at
// a chosen pace. It reads the file as a stream: seeking back re-reads it
// from the start, since the state at any point is the fold of everything
// before it; only the places seeks can land on are kept in memory.
type Replay struct {
	path string
	f    *os.File
	rd   *trace.Reader
	hdr  trace.Header

	st       *state.State
	n        int64        // events applied
	last     event.Event  // the event applied last
	peek     *event.Event // read ahead to know when it is due, not applied
	playhead uint64       // event time the replay has reached

	// From the first pass over the file.
	total       int64
	start, end  uint64
	transitions []mark // transition_init events
	stalls      []mark // see indexStalls
	truncated   bool
	unknown     map[event.Type]int

	paused   bool
	speed    Speed
	ended    bool  // every event applied
	err      error // corruption met while playing
	note     string
	gen      int // bumped when pacing restarts, so stale ticks are dropped
	lastWall time.Time
	wall     func() time.Time
}

// OpenReplay reads the recording once to check it and to index it (its
// length, transitions and stalls), then opens it for playing. A corrupt
// trace is an error naming the line and byte offset.
func OpenReplay(path string, o ReplayOptions) (*Replay, error) {
	r := &Replay{path: path, speed: o.Speed, paused: o.Paused, wall: o.Wall}
	if r.wall == nil {
		r.wall = time.Now
	}
	if !validSpeed(r.speed) {
		r.speed = Speed1x
	}
	if err := r.index(); err != nil {
		if errors.As(err, new(*fs.PathError)) {
			return nil, err // names the path already
		}
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	r.f = f
	if err := r.rewind(); err != nil {
		f.Close()
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	r.lastWall = r.wall()
	return r, nil
}

func validSpeed(s Speed) bool {
	return s == Speed1x || s == Speed10x || s == SpeedMax
}

// Close closes the recording.
func (r *Replay) Close() error {
	if r.f == nil {
		return nil
	}
	return r.f.Close()
}

// Header is the recording's header line.
func (r *Replay) Header() trace.Header { return r.hdr }

// Err is the corruption met while playing, if any: the file changed since
// it was opened.
func (r *Replay) Err() error {
	if r.err == nil {
		return nil
	}
	return fmt.Errorf("%s: %w", r.path, r.err)
}

// State is the fold of the events applied so far.
func (r *Replay) State() *state.State { return r.st }

// Pos is the number of events applied.
func (r *Replay) Pos() int64 { return r.n }

// Total is the number of events in the recording.
func (r *Replay) Total() int64 { return max(r.total, r.n) }

// Paused reports whether playback is paused.
func (r *Replay) Paused() bool { return r.paused }

// Speed is the playback speed.
func (r *Replay) Speed() Speed { return r.speed }

// Ended reports whether every event has been applied.
func (r *Replay) Ended() bool { return r.ended }

// Last is the event applied last.
func (r *Replay) Last() event.Event { return r.last }

// failed reports whether a task_check says the task did not switch, as
// state.State reads it.
func failed(e event.Event) bool {
	return e.Type == event.TaskCheck && e.Reason != event.ReasonSwitched && (e.Reason != "" || e.Ret != 0)
}

func (r *Replay) index() error {
	f, err := os.Open(r.path)
	if err != nil {
		return err
	}
	defer f.Close()
	rd, err := trace.NewReader(f)
	if err != nil {
		return err
	}
	r.hdr = rd.Header
	// A stall is the first failed check of a task in the second or later
	// sweep of a transition: one sweep failing is routine (a task was
	// running), a retry that still fails is what keeps a transition from
	// finishing. Sweeps count from the transition's start or its last
	// reverse, since a reverse has blockers of its own; each task stalls
	// once per direction, so that "next stall" moves to a new blocker rather
	// than to the same one a second later.
	sweeps := 0
	stalled := map[int]bool{}
	first := true
	for {
		e, err := rd.Next()
		if err == io.EOF {
			break
		}
		if err != nil {
			return err
		}
		r.total++
		if first {
			r.start, first = e.Time, false
			if h := r.hdr.StartMono; h != 0 && h < r.start {
				r.start = h
			}
		}
		r.end = max(r.end, e.Time)
		switch e.Type {
		case event.TransitionInit:
			r.transitions = append(r.transitions, mark{r.total, e.Time})
			sweeps = 0
			clear(stalled)
		case event.TransitionReverse, event.TransitionComplete, event.TransitionCancel, event.TransitionForce:
			sweeps = 0
			clear(stalled)
		case event.SweepStart:
			sweeps++
		case event.TaskCheck:
			if k := state.Key(e); failed(e) && sweeps >= 2 && !stalled[k] {
				stalled[k] = true
				r.stalls = append(r.stalls, mark{r.total, e.Time})
			}
		}
	}
	r.truncated = rd.Truncated
	r.unknown = rd.Unknown
	r.end = max(r.end, r.start)
	return nil
}

// rewind starts over from an empty state at the head of the file.
func (r *Replay) rewind() error {
	if _, err := r.f.Seek(0, io.SeekStart); err != nil {
		return err
	}
	rd, err := trace.NewReader(r.f)
	if err != nil {
		return err
	}
	r.rd = rd
	r.st = state.New()
	r.n, r.last, r.peek = 0, event.Event{}, nil
	r.playhead = r.start
	r.ended, r.err = false, nil
	r.lookAhead()
	return nil
}

// lookAhead reads the next event into peek, noting the end or corruption
// as soon as the last good event is applied.
func (r *Replay) lookAhead() {
	if r.peek != nil || r.ended || r.err != nil {
		return
	}
	e, err := r.rd.Next()
	switch {
	case err == io.EOF:
		r.ended = true
		if r.rd.Truncated {
			r.truncated = true
		}
	case err != nil:
		r.err = err
		r.paused = true
	default:
		r.peek = &e
	}
}

// step applies the next event; false at the end or on corruption.
func (r *Replay) step() bool {
	r.lookAhead()
	if r.peek == nil {
		return false
	}
	e := *r.peek
	r.peek = nil
	r.st.Apply(e)
	r.n++
	r.last = e
	r.playhead = max(r.playhead, e.Time)
	r.lookAhead()
	return true
}

// seek moves to n events applied, re-reading from the start to go back.
func (r *Replay) seek(n int64) {
	if n < r.n {
		if err := r.rewind(); err != nil {
			r.err = err
			return
		}
	}
	for r.n < n && r.step() {
	}
}

func (r *Replay) pause() {
	r.paused = true
	r.gen++
}

// resume restarts pacing from now; at the end it plays from the start.
func (r *Replay) resume() {
	if r.err != nil {
		return
	}
	if r.ended {
		if err := r.rewind(); err != nil {
			r.err = err
			return
		}
	}
	r.paused = false
	r.gen++
	r.lastWall = r.wall()
}

// Step pauses and applies exactly one event.
func (r *Replay) Step() {
	r.pause()
	if !r.step() && r.err == nil {
		r.note = "end of recording"
	}
}

// NextTransition pauses and moves to just after the next transition_init.
func (r *Replay) NextTransition() {
	r.pause()
	for _, m := range r.transitions {
		if m.n > r.n {
			r.seek(m.n)
			return
		}
	}
	r.note = "no later transition"
}

// PrevTransition pauses and moves to just after the transition_init before
// the current position: the start of the transition under way, or of the
// one before if already there. Before the first, it goes to the start.
func (r *Replay) PrevTransition() {
	r.pause()
	for i := len(r.transitions) - 1; i >= 0; i-- {
		if m := r.transitions[i]; m.n < r.n {
			r.seek(m.n)
			return
		}
	}
	r.seek(0)
	r.note = "start of recording"
}

// NextStall pauses and moves to just after the next stall (see index).
func (r *Replay) NextStall() {
	r.pause()
	for _, m := range r.stalls {
		if m.n > r.n {
			r.seek(m.n)
			return
		}
	}
	r.note = "no later stall"
}

// SetSpeed changes the speed; pacing restarts from now.
func (r *Replay) SetSpeed(s Speed) {
	if !validSpeed(s) {
		return
	}
	r.speed = s
	r.gen++
	r.lastWall = r.wall()
}

// Faster and Slower move along 1x, 10x, max.
func (r *Replay) Faster() { r.SetSpeed(speeds[min(speedIndex(r.speed)+1, len(speeds)-1)]) }
func (r *Replay) Slower() { r.SetSpeed(speeds[max(speedIndex(r.speed)-1, 0)]) }

func speedIndex(s Speed) int {
	for i, v := range speeds {
		if v == s {
			return i
		}
	}
	return 0
}

// advance plays what is due by wall time now; true when more is due at
// once (the budget ran out).
func (r *Replay) advance(now time.Time) bool {
	if r.paused || r.ended || r.err != nil {
		return false
	}
	if r.speed == SpeedMax {
		for i := 0; i < replayBudget; i++ {
			if !r.step() {
				return false
			}
		}
		return !r.ended && r.err == nil
	}
	dt := now.Sub(r.lastWall)
	r.lastWall = now
	// A stopped terminal (^Z) or a slow frame should not skip ahead.
	dt = min(max(dt, 0), time.Second)
	target := r.playhead + uint64(dt)*uint64(r.speed)
	for i := 0; i < replayBudget; i++ {
		r.lookAhead()
		if r.peek == nil || r.peek.Time > target {
			if !r.ended && r.err == nil {
				r.playhead = max(r.playhead, target)
			}
			return false
		}
		r.step()
	}
	return true
}

// position is the playhead as time since the start of the recording.
func (r *Replay) position() time.Duration {
	return time.Duration(min(r.playhead-min(r.start, r.playhead), 1<<62))
}

func (r *Replay) length() time.Duration {
	return time.Duration(min(r.end-r.start, 1<<62))
}

// counted is how many marks are at or before the current position.
func (r *Replay) counted(ms []mark) int {
	c := 0
	for _, m := range ms {
		if m.n <= r.n {
			c++
		}
	}
	return c
}
