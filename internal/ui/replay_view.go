package ui

import (
	"context"
	"errors"
	"fmt"
	"io"
	"maps"
	"slices"
	"strings"
	"time"

	"charm.land/bubbles/v2/help"
	"charm.land/bubbles/v2/key"
	tea "charm.land/bubbletea/v2"
	"charm.land/lipgloss/v2"

	"github.com/klptop/klptop/internal/event"
)

// replayTickMsg asks the replay to play what is due; gen tells a tick of
// the current pacing from one scheduled before a pause or speed change.
type replayTickMsg struct{ gen int }

// replayClock is the replay's playhead: elapsed times run on event time,
// and stand still while paused.
type replayClock struct{ r *Replay }

func (replayClock) Observe(uint64) {}
func (c replayClock) Now() uint64  { return c.r.playhead }

// NewReplay returns the root model over an opened recording: the live
// screen, with the replay's position and keys added.
func NewReplay(r *Replay, opts Options) Model {
	opts.Clock = replayClock{r}
	opts.replay = true
	m := New(nil, opts)
	m.replay = r
	m.replayKeys = newReplayKeys()
	m.syncReplay()
	return m
}

// RunReplay plays the recording on the terminal until the user quits. The
// error is the corruption met while playing, if any, once the user has
// seen it and quit.
func RunReplay(ctx context.Context, r *Replay, opts Options, out io.Writer) error {
	popts := []tea.ProgramOption{tea.WithContext(ctx)}
	if out != nil {
		popts = append(popts, tea.WithOutput(out))
	}
	p := tea.NewProgram(NewReplay(r, opts), popts...)
	_, err := p.Run()
	if errors.Is(err, tea.ErrProgramKilled) && ctx.Err() != nil {
		err = nil
	}
	if err != nil {
		return err
	}
	return r.Err()
}

func (r *Replay) schedule() tea.Cmd {
	if r.paused || r.ended || r.err != nil {
		return nil
	}
	msg := replayTickMsg{gen: r.gen}
	if r.speed == SpeedMax {
		return func() tea.Msg { return msg }
	}
	return tea.Tick(replayFrame, func(time.Time) tea.Msg { return msg })
}

func (m Model) replayInit() tea.Cmd {
	if m.replay == nil {
		return nil
	}
	return m.replay.schedule()
}

func (m *Model) replayTick(msg replayTickMsg) tea.Cmd {
	r := m.replay
	if r == nil || msg.gen != r.gen {
		return nil
	}
	more := r.advance(r.wall())
	m.syncReplay()
	if more {
		return func() tea.Msg { return msg }
	}
	return r.schedule()
}

// replayKey handles the playback keys; ok is false for any other key.
func (m *Model) replayKey(msg tea.KeyPressMsg) (tea.Cmd, bool) {
	r := m.replay
	if r == nil || m.view == viewHelp {
		return nil, false
	}
	k := m.replayKeys
	r.note = ""
	switch {
	case key.Matches(msg, k.Play):
		if r.paused || r.ended {
			r.resume()
		} else {
			r.pause()
		}
	case key.Matches(msg, k.Step):
		r.Step()
	case key.Matches(msg, k.Next):
		r.NextTransition()
	case key.Matches(msg, k.Prev):
		r.PrevTransition()
	case key.Matches(msg, k.Stall):
		r.NextStall()
	case key.Matches(msg, k.Faster):
		r.Faster()
	case key.Matches(msg, k.Slower):
		r.Slower()
	case key.Matches(msg, k.Speed1):
		r.SetSpeed(Speed1x)
	case key.Matches(msg, k.Speed10):
		r.SetSpeed(Speed10x)
	case key.Matches(msg, k.SpeedMax):
		r.SetSpeed(SpeedMax)
	default:
		return nil, false
	}
	m.syncReplay()
	return r.schedule(), true
}

// syncReplay points the screen at the replay's state, which a seek back
// replaces, and shows the end of the recording as the live view shows the
// end of its stream.
func (m *Model) syncReplay() {
	r := m.replay
	if r == nil {
		return
	}
	m.st = r.st
	m.closed = r.ended || r.err != nil
	m.frozenAt = r.playhead
	switch {
	case r.err != nil:
		m.opts.EndNote = "corrupt trace: press q"
	case r.ended:
		m.opts.EndNote = "end of recording: final state"
	}
}

// mainKeyMap is the main view's keymap, with playback in a replay.
func (m Model) mainKeyMap() help.KeyMap {
	if m.replay != nil {
		return replayMainKeys{r: m.replayKeys, m: m.keys}
	}
	return m.keys
}

// replayView is the playback status, the timeline and the last event.
func (r *Replay) view(th Theme, width int) string {
	var status string
	switch {
	case r.err != nil:
		status = th.Bad.Render("✗ stopped")
	case r.ended:
		status = th.Warn.Render("■ end")
	case r.paused:
		status = th.Warn.Render("⏸ paused")
	default:
		status = th.Good.Render("▶ playing")
	}
	head := fmt.Sprintf("%s  %s  speed %s  %s / %s  event %d/%d  transition %d/%d  stall %d/%d",
		th.Section.Render("REPLAY"), status, r.speed,
		fmtPos(r.position()), fmtPos(r.length()), r.n, r.Total(),
		r.counted(r.transitions), len(r.transitions), r.counted(r.stalls), len(r.stalls))
	lines := []string{head, "  " + r.timeline(th, max(width-4, 10))}

	last := "  " + th.Label.Render("at start: no event applied yet")
	if r.n > 0 {
		last = "  " + th.Label.Render("last event: ") + describe(r.last)
	}
	if r.note != "" {
		last += "  " + th.Warn.Render("("+r.note+")")
	}
	lines = append(lines, last)
	if r.err != nil {
		lines = append(lines, "  "+th.Bad.Render("corrupt trace: "+r.err.Error()))
	}
	if r.truncated {
		lines = append(lines, "  "+th.Warn.Render("warning: the last line is cut short (recorder killed?): replay stops before it"))
	}
	if len(r.unknown) > 0 {
		types := slices.Sorted(maps.Keys(r.unknown))
		n := 0
		names := make([]string, len(types))
		for i, t := range types {
			n += r.unknown[t]
			names[i] = string(t)
		}
		lines = append(lines, "  "+th.Subtle.Render(fmt.Sprintf("skipped %d events of types this klptop does not know: %s", n, strings.Join(names, ", "))))
	}
	return strings.Join(lines, "\n")
}

// timeline draws the recording's span: played part, transitions (┃),
// stalls (!) and the playhead (●).
func (r *Replay) timeline(th Theme, w int) string {
	const (
		played = iota
		ahead
		trans
		stall
		head
	)
	cells := make([]int, w)
	at := func(t uint64) int {
		if r.end <= r.start || t <= r.start {
			return 0
		}
		c := int(float64(t-r.start) / float64(r.end-r.start) * float64(w-1))
		return min(max(c, 0), w-1)
	}
	pos := at(r.playhead)
	for i := range cells {
		if i < pos {
			cells[i] = played
		} else {
			cells[i] = ahead
		}
	}
	for _, m := range r.stalls {
		cells[at(m.t)] = stall
	}
	for _, m := range r.transitions {
		cells[at(m.t)] = trans
	}
	cells[pos] = head
	glyph := []string{"━", "─", "┃", "!", "●"}
	style := []lipgloss.Style{th.BarFull, th.BarEmpty, th.Section, th.Bad, th.Emphasis}
	var b strings.Builder
	for i := 0; i < w; {
		j := i
		for j < w && cells[j] == cells[i] {
			j++
		}
		b.WriteString(style[cells[i]].Render(strings.Repeat(glyph[cells[i]], j-i)))
		i = j
	}
	return b.String()
}

// fmtPos is a position in the recording, to the millisecond: stepping
// moves it by less than fmtDuration shows.
func fmtPos(d time.Duration) string {
	ms := d.Milliseconds()
	s := float64(ms%60000) / 1000
	switch {
	case d < time.Minute:
		return fmt.Sprintf("%.3fs", s)
	case d < time.Hour:
		return fmt.Sprintf("%dm%06.3fs", ms/60000, s)
	}
	return fmt.Sprintf("%dh%02dm%06.3fs", ms/3600000, ms/60000%60, s)
}

// describe is one event in a line, for the step-by-step reader.
func describe(e event.Event) string {
	s := string(e.Type)
	if e.Patch != "" {
		s += " " + e.Patch
	}
	if e.PID != 0 || e.Comm != "" {
		s += fmt.Sprintf(" %s[%d]", e.Comm, e.PID)
	}
	switch e.Type {
	case event.TaskCheck:
		r := e.Reason
		if r == "" {
			r = event.ReasonFor(e.Ret)
		}
		s += ": " + humanReason(r, e.Func)
	case event.TaskSwitch, event.TaskSnapshot:
		s += fmt.Sprintf(": patch_state %d", e.PatchState)
		if e.Path != "" {
			s += " by " + e.Path
		}
	case event.TransitionInit, event.TransitionReverse:
		s += ": " + direction(e.Target)
	case event.SweepEnd:
		s += fmt.Sprintf(": %d pending, took %s", e.Pending, fmtDuration(time.Duration(min(e.Duration, 1<<62))))
	case event.Lost:
		s += fmt.Sprintf(": %d events (%s)", e.Count, event.LostWords(e.Reason))
	case event.Resync:
		if e.Reason == event.ResyncAttached && e.Count == 0 {
			s += ": fork, exit and wake-up probes attached, the kernel's state read again"
		} else {
			s += fmt.Sprintf(": the kernel's state read again after %d lost events", e.Count)
		}
	}
	return s
}

// replayHelp explains what the seeks land on.
func replayHelp(th Theme) []string {
	return []string{
		th.Section.Render("REPLAY"),
		"  Plays the recording on its own clock: 1x as recorded, 10x, or max (as fast",
		"  as it reads). Seeks and steps pause; space plays on (from the start at the end).",
		"  The timeline spans the recording: ━ played, ┃ transition, ! stall, ● now.",
		"",
		"  transition   a transition_init: ] and [ land just after it; [ inside a",
		"               transition goes to its start, re-reading the file from the top",
		"  stall        the first failed check (any reason but switched) of a task in",
		"               the 2nd or later sweep of a transition, sweeps counted from its",
		"               start or last reverse; each task once per direction",
	}
}
