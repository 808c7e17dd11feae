package ui

import "charm.land/bubbles/v2/key"

// Each view has its own keymap; help shows the one of the view it covers.

type mainKeys struct {
	Up, Down, Top, Bottom, Stack, Funcs, Help, Quit key.Binding
}

func newMainKeys() mainKeys {
	return mainKeys{
		Up:     key.NewBinding(key.WithKeys("up", "k"), key.WithHelp("↑/k", "up")),
		Down:   key.NewBinding(key.WithKeys("down", "j"), key.WithHelp("↓/j", "down")),
		Top:    key.NewBinding(key.WithKeys("home", "g"), key.WithHelp("g", "longest pending")),
		Bottom: key.NewBinding(key.WithKeys("end", "G"), key.WithHelp("G", "last")),
		Stack:  key.NewBinding(key.WithKeys("enter"), key.WithHelp("enter", "kernel stack")),
		Funcs:  key.NewBinding(key.WithKeys("f"), key.WithHelp("f", "functions")),
		Help:   key.NewBinding(key.WithKeys("?"), key.WithHelp("?", "help")),
		Quit:   key.NewBinding(key.WithKeys("q", "ctrl+c"), key.WithHelp("q", "quit")),
	}
}

func (k mainKeys) ShortHelp() []key.Binding {
	return []key.Binding{k.Up, k.Down, k.Stack, k.Funcs, k.Help, k.Quit}
}

func (k mainKeys) FullHelp() [][]key.Binding {
	return [][]key.Binding{{k.Up, k.Down, k.Top, k.Bottom}, {k.Stack, k.Funcs, k.Help, k.Quit}}
}

// funcsKeys drive the functions list and a function's stack.
type funcsKeys struct {
	Up, Down, Open, Back, Help, Quit key.Binding
}

func newFuncsKeys() funcsKeys {
	return funcsKeys{
		Up:   key.NewBinding(key.WithKeys("up", "k"), key.WithHelp("↑/k", "up")),
		Down: key.NewBinding(key.WithKeys("down", "j"), key.WithHelp("↓/j", "down")),
		Open: key.NewBinding(key.WithKeys("enter"), key.WithHelp("enter", "stack of versions")),
		Back: key.NewBinding(key.WithKeys("esc", "backspace", "f"), key.WithHelp("esc", "back")),
		Help: key.NewBinding(key.WithKeys("?"), key.WithHelp("?", "help")),
		Quit: key.NewBinding(key.WithKeys("q", "ctrl+c"), key.WithHelp("q", "quit")),
	}
}

func (k funcsKeys) ShortHelp() []key.Binding {
	return []key.Binding{k.Up, k.Down, k.Open, k.Back, k.Help, k.Quit}
}

func (k funcsKeys) FullHelp() [][]key.Binding {
	return [][]key.Binding{{k.Up, k.Down, k.Open}, {k.Back, k.Help, k.Quit}}
}

type stackKeys struct {
	Up, Down, Back, Help, Quit key.Binding
}

func newStackKeys() stackKeys {
	return stackKeys{
		Up:   key.NewBinding(key.WithKeys("up", "k"), key.WithHelp("↑/k", "scroll up")),
		Down: key.NewBinding(key.WithKeys("down", "j"), key.WithHelp("↓/j", "scroll down")),
		Back: key.NewBinding(key.WithKeys("esc", "backspace"), key.WithHelp("esc", "back")),
		Help: key.NewBinding(key.WithKeys("?"), key.WithHelp("?", "help")),
		Quit: key.NewBinding(key.WithKeys("q", "ctrl+c"), key.WithHelp("q", "quit")),
	}
}

func (k stackKeys) ShortHelp() []key.Binding {
	return []key.Binding{k.Up, k.Down, k.Back, k.Help, k.Quit}
}

func (k stackKeys) FullHelp() [][]key.Binding {
	return [][]key.Binding{{k.Up, k.Down}, {k.Back, k.Help, k.Quit}}
}

type helpKeys struct {
	Close, Quit key.Binding
}

func newHelpKeys() helpKeys {
	return helpKeys{
		Close: key.NewBinding(key.WithKeys("?", "esc"), key.WithHelp("?/esc", "close help")),
		Quit:  key.NewBinding(key.WithKeys("q", "ctrl+c"), key.WithHelp("q", "quit")),
	}
}

func (k helpKeys) ShortHelp() []key.Binding  { return []key.Binding{k.Close, k.Quit} }
func (k helpKeys) FullHelp() [][]key.Binding { return [][]key.Binding{{k.Close, k.Quit}} }
