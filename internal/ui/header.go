package ui

import (
	"fmt"
	"strings"

	"github.com/klptop/klptop/internal/state"
)

func renderHeader(th Theme, opts Options, s *state.State, closed bool, width int) string {
	title := th.Title.Render("klptop")
	if opts.Title != "" {
		title += "  " + opts.Title
	}
	var status []string
	if !s.SnapshotDone && s.Now == 0 && !closed && !opts.replay {
		status = append(status, th.Subtle.Render("waiting for events"))
	}
	switch open := s.LostSinceResync(); {
	case open > 0:
		status = append(status, th.Bad.Render(fmt.Sprintf("lost %d events: counts may be off until a resync", open)))
	case s.Lost > 0:
		status = append(status, th.Warn.Render(fmt.Sprintf("lost %d events, resynced %s", s.Lost, plural(len(s.Repairs), "time"))))
	}
	if closed {
		note := opts.EndNote
		if note == "" {
			note = "event stream ended: final state"
		}
		status = append(status, th.Warn.Render(note))
	}
	if len(status) > 0 {
		title += "  " + strings.Join(status, "  ")
	}
	lines := []string{title}
	if opts.Degraded != "" {
		lines = append(lines, th.Warn.Render(opts.Degraded))
	}
	for _, n := range opts.Notes {
		lines = append(lines, th.Subtle.Render(n))
	}
	return strings.Join(lines, "\n")
}

func plural(n int, what string) string {
	if n == 1 {
		if what == "time" {
			return "once"
		}
		return "1 " + what
	}
	return fmt.Sprintf("%d %ss", n, what)
}
