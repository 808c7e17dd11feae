package ui

import (
	"fmt"
	"slices"
	"strconv"

	"charm.land/bubbles/v2/table"

	"github.com/klptop/klptop/internal/event"
	"github.com/klptop/klptop/internal/state"
)

// tasksView is the table of pending tasks, longest pending first.
type tasksView struct {
	table table.Model
	keys  []int // task key per row
	// sel is the selected task's key: rows reorder as tasks switch, the
	// selection follows the task, not the row number.
	sel    int
	hasSel bool
	count  int
}

func newTasksView(th Theme) tasksView {
	t := table.New(table.WithStyles(th.Table), table.WithFocused(true))
	return tasksView{table: t}
}

func (v *tasksView) setSize(w, h int) {
	v.table.SetColumns(taskColumns(w))
	// bubbles' table draws blank rows unless told its width.
	v.table.SetWidth(w)
	v.table.SetHeight(h)
}

func taskColumns(w int) []table.Column {
	const pid, comm, ps, pending, pad = 7, 15, 5, 8, 2 * 6
	rest := max(w-pid-comm-ps-pending-pad, 10)
	// Wide terminals do not need wider text columns; capping them keeps the
	// PENDING column near the rest of the row.
	rest = min(rest, 90)
	reason := rest * 55 / 100
	if narrow(w) {
		// The function has its own column: the reason's short form leaves
		// it room for a whole name.
		reason = min(len("unreliable stack"), rest/2)
	}
	return []table.Column{
		{Title: "PID", Width: pid},
		{Title: "COMM", Width: comm},
		{Title: "STATE", Width: ps},
		{Title: "REASON", Width: reason},
		{Title: "BLOCKING FUNC", Width: rest - reason},
		{Title: "PENDING", Width: pending},
	}
}

// narrow: too little room to repeat the blocking function in the reason.
func narrow(w int) bool { return w < 100 }

func (v *tasksView) refresh(s *state.State, now uint64, width int) {
	pending := s.Pending()
	v.count = len(pending)
	rows := make([]table.Row, 0, len(pending))
	keys := make([]int, 0, len(pending))
	for _, t := range pending {
		fn := t.Func
		if fn == "" {
			fn = "-"
		}
		rows = append(rows, table.Row{
			strconv.Itoa(t.PID), t.Comm, strconv.Itoa(t.PatchState),
			reason(t, width), fn, fmtDuration(since(now, t.PendingSince)),
		})
		keys = append(keys, t.Key())
	}
	v.keys = keys
	v.table.SetRows(rows)
	if i := slices.Index(keys, v.sel); v.hasSel && i >= 0 {
		v.table.SetCursor(i)
	} else if len(rows) > 0 {
		v.table.SetCursor(min(max(v.table.Cursor(), 0), len(rows)-1))
	}
	v.remember()
}

// remember records which task the cursor is on.
func (v *tasksView) remember() {
	if c := v.table.Cursor(); c >= 0 && c < len(v.keys) {
		v.sel, v.hasSel = v.keys[c], true
	}
}

func (v tasksView) selected() (int, bool) {
	c := v.table.Cursor()
	if c < 0 || c >= len(v.keys) {
		return 0, false
	}
	return v.keys[c], true
}

func (v tasksView) view(th Theme, s *state.State, width int) string {
	title := th.Section.Render("PENDING TASKS")
	if s.Transition == nil {
		return title + "\n  " + th.Subtle.Render("no transition in progress")
	}
	title += th.Subtle.Render(fmt.Sprintf("  %d, longest pending first", v.count))
	if v.count == 0 {
		return title + "\n  " + th.Good.Render("none: every task seen is at the target")
	}
	return title + "\n" + v.table.View()
}

func reason(t *state.Task, width int) string {
	if narrow(width) && t.Reason == event.ReasonSleeping {
		return "sleeping"
	}
	return humanReason(t.Reason, t.Func)
}
