package ui

import (
	"fmt"
	"strings"
	"time"

	"github.com/charmbracelet/x/ansi"

	"github.com/klptop/klptop/internal/event"
)

// humanReason says why a task has not switched, in the operator's words.
func humanReason(reason, fn string) string {
	switch reason {
	case "":
		return "not checked yet"
	case event.ReasonRunning:
		return "running"
	case event.ReasonUnreliable:
		return "unreliable stack"
	case event.ReasonSleeping:
		if fn == "" {
			return "sleeping on a patched function"
		}
		return "sleeping on " + fn
	}
	return strings.ReplaceAll(reason, "_", " ")
}

func fmtDuration(d time.Duration) string {
	switch {
	case d < 0:
		return "0s"
	case d < time.Millisecond:
		return fmt.Sprintf("%dµs", d.Microseconds())
	case d < 10*time.Millisecond:
		return fmt.Sprintf("%.1fms", float64(d)/float64(time.Millisecond))
	case d < time.Second:
		return fmt.Sprintf("%dms", d.Milliseconds())
	case d < 10*time.Second:
		return fmt.Sprintf("%.1fs", d.Seconds())
	case d < time.Minute:
		return fmt.Sprintf("%ds", int(d.Seconds()))
	case d < time.Hour:
		return fmt.Sprintf("%dm%02ds", int(d.Minutes()), int(d.Seconds())%60)
	}
	return fmt.Sprintf("%dh%02dm", int(d.Hours()), int(d.Minutes())%60)
}

func since(now, t uint64) time.Duration {
	if now <= t {
		return 0
	}
	return time.Duration(min(now-t, 1<<63-1))
}

func direction(target int) string {
	if target == event.StateUnpatched {
		return "unpatching"
	}
	return "patching"
}

func yesNo(b bool) string {
	if b {
		return "yes"
	}
	return "no"
}

// fit clips every line to width and the whole to height lines, so that no
// view can ever draw past the terminal, whatever its content.
func fit(s string, width, height int) string {
	lines := strings.Split(s, "\n")
	if height > 0 && len(lines) > height {
		lines = lines[:height]
	}
	if width > 0 {
		for i, l := range lines {
			if ansi.StringWidth(l) > width {
				lines[i] = ansi.Truncate(l, width, "…")
			}
		}
	}
	return strings.Join(lines, "\n")
}
