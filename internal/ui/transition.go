package ui

import (
	"fmt"
	"strings"
	"time"

	"charm.land/bubbles/v2/progress"
	"charm.land/lipgloss/v2"

	"github.com/klptop/klptop/internal/state"
)

// transitionView shows the transition in progress, or the last one.
type transitionView struct {
	bar progress.Model
	// noSweeps: the events come from polling, which cannot see sweeps.
	noSweeps bool
}

func newTransitionView(th Theme, noSweeps bool) transitionView {
	bar := progress.New(
		progress.WithoutPercentage(),
		progress.WithFillCharacters('█', '░'),
		progress.WithColors(th.BarFull.GetForeground()),
	)
	bar.EmptyColor = th.BarEmpty.GetForeground()
	return transitionView{bar: bar, noSweeps: noSweeps}
}

func (v *transitionView) setWidth(w int) {
	v.bar.SetWidth(min(max(w-40, 10), 60))
}

func (v transitionView) view(th Theme, s *state.State, now uint64, width int) string {
	tr := s.Transition
	title := th.Section.Render("TRANSITION")
	if tr == nil {
		last := s.Last()
		if last == nil {
			return title + "\n  " + th.Subtle.Render("none seen")
		}
		outcome := last.Outcome
		switch outcome {
		case state.OutcomeComplete:
			outcome = th.Good.Render(outcome)
		case state.OutcomeCancelled, state.OutcomeForced:
			outcome = th.Bad.Render(outcome)
		default:
			outcome = th.Warn.Render(outcome)
		}
		sweeps := "sweeps"
		if last.Sweeps == 1 {
			sweeps = "sweep"
		}
		line := fmt.Sprintf("  none in progress; last: %s %s %s in %s, %d %s",
			th.Emphasis.Render(last.Patch), direction(last.Target), outcome,
			fmtDuration(last.Elapsed(now)), last.Sweeps, sweeps)
		if v.noSweeps && last.Sweeps == 0 {
			line = fmt.Sprintf("  none in progress; last: %s %s %s in %s (as polled)",
				th.Emphasis.Render(last.Patch), direction(last.Target), outcome, fmtDuration(last.Elapsed(now)))
		}
		if last.Reversed > 0 {
			line += fmt.Sprintf(", reversed %d×", last.Reversed)
		}
		if cb := callbacksText(last.Callbacks); cb != "" && lipgloss.Width(line)+len(cb)+2 <= width {
			line += "; " + cb
		}
		return title + "\n" + line
	}

	elapsed := fmtDuration(tr.Elapsed(now))
	if tr.Attached {
		// klptop attached mid-transition: it began before this.
		elapsed = "≥" + elapsed
	}
	head := fmt.Sprintf("%s  %s  %s  elapsed %s", title, th.Emphasis.Render(tr.Patch), direction(tr.Target), elapsed)
	if tr.Reversed > 0 {
		head += th.Warn.Render(fmt.Sprintf("  reversed %d×", tr.Reversed))
	}
	if tr.Forced {
		head += th.Bad.Render("  forced")
	}

	pct := 0.0
	if tr.Total > 0 {
		pct = float64(tr.Switched) / float64(tr.Total)
	}
	bar := "  " + v.bar.ViewAs(pct) + fmt.Sprintf("  %d/%d tasks switched", tr.Switched, tr.Total)

	sweep := "  " + sweepLine(tr, now, width)
	if cb := callbacksText(tr.Callbacks); cb != "" && lipgloss.Width(sweep)+len(cb)+2 <= width {
		sweep += "; " + cb
	}
	if v.noSweeps && tr.Sweeps == 0 {
		sweep = "  " + th.Subtle.Render("sweeps not observable: polling patch_state; reasons derived from kernel stacks")
	}
	return strings.Join([]string{head, bar, sweep}, "\n")
}

// callbacksText: the callbacks that ran for a transition, short:
// "callbacks pre_patch 302µs, post_patch 1ms" ("~" when timed around it,
// "failed -19" for a failed one).
func callbacksText(cbs []state.Callback) string {
	if len(cbs) == 0 {
		return ""
	}
	var parts []string
	for _, c := range cbs {
		p := c.Kind + " "
		if c.Bracketed {
			p += "~"
		}
		p += fmtDuration(time.Duration(min(c.Duration, 1<<62)))
		if c.Ret != 0 {
			p += fmt.Sprintf(" failed %d", c.Ret)
		}
		if c.Object != "vmlinux" {
			p += " (" + c.Object + ")"
		}
		parts = append(parts, p)
	}
	return "callbacks " + strings.Join(parts, ", ")
}

// sweepLine: the kernel retries a sweep about every second, so the count
// says how stuck the transition is; the signals it sends the stuck tasks
// (every 15th retry) are counted as the probes see them, never inferred from
// the sweep count: where they cannot be probed, the start-up notes say so.
func sweepLine(tr *state.Transition, now uint64, width int) string {
	if tr.Sweeps == 0 {
		return "no sweep yet"
	}
	s := fmt.Sprintf("sweep %d", tr.Sweeps)
	if tr.Sweeps > 1 {
		s += ", retries"
	}
	if tr.LastSweep != 0 {
		s += fmt.Sprintf("; last %s ago, took %s, %d pending",
			fmtDuration(since(now, tr.LastSweep)), fmtDuration(time.Duration(min(tr.LastSweepDuration, 1<<62))),
			tr.LastSweepPending)
	}
	if tr.Signals > 0 {
		sig := fmt.Sprintf("; %d signals sent", tr.Signals)
		if tr.Signals == 1 {
			sig = "; 1 signal sent"
		}
		if len(s)+len(sig)+2 <= width {
			s += sig
		}
	}
	return s
}
