package ui

import (
	"fmt"
	"strings"

	"github.com/klptop/klptop/internal/event"
	"github.com/klptop/klptop/internal/state"
)

// funcsView lists the patched functions and, opened on one, shows its stack
// of versions and which of them runs for whom.
type funcsView struct {
	cursor int
	open   bool
	// object and name of the opened function: the list reorders as
	// functions come and go, the opened one stays.
	object, name string
}

func (v *funcsView) move(s *state.State, d int) {
	n := len(s.Funcs)
	v.cursor = min(max(v.cursor+d, 0), max(n-1, 0))
}

func (v *funcsView) enter(s *state.State) {
	l := s.FuncList()
	if v.cursor < len(l) {
		v.open, v.object, v.name = true, l[v.cursor].Object, l[v.cursor].Name
	}
}

func (v funcsView) view(th Theme, s *state.State, width, height int) string {
	if v.open {
		return v.stackView(th, s)
	}
	var b strings.Builder
	b.WriteString(th.Section.Render("FUNCTIONS") + th.Subtle.Render("  patched functions; enter shows the stack of versions"))
	l := s.FuncList()
	if len(l) == 0 {
		b.WriteString("\n  " + th.Subtle.Render("no patched function seen (klptop reads the stacks at start and when they change)"))
		return b.String()
	}
	fw, ow := 8, 6
	for _, f := range l {
		fw, ow = max(fw, len(f.Name)), max(ow, len(f.Object))
	}
	fw, ow = min(fw, max(width/3, 8)), min(ow, max(width/5, 6))
	row := func(mark, fn, obj, n, runs string) string {
		return fmt.Sprintf("%s %-*s  %-*s  %8s  %s", mark, fw, clip(fn, fw), ow, clip(obj, ow), n, runs)
	}
	b.WriteString("\n" + th.Label.Render(row(" ", "function", "object", "versions", "runs")))
	// Keep the cursor on screen: header lines and the footer take 3.
	rows := max(height-3, 1)
	first := max(v.cursor-rows+1, 0)
	for i := first; i < len(l) && i < first+rows; i++ {
		f := l[i]
		line := row(" ", f.Name, f.Object, fmt.Sprint(len(f.Versions)), runsText(f))
		if i == v.cursor {
			line = th.Emphasis.Render(row("▶", f.Name, f.Object, fmt.Sprint(len(f.Versions)), runsText(f)))
		} else if f.InTransition() {
			line = th.Emphasis.Render(line)
		}
		b.WriteString("\n" + line)
	}
	return b.String()
}

// runsText says which version runs: one for everyone, or per task state
// while the head is in transition.
func runsText(f *state.Func) string {
	if !f.InTransition() {
		return f.Describe(f.RunsFor(event.StatePatched))
	}
	return "patched tasks: " + f.Describe(f.RunsFor(event.StatePatched)) +
		"; unpatched: " + f.Describe(f.RunsFor(event.StateUnpatched))
}

func (v funcsView) stackView(th Theme, s *state.State) string {
	f := s.Func(v.object, v.name)
	head := th.Section.Render("FUNCTION") + "  " + th.Emphasis.Render(v.name) + "  [" + v.object + "]"
	if f == nil {
		return head + "\n  " + th.Subtle.Render("no longer patched")
	}
	lines := []string{head}
	runP, runU := f.RunsFor(event.StatePatched), f.RunsFor(event.StateUnpatched)
	if f.InTransition() {
		lines = append(lines,
			"  in transition: tasks at patch_state 1 run "+f.Describe(runP),
			"                 tasks at patch_state 0 run "+f.Describe(runU))
	} else {
		lines = append(lines, "  every task runs "+f.Describe(runP))
	}
	lines = append(lines, th.Subtle.Render("  the kernel's func_stack, newest first; the head runs unless it is in transition"), "")
	row := func(i, patch, fn, flags, mark string) string {
		return fmt.Sprintf("  %2s  %-24s  %-32s  %-22s  %s", i, clip(patch, 24), clip(fn, 32), flags, mark)
	}
	lines = append(lines, th.Label.Render(row("#", "patch", "new function", "flags", "")))
	for i, ver := range f.Versions {
		fn := ver.Func
		if ver.Nop {
			fn = "nop (the original)"
		}
		var flags []string
		if ver.Patched {
			flags = append(flags, "patched")
		}
		if ver.Transition {
			flags = append(flags, "transition")
		}
		var runs []string
		if i == runP {
			runs = append(runs, "patched tasks")
		}
		if i == runU && f.InTransition() {
			runs = append(runs, "unpatched tasks")
		}
		mark := ""
		if len(runs) > 0 {
			mark = "◀ runs for " + strings.Join(runs, ", ")
			if !f.InTransition() {
				mark = "◀ runs"
			}
		}
		line := row(fmt.Sprint(i), ver.Patch, fn, strings.Join(flags, ","), mark)
		if mark != "" {
			line = th.Emphasis.Render(line)
		}
		lines = append(lines, line)
	}
	orig := row("", "(original)", v.name, "", "")
	if runP < 0 || (f.InTransition() && runU < 0) {
		who := "patched tasks"
		switch {
		case runP < 0 && f.InTransition() && runU < 0:
			who = "patched tasks, unpatched tasks"
		case runP >= 0:
			who = "unpatched tasks"
		}
		if !f.InTransition() {
			orig = row("", "(original)", v.name, "", "◀ runs")
		} else {
			orig = row("", "(original)", v.name, "", "◀ runs for "+who)
		}
	}
	lines = append(lines, th.Subtle.Render(orig))
	return strings.Join(lines, "\n")
}
