package ui

import (
	"fmt"
	"strings"

	"github.com/klptop/klptop/internal/state"
)

// renderPatches lists the stack bottom first, as klp_patches holds it;
// with more than maxRows patches the top of the stack (the newest, the ones
// most likely in a transition) is kept.
func renderPatches(th Theme, s *state.State, width, maxRows int) string {
	var b strings.Builder
	b.WriteString(th.Section.Render("PATCHES") + th.Subtle.Render("  stacking order, bottom first"))
	if len(s.Patches) == 0 {
		b.WriteString("\n  " + th.Subtle.Render("no livepatch loaded"))
		return b.String()
	}
	nameW := 4
	for _, p := range s.Patches {
		nameW = max(nameW, len(p.Name))
	}
	// Leave room for the flag columns (about 40 cells) on narrow terminals.
	nameW = min(nameW, max(width-44, 8))
	// The klp_state column only when a patch declares states.
	withStates := false
	for _, p := range s.Patches {
		withStates = withStates || len(p.States) > 0
	}
	row := func(idx, name, en, tr, rep, forced, states string) string {
		if withStates {
			return fmt.Sprintf("  %3s  %-*s  %-7s  %-12s  %-7s  %-6s  %s", idx, nameW, clip(name, nameW), en, tr, rep, forced, states)
		}
		return fmt.Sprintf("  %3s  %-*s  %-7s  %-12s  %-7s  %s", idx, nameW, clip(name, nameW), en, tr, rep, forced)
	}
	b.WriteString("\n" + th.Label.Render(row("#", "name", "enabled", "transition", "replace", "forced", "klp_state")))
	first := 0
	if len(s.Patches) > maxRows {
		first = len(s.Patches) - maxRows
		b.WriteString("\n  " + th.Subtle.Render(fmt.Sprintf("… %d below", first)))
	}
	for i := first; i < len(s.Patches); i++ {
		p := s.Patches[i]
		tr := "-"
		if p.InTransition {
			tr = "unpatching"
			if tr0 := s.Transition; tr0 != nil && tr0.Patch == p.Name {
				tr = direction(tr0.Target)
			} else if p.Enabled {
				tr = "patching"
			}
		}
		if p.ReplacedBy != "" {
			// Unpatched by an atomic replace, until the kernel frees it.
			tr = "replaced by " + p.ReplacedBy
		}
		forced := ""
		if p.Forced {
			forced = "forced"
		}
		line := row(fmt.Sprint(i), p.Name, yesNo(p.Enabled), tr, yesNo(p.Replace), forced, statesText(p.States))
		if p.InTransition {
			line = th.Emphasis.Render(line)
		}
		b.WriteString("\n" + line)
	}
	if sh := shadowLine(s); sh != "" {
		b.WriteString("\n  " + th.Subtle.Render(clip(sh, max(width-2, 8))))
	}
	return b.String()
}

// statesText is a patch's klp_states, "1v2 7v1" (id, version).
func statesText(states []state.KlpState) string {
	var parts []string
	for _, k := range states {
		parts = append(parts, fmt.Sprintf("%dv%d", k.ID, k.Version))
	}
	return strings.Join(parts, " ")
}

// shadowLine sums up the shadow variables seen since klptop attached, one
// id after another; "" when none were.
func shadowLine(s *state.State) string {
	list := s.ShadowList()
	if len(list) == 0 {
		return ""
	}
	var live int64
	var parts []string
	for _, sh := range list {
		live += sh.Live
		parts = append(parts, fmt.Sprintf("%#x: %d live (%d allocs, %d frees)", sh.ID, sh.Live, sh.Allocs, sh.Frees))
	}
	return fmt.Sprintf("shadow variables since attach: %d live; %s", live, strings.Join(parts, ", "))
}

func clip(s string, w int) string {
	r := []rune(s)
	if len(r) <= w {
		return s
	}
	if w <= 1 {
		return string(r[:max(w, 0)])
	}
	return string(r[:w-1]) + "…"
}
