package ui

import (
	"strings"

	"charm.land/bubbles/v2/key"
)

// helpView explains the screen as well as the keys: what "pending" and the
// reasons mean is the question operators come with.
func (m Model) helpView() string {
	var keys string
	switch m.under {
	case viewStack:
		keys = m.fullHelp(m.stackKeys.FullHelp())
	case viewFuncs:
		keys = m.fullHelp(m.funcsKeys.FullHelp())
	default:
		keys = m.fullHelp(m.mainKeyMap().FullHelp())
	}
	th := m.theme
	text := []string{
		th.Section.Render("HELP"),
		"",
		keys,
		"",
		th.Section.Render("READING THE SCREEN"),
		"  A livepatch transition switches every task to the target patch_state",
		"  (1 patched, 0 unpatched). The kernel checks each pending task about",
		"  once a second (a sweep); a task switches when its stack is safe, or on",
		"  its own on exit to user space, in the idle loop, or at fork.",
		"",
		"  running            the task was on a CPU during the check",
		"  unreliable stack   its stack could not be walked reliably",
		"  sleeping on F      F, a function the patch replaces, is on its stack",
		"",
		"  patch_state: -1 idle, 0 unpatched, 1 patched.",
		"",
		"  functions (f): each patched function's stack of versions, newest first.",
		"  The head runs; while it is in transition, tasks still unpatched run the",
		"  version below it (or the original). A nop runs the original.",
	}
	if m.replay != nil {
		text = append(text, "")
		text = append(text, replayHelp(th)...)
	}
	return strings.Join(text, "\n")
}

func (m Model) fullHelp(groups [][]key.Binding) string {
	return m.help.FullHelpView(groups)
}
