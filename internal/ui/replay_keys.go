package ui

import "charm.land/bubbles/v2/key"

// replayKeys drive the playback. They work on the main and stack views
// alike, so one can step while watching a task's stack; none clashes with
// those views' own keys.
type replayKeys struct {
	Play, Step, Next, Prev, Stall, Faster, Slower, Speed1, Speed10, SpeedMax key.Binding
	// Display-only short forms for the footer, which must fit 80 columns.
	play, step, seek, stall, speed key.Binding
}

func newReplayKeys() replayKeys {
	return replayKeys{
		Play:     key.NewBinding(key.WithKeys("space", " "), key.WithHelp("space", "play/pause")),
		Step:     key.NewBinding(key.WithKeys("n", "."), key.WithHelp("n/.", "step one event")),
		Next:     key.NewBinding(key.WithKeys("]"), key.WithHelp("]", "next transition")),
		Prev:     key.NewBinding(key.WithKeys("["), key.WithHelp("[", "previous transition")),
		Stall:    key.NewBinding(key.WithKeys("s"), key.WithHelp("s", "next stall")),
		Faster:   key.NewBinding(key.WithKeys("+", "="), key.WithHelp("+", "faster")),
		Slower:   key.NewBinding(key.WithKeys("-", "_"), key.WithHelp("-", "slower")),
		Speed1:   key.NewBinding(key.WithKeys("1"), key.WithHelp("1", "speed 1x")),
		Speed10:  key.NewBinding(key.WithKeys("2"), key.WithHelp("2", "speed 10x")),
		SpeedMax: key.NewBinding(key.WithKeys("3"), key.WithHelp("3", "speed max")),
		play:     key.NewBinding(key.WithKeys("space"), key.WithHelp("space", "play/pause")),
		step:     key.NewBinding(key.WithKeys("n"), key.WithHelp("n", "step")),
		seek:     key.NewBinding(key.WithKeys("[", "]"), key.WithHelp("[/]", "seek")),
		stall:    key.NewBinding(key.WithKeys("s"), key.WithHelp("s", "stall")),
		speed:    key.NewBinding(key.WithKeys("+", "-"), key.WithHelp("+/-", "speed")),
	}
}

// replayMainKeys is the main view's keymap in a replay: playback first,
// since that is what the operator came to do.
type replayMainKeys struct {
	r replayKeys
	m mainKeys
}

func (k replayMainKeys) ShortHelp() []key.Binding {
	return []key.Binding{k.r.play, k.r.step, k.r.seek, k.r.stall, k.r.speed, k.m.Help, k.m.Quit}
}

func (k replayMainKeys) FullHelp() [][]key.Binding {
	return [][]key.Binding{
		{k.r.Play, k.r.Step, k.r.Next, k.r.Prev, k.r.Stall},
		{k.r.Faster, k.r.Slower, k.r.Speed1, k.r.Speed10, k.r.SpeedMax},
		{k.m.Up, k.m.Down, k.m.Top, k.m.Bottom},
		{k.m.Stack, k.m.Funcs, k.m.Help, k.m.Quit},
	}
}
