// Package ui is klptop's terminal interface: a bubbletea program that folds
// the event stream into a state.State and draws the patch stack, the
// transition in progress and the tasks holding it up.
package ui

import (
	"context"
	"errors"
	"strings"
	"time"

	"charm.land/bubbles/v2/help"
	"charm.land/bubbles/v2/key"
	tea "charm.land/bubbletea/v2"
	"charm.land/lipgloss/v2"

	"github.com/klptop/klptop/internal/event"
	"github.com/klptop/klptop/internal/state"
)

// Options configure the screen.
type Options struct {
	// Title heads the screen, e.g. "live: <hostname> <kernel>".
	Title string
	// Notes are shown under the title, e.g. what the probes cannot see on
	// this kernel.
	Notes []string
	// Clock gives the time elapsed times are measured to; LiveClock(nil)
	// when nil.
	Clock Clock
	// EndNote replaces the default note shown once the event channel closes.
	EndNote string
	// Degraded, when set, says the events are not the kernel's own but
	// derived by polling (no BPF); shown under the title as a warning, and
	// the transition view does not wait for sweeps it cannot see.
	Degraded string

	// replay: events come from a recording, never "waited for".
	replay bool
}

type view int

const (
	viewMain view = iota
	viewStack
	viewHelp
	viewFuncs
)

// Messages the program receives besides terminal input.
type (
	eventsMsg struct {
		events []event.Event
		closed bool
	}
	tickMsg struct{}
)

// maxBatch bounds how many queued events one message carries: enough to
// keep up with a sweep over thousands of tasks without a redraw per event.
const maxBatch = 4096

// Model is the root bubbletea model.
type Model struct {
	opts   Options
	events <-chan event.Event
	st     *state.State
	clock  Clock
	theme  Theme

	width, height int
	view, under   view // under: the view help was opened from
	closed        bool
	frozenAt      uint64

	keys       mainKeys
	stackKeys  stackKeys
	funcsKeys  funcsKeys
	helpKeys   helpKeys
	help       help.Model
	transition transitionView
	tasks      tasksView
	stack      stackView
	funcs      funcsView

	// replay is nil in live mode; see NewReplay.
	replay     *Replay
	replayKeys replayKeys
}

// New returns the root model reading events from ch; a nil ch shows an
// empty state and waits for nothing.
func New(ch <-chan event.Event, opts Options) Model {
	if opts.Clock == nil {
		opts.Clock = LiveClock(nil)
	}
	th := DefaultTheme()
	m := Model{
		opts:       opts,
		events:     ch,
		st:         state.New(),
		clock:      opts.Clock,
		theme:      th,
		width:      80,
		height:     24,
		keys:       newMainKeys(),
		stackKeys:  newStackKeys(),
		funcsKeys:  newFuncsKeys(),
		helpKeys:   newHelpKeys(),
		help:       help.New(),
		transition: newTransitionView(th, opts.Degraded != ""),
		tasks:      newTasksView(th),
		stack:      newStackView(),
	}
	m.relayout()
	return m
}

// State exposes the folded state, for tests and for callers that print a
// summary after the program ends.
func (m Model) State() *state.State { return m.st }

// Init starts reading events and the once-a-second clock.
func (m Model) Init() tea.Cmd {
	return tea.Batch(waitEvents(m.events), tick(), m.replayInit())
}

func tick() tea.Cmd {
	return tea.Tick(time.Second, func(time.Time) tea.Msg { return tickMsg{} })
}

// waitEvents turns the channel into messages, draining whatever is already
// queued into one batch (bubbletea's realtime pattern).
func waitEvents(ch <-chan event.Event) tea.Cmd {
	if ch == nil {
		return nil
	}
	return func() tea.Msg {
		e, ok := <-ch
		if !ok {
			return eventsMsg{closed: true}
		}
		batch := []event.Event{e}
		for len(batch) < maxBatch {
			select {
			case e, ok := <-ch:
				if !ok {
					return eventsMsg{events: batch, closed: true}
				}
				batch = append(batch, e)
			default:
				return eventsMsg{events: batch}
			}
		}
		return eventsMsg{events: batch}
	}
}

// now is the time elapsed durations run to: the clock, frozen once the
// stream has ended, never before the last event.
func (m Model) now() uint64 {
	t := m.frozenAt
	if !m.closed {
		t = m.clock.Now()
	}
	return max(t, m.st.Now)
}

// Update handles one message.
func (m Model) Update(msg tea.Msg) (tea.Model, tea.Cmd) {
	var cmd tea.Cmd
	switch msg := msg.(type) {
	case tea.WindowSizeMsg:
		m.width, m.height = max(msg.Width, 1), max(msg.Height, 1)
	case eventsMsg:
		for _, e := range msg.events {
			m.st.Apply(e)
			m.clock.Observe(e.Time)
		}
		if msg.closed {
			m.closed = true
			m.frozenAt = max(m.clock.Now(), m.st.Now)
		} else {
			cmd = waitEvents(m.events)
		}
	case tickMsg:
		cmd = tick()
	case replayTickMsg:
		cmd = m.replayTick(msg)
	case tea.KeyPressMsg:
		if c, ok := m.replayKey(msg); ok {
			cmd = c
			break
		}
		var quit bool
		m, quit = m.handleKey(msg)
		if quit {
			return m, tea.Quit
		}
	}
	m.tasks.refresh(m.st, m.now(), m.width)
	m.relayout()
	return m, cmd
}

func (m Model) handleKey(msg tea.KeyPressMsg) (Model, bool) {
	switch m.view {
	case viewHelp:
		switch {
		case key.Matches(msg, m.helpKeys.Quit):
			return m, true
		case key.Matches(msg, m.helpKeys.Close):
			m.view = m.under
		}
	case viewStack:
		switch {
		case key.Matches(msg, m.stackKeys.Quit):
			return m, true
		case key.Matches(msg, m.stackKeys.Back):
			m.view = viewMain
		case key.Matches(msg, m.stackKeys.Help):
			m.under, m.view = viewStack, viewHelp
		case key.Matches(msg, m.stackKeys.Up):
			m.stack.vp.ScrollUp(1)
		case key.Matches(msg, m.stackKeys.Down):
			m.stack.vp.ScrollDown(1)
		}
	case viewFuncs:
		switch {
		case key.Matches(msg, m.funcsKeys.Quit):
			return m, true
		case key.Matches(msg, m.funcsKeys.Back):
			if m.funcs.open {
				m.funcs.open = false
			} else {
				m.view = viewMain
			}
		case key.Matches(msg, m.funcsKeys.Help):
			m.under, m.view = viewFuncs, viewHelp
		case key.Matches(msg, m.funcsKeys.Open):
			m.funcs.enter(m.st)
		case key.Matches(msg, m.funcsKeys.Up):
			m.funcs.move(m.st, -1)
		case key.Matches(msg, m.funcsKeys.Down):
			m.funcs.move(m.st, 1)
		}
	default:
		switch {
		case key.Matches(msg, m.keys.Quit):
			return m, true
		case key.Matches(msg, m.keys.Funcs):
			m.view, m.funcs.open = viewFuncs, false
		case key.Matches(msg, m.keys.Help):
			m.under, m.view = viewMain, viewHelp
		case key.Matches(msg, m.keys.Stack):
			if k, ok := m.tasks.selected(); ok {
				m.stack.open(k)
				m.view = viewStack
			}
		case key.Matches(msg, m.keys.Up):
			m.tasks.table.MoveUp(1)
		case key.Matches(msg, m.keys.Down):
			m.tasks.table.MoveDown(1)
		case key.Matches(msg, m.keys.Top):
			m.tasks.table.GotoTop()
		case key.Matches(msg, m.keys.Bottom):
			m.tasks.table.GotoBottom()
		}
		m.tasks.remember()
	}
	return m, false
}

// top renders everything above the task table; its height decides the
// table's.
func (m Model) top() string {
	now := m.now()
	parts := []string{
		renderHeader(m.theme, m.opts, m.st, m.closed, m.width),
	}
	if m.replay != nil {
		parts = append(parts, m.replay.view(m.theme, m.width))
	}
	parts = append(parts,
		renderPatches(m.theme, m.st, m.width, m.patchRows()),
		m.transition.view(m.theme, m.st, now, m.width),
	)
	return strings.Join(parts, "\n\n")
}

// patchRows caps the patch list on short terminals so the pending tasks,
// the reason klptop exists, keep most of the screen.
func (m Model) patchRows() int {
	if m.height < 30 {
		return 3
	}
	return 8
}

func (m *Model) relayout() {
	m.help.SetWidth(m.width)
	m.transition.setWidth(m.width)
	// top, blank, section title, table, blank-free footer.
	rest := m.height - lipgloss.Height(m.top()) - 1 - 1 - 1
	m.tasks.setSize(m.width, max(rest, 2))
	m.stack.setSize(m.width, max(m.height-stackHeaderLines-1, 1))
}

// View draws the current view, clipped to the terminal.
func (m Model) View() tea.View {
	var body, footer string
	switch m.view {
	case viewStack:
		body = m.stack.view(m.theme, m.st, m.now(), m.width)
		footer = m.help.View(m.stackKeys)
	case viewHelp:
		body = m.helpView()
		footer = m.help.View(m.helpKeys)
	case viewFuncs:
		body = renderHeader(m.theme, m.opts, m.st, m.closed, m.width) + "\n\n" +
			m.funcs.view(m.theme, m.st, m.width, m.height-lipgloss.Height(renderHeader(m.theme, m.opts, m.st, m.closed, m.width))-2)
		footer = m.help.View(m.funcsKeys)
	default:
		body = m.top() + "\n\n" + m.tasks.view(m.theme, m.st, m.width)
		footer = m.help.View(m.mainKeyMap())
	}
	body = fit(body, m.width, m.height-1)
	if pad := m.height - 1 - lipgloss.Height(body); pad > 0 {
		body += strings.Repeat("\n", pad)
	}
	v := tea.NewView(fit(body+"\n"+footer, m.width, m.height))
	v.AltScreen = true
	v.WindowTitle = "klptop"
	return v
}

// Run runs the TUI on the terminal until the user quits or ctx ends.
func Run(ctx context.Context, events <-chan event.Event, opts Options) error {
	p := tea.NewProgram(New(events, opts), tea.WithContext(ctx))
	_, err := p.Run()
	if errors.Is(err, tea.ErrProgramKilled) && ctx.Err() != nil {
		return nil
	}
	return err
}
