package ui

import (
	"fmt"
	"strings"

	"charm.land/bubbles/v2/viewport"

	"github.com/klptop/klptop/internal/state"
)

// stackHeaderLines is how many lines the stack view draws above the stack.
const stackHeaderLines = 4

// stackView shows one task's kernel stack, the frame that blocks the switch
// marked.
type stackView struct {
	vp  viewport.Model
	key int
}

func newStackView() stackView {
	return stackView{vp: viewport.New()}
}

func (v *stackView) open(key int) {
	v.key = key
	v.vp.SetYOffset(0)
}

func (v *stackView) setSize(w, h int) {
	v.vp.SetWidth(w)
	v.vp.SetHeight(h)
}

func (v stackView) view(th Theme, s *state.State, now uint64, width int) string {
	t := s.Task(v.key)
	if t == nil {
		return th.Section.Render("STACK") + "\n  " + th.Subtle.Render("task gone")
	}
	head := fmt.Sprintf("%s  pid %d  %s  tgid %d", th.Section.Render("STACK"), t.PID, th.Emphasis.Render(t.Comm), t.TGID)
	var info []string
	info = append(info, fmt.Sprintf("patch_state %d", t.PatchState))
	if tr := s.Transition; tr != nil {
		info = append(info, fmt.Sprintf("target %d", tr.Target))
		if t.PatchState != tr.Target && t.PatchState >= 0 {
			info = append(info, "pending "+fmtDuration(since(now, t.PendingSince)),
				humanReason(t.Reason, t.Func), fmt.Sprintf("%d failed checks", t.Checks))
		} else if t.SwitchPath != "" {
			info = append(info, "switched by "+t.SwitchPath)
		}
	} else if t.SwitchPath != "" {
		info = append(info, "last switched by "+t.SwitchPath)
	}
	lines := []string{head, "  " + strings.Join(info, ", "),
		th.Subtle.Render("  innermost frame first; ▶ marks the function that blocks the switch"), ""}

	if len(t.Stack) == 0 {
		v.vp.SetContent("  " + th.Subtle.Render("no stack captured: the probes send one when a check fails"))
	} else {
		var b []string
		for i, f := range t.Stack {
			mark := "  "
			line := fmt.Sprintf("#%-2d %s", i, f)
			if t.Func != "" && frameFunc(f) == t.Func {
				mark = th.Bad.Render("▶ ")
				line = th.Bad.Render(line)
			}
			b = append(b, mark+line)
		}
		v.vp.SetContent(strings.Join(b, "\n"))
	}
	return strings.Join(lines, "\n") + "\n" + v.vp.View()
}

// frameFunc extracts the function from a symbolized frame
// ("busymod_work_func+0x1c/0x40 [mod]").
func frameFunc(f string) string {
	f = strings.TrimSpace(f)
	if i := strings.IndexAny(f, "+ "); i >= 0 {
		f = f[:i]
	}
	return f
}
