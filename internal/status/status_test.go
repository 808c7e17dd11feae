package status

import (
	"bytes"
	"encoding/json"
	"flag"
	"os"
	"path/filepath"
	"slices"
	"testing"

	"github.com/klptop/klptop/internal/event"
	"github.com/klptop/klptop/internal/state"
)

var update = flag.Bool("update", false, "rewrite the golden files in testdata/")

func fold(evs []event.Event) *state.State {
	st := state.New()
	for _, e := range evs {
		st.Apply(e)
	}
	return st
}

func v(patch, fn string, nop, tr bool) event.FuncVersion {
	return event.FuncVersion{Patch: patch, Func: fn, Nop: nop, Patched: true, Transition: tr}
}

// Two patches on cmdline_proc_show, idle.
var idle = []event.Event{
	{Time: 10, Type: event.PatchSnapshot, Patch: "livepatch_sample", Enabled: true, Seq: 0},
	{Time: 10, Type: event.PatchSnapshot, Patch: "test_klp_livepatch", Enabled: true, Seq: 1},
	{Time: 10, Type: event.TaskSnapshot, PID: 1, TGID: 1, Comm: "init", PatchState: -1, Target: -1},
	{Time: 10, Type: event.FuncStack, Func: "cmdline_proc_show", Object: "vmlinux", Versions: []event.FuncVersion{
		v("test_klp_livepatch", "livepatch_cmdline_proc_show", false, false),
		v("livepatch_sample", "livepatch_cmdline_proc_show", false, false)}},
	{Time: 10, Type: event.SnapshotEnd, Target: -1},
}

// test_klp_livepatch patching on top of livepatch_sample; one task sleeps in
// the version it replaces, one holds no patched frame. An atomic replace's
// nop shows the nop runs the original.
var stall = []event.Event{
	{Time: 10, Type: event.PatchSnapshot, Patch: "livepatch_sample", Enabled: true, Seq: 0},
	{Time: 10, Type: event.PatchSnapshot, Patch: "test_klp_livepatch", Enabled: true, InTransition: true, Seq: 1, Target: 1},
	{Time: 10, Type: event.TaskSnapshot, PID: 1, TGID: 1, Comm: "init", PatchState: 1, Target: 1},
	{Time: 10, Type: event.TaskSnapshot, PID: 57, TGID: 57, Comm: "cat", PatchState: 0, Target: 1, Stack: []string{
		"__schedule+0x34c/0x9e0", "livepatch_cmdline_proc_show+0x20/0x40 [livepatch_sample]", "seq_read_iter+0x11f/0x460"}},
	{Time: 10, Type: event.TaskSnapshot, PID: 60, TGID: 60, Comm: "kworker/0:1", PatchState: 0, Target: 1, Stack: []string{
		"__schedule+0x34c/0x9e0", "worker_thread+0xb0/0x390"}},
	{Time: 10, Type: event.FuncStack, Func: "cmdline_proc_show", Object: "vmlinux", Versions: []event.FuncVersion{
		v("test_klp_livepatch", "livepatch_cmdline_proc_show", false, true),
		v("livepatch_sample", "livepatch_cmdline_proc_show", false, false)}},
	{Time: 10, Type: event.FuncStack, Func: "meminfo_proc_show", Object: "vmlinux", Versions: []event.FuncVersion{
		v("test_klp_livepatch", "", true, true)}},
	{Time: 10, Type: event.SnapshotEnd, Target: 1},
}

// Hand-made: an atomic-replace patch with two klp_states, loaded alone.
var states = []event.Event{
	{Time: 10, Type: event.PatchSnapshot, Patch: "test_klp_state2", Enabled: true, Replace: true, Seq: 0},
	{Time: 10, Type: event.KlpState, Patch: "test_klp_state2", ID: 1, Version: 2},
	{Time: 10, Type: event.KlpState, Patch: "test_klp_state2", ID: 7, Version: 1},
	{Time: 10, Type: event.SnapshotEnd, Target: -1},
}

func TestGolden(t *testing.T) {
	for _, c := range []struct {
		name, note string
		evs        []event.Event
	}{
		{"idle", "", idle},
		{"stall", "", stall},
		{"no-funcs", "no klp_ops in /proc/kallsyms (CONFIG_KALLSYMS_ALL off?)", idle[:3]},
		{"empty", "", nil},
		{"states", "", states},
	} {
		s := Build(fold(c.evs), "6.1.0-56-amd64", c.note)
		var txt, js bytes.Buffer
		if err := s.Text(&txt); err != nil {
			t.Fatal(err)
		}
		if err := s.JSON(&js); err != nil {
			t.Fatal(err)
		}
		var back Status
		if err := json.Unmarshal(js.Bytes(), &back); err != nil {
			t.Errorf("%s: JSON does not read back: %v", c.name, err)
		}
		golden(t, c.name+".txt", txt.Bytes())
		golden(t, c.name+".json", js.Bytes())
	}
}

func TestStallReasons(t *testing.T) {
	s := Build(fold(stall), "", "")
	if s.Transition == nil || s.Transition.Direction != "patching" || len(s.Pending) != 2 {
		t.Fatalf("status %+v", s)
	}
	if p := s.Pending[0]; p.PID != 57 || p.Reason != ReasonSleeping || p.Func != "livepatch_cmdline_proc_show" {
		t.Errorf("cat: %+v", p)
	}
	if p := s.Pending[1]; p.PID != 60 || p.Reason != ReasonNoFrame {
		t.Errorf("kworker: %+v", p)
	}
	f := s.Functions[0]
	if f.RunsPatched != "livepatch_cmdline_proc_show (test_klp_livepatch)" || f.RunsUnpatched != "livepatch_cmdline_proc_show (livepatch_sample)" {
		t.Errorf("runs: %+v", f)
	}
}

// Hand-made: the stall above with the kworker caught between two sleeps
// (on a CPU, its stack read empty) and a third task asleep whose stack read
// empty.
func caughtRunning() []event.Event {
	evs := slices.Clone(stall)
	end := evs[len(evs)-1]
	evs = evs[:len(evs)-1]
	for i := range evs {
		if evs[i].PID == 60 {
			evs[i].Stack, evs[i].Running = nil, true
		}
	}
	evs = append(evs,
		event.Event{Time: 10, Type: event.TaskSnapshot, PID: 61, TGID: 61, Comm: "exiting", PatchState: 0, Target: 1},
		event.Event{Time: 10, Type: event.TaskSnapshot, Comm: "swapper/0", PatchState: 0, Target: 1, Running: true},
		event.Event{Time: 10, Type: event.TaskSnapshot, Comm: "swapper/1", PatchState: 0, Target: 1, Running: true},
		end)
	return evs
}

func reread(pid int, comm string, ps int, running bool, stack ...string) event.Event {
	return event.Event{Time: 11, Type: event.TaskSnapshot, PID: pid, TGID: pid, Comm: comm, PatchState: ps,
		Target: 1, Running: running, Stack: stack}
}

func TestSettle(t *testing.T) {
	s := Build(fold(caughtRunning()), "", "")
	if len(s.Pending) != 5 || s.Unsettled() != 4 {
		t.Fatalf("pending %+v", s.Pending)
	}
	if p := pendingOf(s, 60, "kworker/0:1"); p == nil || p.Reason != ReasonRunning || p.Reads != 1 {
		t.Errorf("kworker at the first read: %+v", p)
	}
	kworkerAsleep := reread(60, "kworker/0:1", 0, false, "__schedule+0x34c/0x9e0",
		"livepatch_cmdline_proc_show+0x20/0x40 [livepatch_sample]", "worker_thread+0xb0/0x390")
	idle := func(cpu string, ps int) event.Event {
		return event.Event{Time: 11, Type: event.TaskSnapshot, Comm: "swapper/" + cpu, PatchState: ps, Target: 1, Running: true}
	}
	reads := [][]event.Event{
		// The cat, settled already, reads as running now: it keeps its reason.
		// Each CPU's idle task (all pid 0) is read as itself.
		{reread(57, "cat", 0, true), reread(60, "kworker/0:1", 0, true), reread(61, "exiting", 0, false),
			idle("0", 0), idle("1", 1)},
		{kworkerAsleep, reread(61, "exiting", 0, false)},
		{reread(61, "exiting", 0, false)},
		{reread(61, "exiting", 0, false)},
	}
	calls := 0
	err := s.Settle(func() ([]event.Event, error) { calls++; return reads[calls-1], nil }, 0, 0, 0)
	if err != nil || calls != 3 {
		t.Fatalf("Settle: %v after %d reads", err, calls)
	}
	want := []struct {
		pid    int
		comm   string
		reason string
		fn     string
		reads  int
	}{
		{57, "cat", ReasonSleeping, "livepatch_cmdline_proc_show", 1},
		{60, "kworker/0:1", ReasonSleeping, "livepatch_cmdline_proc_show", 3},
		{61, "exiting", ReasonNoStack, "", 4},
		{0, "swapper/0", ReasonRunning, "", 2}, // not read after its first reread
	}
	if len(s.Pending) != len(want) || pendingOf(s, 0, "swapper/1") != nil {
		t.Fatalf("pending %+v: swapper/1 switched at the first reread and leaves", s.Pending)
	}
	for _, w := range want {
		p := pendingOf(s, w.pid, w.comm)
		if p == nil || p.Reason != w.reason || p.Func != w.fn || p.Reads != w.reads {
			t.Errorf("%d %s: %+v, want %s %q after %d reads", w.pid, w.comm, p, w.reason, w.fn, w.reads)
		}
	}
	var txt bytes.Buffer
	if err := s.Text(&txt); err != nil {
		t.Fatal(err)
	}
	golden(t, "settled.txt", txt.Bytes())
}

func pendingOf(s Status, pid int, comm string) *Task {
	for i := range s.Pending {
		if s.Pending[i].PID == pid && s.Pending[i].Comm == comm {
			return &s.Pending[i]
		}
	}
	return nil
}

// A task that reaches the target between two reads leaves the list.
func TestSettleSwitched(t *testing.T) {
	s := Build(fold(caughtRunning()), "", "")
	switched := s.Transition.Switched
	reads := 0
	err := s.Settle(func() ([]event.Event, error) {
		reads++
		return []event.Event{reread(60, "kworker/0:1", 1, false), reread(61, "exiting", 0, true)}, nil
	}, 0, 0)
	if err != nil || reads != 2 {
		t.Fatalf("Settle: %v after %d reads", err, reads)
	}
	if len(s.Pending) != 4 || pendingOf(s, 60, "kworker/0:1") != nil || s.Transition.Switched != switched+1 {
		t.Fatalf("pending %+v, switched %d (was %d)", s.Pending, s.Transition.Switched, switched)
	}
	if p := pendingOf(s, 61, "exiting"); p == nil || p.Reason != ReasonRunning || p.Reads != 3 {
		t.Errorf("pid 61: %+v", p)
	}
	// A settled status reads nothing.
	s = Build(fold(stall), "", "")
	if err := s.Settle(func() ([]event.Event, error) { t.Fatal("read"); return nil, nil }, 0); err != nil {
		t.Fatal(err)
	}
}

func golden(t *testing.T, name string, got []byte) {
	t.Helper()
	p := filepath.Join("testdata", name)
	if *update {
		if err := os.WriteFile(p, got, 0o644); err != nil {
			t.Fatal(err)
		}
		return
	}
	want, err := os.ReadFile(p)
	if err != nil {
		t.Fatalf("%v (go test -update writes it)", err)
	}
	if !bytes.Equal(got, want) {
		t.Errorf("%s differs from the golden file:\n%s", name, got)
	}
}
