package ui

import (
	"charm.land/bubbles/v2/table"
	"charm.land/lipgloss/v2"
)

// Theme holds every style the views use, so that colours change in one place.
type Theme struct {
	Title    lipgloss.Style
	Subtle   lipgloss.Style
	Warn     lipgloss.Style
	Bad      lipgloss.Style
	Good     lipgloss.Style
	Section  lipgloss.Style
	Label    lipgloss.Style
	Emphasis lipgloss.Style
	Table    table.Styles
	BarFull  lipgloss.Style
	BarEmpty lipgloss.Style
}

// DefaultTheme uses ANSI-256 colours that read on dark and light backgrounds.
func DefaultTheme() Theme {
	t := Theme{
		Title:    lipgloss.NewStyle().Bold(true).Foreground(lipgloss.Color("86")),
		Subtle:   lipgloss.NewStyle().Foreground(lipgloss.Color("245")),
		Warn:     lipgloss.NewStyle().Foreground(lipgloss.Color("214")),
		Bad:      lipgloss.NewStyle().Bold(true).Foreground(lipgloss.Color("203")),
		Good:     lipgloss.NewStyle().Foreground(lipgloss.Color("78")),
		Section:  lipgloss.NewStyle().Bold(true).Foreground(lipgloss.Color("111")),
		Label:    lipgloss.NewStyle().Foreground(lipgloss.Color("245")),
		Emphasis: lipgloss.NewStyle().Bold(true),
		BarFull:  lipgloss.NewStyle().Foreground(lipgloss.Color("78")),
		BarEmpty: lipgloss.NewStyle().Foreground(lipgloss.Color("238")),
	}
	t.Table = table.Styles{
		Header:   lipgloss.NewStyle().Bold(true).Foreground(lipgloss.Color("245")).Padding(0, 1),
		Cell:     lipgloss.NewStyle().Padding(0, 1),
		Selected: lipgloss.NewStyle().Reverse(true),
	}
	return t
}
