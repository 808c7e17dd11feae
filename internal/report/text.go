package report

import (
	"bufio"
	"fmt"
	"io"
	"maps"
	"slices"
	"strings"
	"time"
	"unicode/utf8"

	"github.com/klptop/klptop/internal/event"
)

// textSink is the human report: one block per transition, the verdict on
// its first line, blockers in an aligned table with their stacks beneath.
type textSink struct {
	w        *bufio.Writer
	opts     Options
	unfinish []string // one line per unfinished transition, for the end
}

func newTextSink(w io.Writer, opts Options) *textSink {
	if opts.MaxBlockers <= 0 {
		opts.MaxBlockers = 10
	}
	if opts.MaxFrames <= 0 {
		opts.MaxFrames = 16
	}
	return &textSink{w: bufio.NewWriter(w), opts: opts}
}

func (s *textSink) printf(format string, a ...any) { fmt.Fprintf(s.w, format, a...) }

func (s *textSink) begin(info TraceInfo, signals bool) error {
	host := orUnknown(info.Hostname)
	s.printf("klptop report: %s, kernel %s, boot %s\n", host, orUnknown(info.Kernel), orUnknown(info.BootID))
	rec := "recorded"
	if info.StartWall != "" {
		rec += " from " + wallString(info.StartWall)
	}
	rec += " by klptop " + orUnknown(info.Klptop)
	if info.Backend != "" {
		rec += " (" + info.Backend + ")"
	}
	s.printf("%s, trace format %s\n", rec, orUnknown(info.Version))
	if len(info.Command) > 0 {
		s.printf("command: %s\n", oneLineCommand(info.Command, 100))
	}
	for _, m := range info.Missing {
		s.printf("not observable: %s (%s)\n", m.Symbol, m.Why)
	}
	if len(info.LossCounted) > 0 {
		var unseen []string
		for _, c := range []string{event.LostMissed, event.LostRecursion} {
			if !slices.Contains(info.LossCounted, c) {
				unseen = append(unseen, event.LostWords(c))
			}
		}
		if len(unseen) > 0 {
			s.printf("not counted: events lost to %s (this kernel keeps no such count)\n", strings.Join(unseen, " or "))
		}
	}
	s.printf("\n")
	return nil
}

func orUnknown(s string) string {
	if s == "" {
		return "?"
	}
	return s
}

// wallString shortens RFC 3339 to what a reader scans: date, time to the
// millisecond, zone.
func wallString(rfc string) string {
	t, err := time.Parse(time.RFC3339Nano, rfc)
	if err != nil {
		return rfc
	}
	return t.UTC().Format("2006-01-02 15:04:05.000 UTC")
}

func offset(t *Time) string {
	if t == nil {
		return "-"
	}
	return fmt.Sprintf("%+.3fs", t.Offset)
}

func when(t *Time) string {
	if t.Wall == "" {
		return offset(t)
	}
	return wallString(t.Wall) + "  (" + offset(t) + ")"
}

// duration is how the report writes a length of time.
func duration(ns uint64) string {
	d := time.Duration(min(ns, 1<<63-1))
	switch {
	case d < time.Millisecond:
		return fmt.Sprintf("%dµs", d.Microseconds())
	case d < time.Second:
		return fmt.Sprintf("%dms", d.Milliseconds())
	case d < time.Minute:
		return fmt.Sprintf("%.2fs", d.Seconds())
	case d < time.Hour:
		return fmt.Sprintf("%dm%02ds", int(d.Minutes()), int(d.Seconds())%60)
	}
	return fmt.Sprintf("%dh%02dm%02ds", int(d.Hours()), int(d.Minutes())%60, int(d.Seconds())%60)
}

func humanReason(reason, fn string) string {
	switch reason {
	case "":
		return "never checked"
	case event.ReasonRunning:
		return "running"
	case event.ReasonUnreliable:
		return "unreliable stack"
	case event.ReasonSleeping:
		if fn == "" {
			return "sleeping in a patched function"
		}
		return "sleeping in " + fn
	}
	return strings.ReplaceAll(reason, "_", " ")
}

func (s *textSink) transition(t *Transition) error {
	verdict := strings.ToUpper(t.Outcome)
	if t.Stall && t.Outcome != OutcomeUnfinished {
		verdict += " after a stall"
	}
	s.printf("#%d  %s  %s  %s  %s\n", t.Index, t.Patch, t.Direction, verdict, duration(t.DurationNs))
	if t.Note != "" {
		s.printf("    note: %s\n", t.Note)
	}
	start := when(&t.Start)
	switch {
	case t.StartResynced:
		start += "  (began where events were lost: at or before)"
	case t.StartedBeforeRecording:
		start += "  (started before the recording: at or before)"
	}
	s.printf("    start   %s\n", start)
	if t.End != nil && t.EndIsUpperBound {
		s.printf("    end     %s  (at the latest)\n", when(t.End))
	} else if t.End != nil {
		s.printf("    end     %s\n", when(t.End))
	} else {
		s.printf("    end     - (still running when the trace ends)\n")
	}
	signals := "not observable"
	if t.SignalsObservable {
		signals = fmt.Sprint(t.Signals)
	}
	s.printf("    sweeps  %d   reverses %d   signals %s   tasks %d, %d switched\n",
		t.Sweeps, t.Reverses, signals, t.Tasks, t.Switched)
	if t.LostEvents > 0 {
		s.printf("    lost    %d events while it ran\n", t.LostEvents)
	}
	if len(t.KlpStates) > 0 {
		var ks []string
		for _, k := range t.KlpStates {
			ks = append(ks, fmt.Sprintf("id %d v%d", k.ID, k.Version))
		}
		s.printf("    klp_state  %s\n", strings.Join(ks, ", "))
	}
	if r := t.Replace; r != nil {
		line := "    replace  unpatched " + orNone(strings.Join(r.Replaced, ", "))
		if r.NopsDiscarded {
			line += "; nops discarded"
		}
		s.printf("%s\n", line)
	}
	if len(t.Callbacks) > 0 {
		var cs []string
		for _, c := range t.Callbacks {
			cs = append(cs, callbackText(c))
		}
		s.printf("    callbacks  %s\n", strings.Join(cs, ", "))
	}
	if t.Stall {
		s.blockers(t)
	}
	s.printf("\n")
	if t.Outcome == OutcomeUnfinished {
		u := fmt.Sprintf("#%d %s %s after %s", t.Index, t.Patch, t.Direction, duration(t.DurationNs))
		if len(t.Blockers) > 0 {
			b := t.Blockers[0]
			u += fmt.Sprintf(": %d blocking, longest %s (pid %d) %s for %s", len(t.Blockers),
				b.Comm, b.PID, humanReason(b.Reason, b.Func), duration(b.BlockedNs))
		}
		s.unfinish = append(s.unfinish, u)
	}
	return nil
}

func (s *textSink) blockers(t *Transition) {
	if len(t.Blockers) == 0 {
		s.printf("    stall: no task was seen failing a check\n")
		return
	}
	n := len(t.Blockers)
	tasks := "tasks"
	if n == 1 {
		tasks = "task"
	}
	s.printf("    stall: %d %s blocked the transition, longest first\n", n, tasks)
	shown := t.Blockers[:min(n, s.opts.MaxBlockers)]
	head := []string{"PID", "COMM", "BLOCKED", "CHECKS", "FIRST FAIL", "LAST FAIL", "SWITCHED", "REASON"}
	if t.SignalsObservable {
		// A column of zeros would claim no signals where none were seen.
		head = slices.Insert(head, 4, "SIGNALS")
	}
	rows := [][]string{head}
	for _, b := range shown {
		sw := "never"
		if b.Switched != nil {
			sw = offset(b.Switched) + " " + b.SwitchPath
		}
		row := []string{fmt.Sprint(b.PID), b.Comm, duration(b.BlockedNs), fmt.Sprint(b.Checks),
			offset(b.FirstCheck), offset(b.LastCheck), sw, humanReason(b.Reason, b.Func)}
		if t.SignalsObservable {
			row = slices.Insert(row, 4, fmt.Sprint(b.Signals))
		}
		rows = append(rows, row)
	}
	width := make([]int, len(rows[0]))
	for _, r := range rows {
		for i, c := range r {
			width[i] = max(width[i], utf8.RuneCountInString(c))
		}
	}
	for i, r := range rows {
		var line strings.Builder
		line.WriteString("      ")
		for j, c := range r {
			line.WriteString(c)
			if j < len(r)-1 {
				line.WriteString(strings.Repeat(" ", width[j]-utf8.RuneCountInString(c)+2))
			}
		}
		s.printf("%s\n", line.String())
		if i == 0 {
			continue
		}
		b := shown[i-1]
		for k, f := range b.Stack {
			if k == s.opts.MaxFrames {
				s.printf("          ... %d more frames\n", len(b.Stack)-k)
				break
			}
			s.printf("          %s\n", f)
		}
	}
	if n > len(shown) {
		s.printf("      ... and %d more (--json lists them all)\n", n-len(shown))
	}
}

// shadows lists the shadow variables by id, when there were any.
func plural(n int, what string) string {
	if n == 1 {
		return "1 " + what
	}
	return fmt.Sprintf("%d %ss", n, what)
}

// repairs lists the stretches where events were lost, each with the
// resync that ended it.
func (s *textSink) repairs(sum *Summary) {
	if len(sum.Repairs) == 0 {
		return
	}
	s.printf("events lost, and the resyncs that repaired them:\n")
	for _, r := range sum.Repairs {
		var cs []string
		for _, c := range slices.Sorted(maps.Keys(r.Causes)) {
			cs = append(cs, fmt.Sprintf("%d %s", r.Causes[c], event.LostWords(c)))
		}
		line := fmt.Sprintf("  %s .. %s  %d lost (%s)", offset(&r.From), offset(&r.At), r.Lost, strings.Join(cs, ", "))
		var found []string
		if r.Ended {
			found = append(found, "a transition had ended")
		}
		if r.Began {
			found = append(found, "a transition had begun")
		}
		if r.Forgotten > 0 {
			found = append(found, plural(r.Forgotten, "task")+" had left")
		}
		if len(found) > 0 {
			line += "; the resync found " + strings.Join(found, ", ")
		}
		s.printf("%s\n", line)
	}
	s.printf("\n")
}

func (s *textSink) shadows(sum *Summary) {
	if len(sum.Shadows) == 0 {
		return
	}
	rows := [][]string{{"ID", "ALLOCS", "FREES", "LIVE", "CALLS"}}
	for _, sh := range sum.Shadows {
		var calls []string
		for _, fn := range []string{event.ShadowAlloc, event.ShadowGetOrAlloc, event.ShadowFree, event.ShadowFreeAll} {
			if n := sh.Calls[fn]; n > 0 {
				calls = append(calls, fmt.Sprintf("%s %d", fn, n))
			}
		}
		rows = append(rows, []string{fmt.Sprintf("%#x", sh.ID), fmt.Sprint(sh.Allocs), fmt.Sprint(sh.Frees),
			fmt.Sprint(sh.Live), strings.Join(calls, ", ")})
	}
	width := make([]int, len(rows[0]))
	for _, r := range rows {
		for i, c := range r {
			width[i] = max(width[i], utf8.RuneCountInString(c))
		}
	}
	s.printf("shadow variables, counted from the start of the recording:\n")
	for _, r := range rows {
		line := "  "
		for i, c := range r {
			if i == len(r)-1 {
				line += "  " + c
			} else {
				line += fmt.Sprintf("  %-*s", width[i], c)
			}
		}
		s.printf("%s\n", strings.TrimRight(line, " "))
	}
	s.printf("\n")
}

func orNone(s string) string {
	if s == "" {
		return "none"
	}
	return s
}

func (s *textSink) modules(sum *Summary) {
	for _, m := range sum.Modules {
		what := "applied"
		if m.Event == "going" {
			what = "reverted"
		}
		s.printf("module %s %s at %s: %s %s\n", m.Module, m.Event, offset(&m.Time), what, orNone(strings.Join(m.Patches, ", ")))
	}
	if len(sum.Modules) > 0 {
		s.printf("\n")
	}
}

// callbackText: "pre_patch vmlinux 1.2ms", with what makes it notable.
func callbackText(c Callback) string {
	t := fmt.Sprintf("%s %s %s", c.Callback, c.Object, duration(c.DurationNs))
	if c.Bracketed {
		t += " (timed around it)"
	}
	if c.Ret != 0 {
		t += fmt.Sprintf(" returned %d", c.Ret)
	}
	return t
}

// callbacks lists those that ran for no transition (a module load) and
// those that failed: a failed enable's comes after its transition's lines.
func (s *textSink) callbacks(sum *Summary) {
	n := 0
	for _, c := range sum.Callbacks {
		if c.InTransition && c.Ret == 0 {
			continue
		}
		s.printf("callback %s of %s at %s: %s (%s)\n", c.Func, c.Patch, offset(&c.Time), callbackText(c), failedOr(c))
		n++
	}
	if n > 0 {
		s.printf("\n")
	}
}

func failedOr(c Callback) string {
	if c.Ret != 0 {
		return "the enable or module load failed"
	}
	return "module load or unload"
}

func (s *textSink) end(sum *Summary) error {
	s.modules(sum)
	s.callbacks(sum)
	s.shadows(sum)
	s.repairs(sum)
	var parts []string
	for _, o := range []string{"complete", "reversed", "cancelled", "forced", OutcomeUnfinished} {
		if n := sum.Outcomes[o]; n > 0 {
			parts = append(parts, fmt.Sprintf("%d %s", n, o))
		}
	}
	tr := "transitions"
	if sum.Transitions == 1 {
		tr = "transition"
	}
	line := fmt.Sprintf("summary: %d %s", sum.Transitions, tr)
	if len(parts) > 0 {
		line += " (" + strings.Join(parts, ", ") + ")"
	}
	line += fmt.Sprintf(", %d stalled, %d events", sum.Stalls, sum.Events)
	s.printf("%s\n", line)
	for _, w := range sum.Warnings() {
		s.printf("warning: %s\n", w)
	}
	if sum.Error != "" {
		s.printf("error: the report stops at a corrupt line: %s\n", sum.Error)
	}
	for _, u := range s.unfinish {
		s.printf("UNFINISHED %s\n", u)
	}
	return s.w.Flush()
}

// oneLineCommand keeps a recorded command (often `sh -c SCRIPT`) to one line
// of the header: the full text is in --json and in the trace.
func oneLineCommand(argv []string, width int) string {
	f := strings.Fields(strings.Join(argv, " "))
	c := strings.Join(f, " ")
	if r := []rune(c); len(r) > width {
		c = string(r[:width-1]) + "…"
	}
	return c
}
