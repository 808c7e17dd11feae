package probes

import (
	"errors"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/btf"

	"github.com/klptop/klptop/internal/event"
	"github.com/klptop/klptop/internal/ksym"
)

// handMadeFilterFunctions is a hand-made available_filter_functions text
// shaped like Debian 6.1's: klp_start_transition has a .part.0 clone, and
// klp_update_patch_state exists only as a clone here (made up, to test the
// argument rule); klp_force_transition is absent.
const handMadeFilterFunctions = `klp_enable_patch
klp_init_transition
klp_start_transition.part.0
klp_start_transition
klp_complete_transition
klp_reverse_transition
klp_cancel_transition.isra.0
klp_try_complete_transition
klp_check_and_switch_task
klp_update_patch_state.constprop.0
klp_copy_process
klp_find_callback
klp_shadow_get
klp_shadow_alloc
klp_shadow_get_or_alloc
klp_shadow_free
klp_shadow_free_all
wake_up_state
release_task
some_module_func [some_module]
`

func TestPlan(t *testing.T) {
	avail, err := traceable(strings.NewReader(handMadeFilterFunctions))
	if err != nil {
		t.Fatal(err)
	}
	attach, missing := plan(avail)
	want := map[string][]string{
		"klp_enable_patch":                {"klp_enable_patch"},
		"klp_init_transition":             {"klp_init_transition"},
		"klp_start_transition":            {"klp_start_transition.part.0"},
		"klp_complete_transition":         {"klp_complete_transition"},
		"klp_reverse_transition":          {"klp_reverse_transition"},
		"klp_cancel_transition":           {"klp_cancel_transition.isra.0"},
		"klp_try_complete_transition":     {"klp_try_complete_transition"},
		"klp_try_complete_transition_ret": {"klp_try_complete_transition"},
		"klp_check_and_switch_task":       {"klp_check_and_switch_task"},
		"klp_check_and_switch_task_ret":   {"klp_check_and_switch_task"},
		"klp_copy_process":                {"klp_copy_process"},
		"klp_signal":                      {"wake_up_state"},
		"task_release":                    {"release_task"},
		"task_release_ret":                {"release_task"},
		"shadow_alloc":                    {"klp_shadow_alloc"},
		"shadow_alloc_ret":                {"klp_shadow_alloc"},
		"shadow_get_or_alloc":             {"klp_shadow_get_or_alloc"},
		"shadow_get_or_alloc_ret":         {"klp_shadow_get_or_alloc"},
		"shadow_free":                     {"klp_shadow_free"},
		"shadow_free_all":                 {"klp_shadow_free_all"},

		"callbacks_init":     {"klp_init_transition"},
		"cb_bracket_init":    {"klp_init_transition"},
		"cb_bracket_open":    {"klp_init_transition"},
		"cb_bracket_done":    {"klp_start_transition.part.0"},
		"cb_bracket_cancel":  {"klp_cancel_transition.isra.0"},
		"cb_bracket_ret":     {"klp_enable_patch"},
		"cb_complete_entry":  {"klp_complete_transition"},
		"cb_complete_ret":    {"klp_complete_transition"},
		"cb_complete_cancel": {"klp_cancel_transition.isra.0"},

		"funcs_changed_klp_start_transition":    {"klp_start_transition.part.0"},
		"funcs_changed_klp_complete_transition": {"klp_complete_transition"},
		"funcs_changed_klp_reverse_transition":  {"klp_reverse_transition"},
		"funcs_changed_klp_cancel_transition":   {"klp_cancel_transition.isra.0"},
	}
	if !reflect.DeepEqual(attach, want) {
		t.Errorf("attach:\n%v\nwant\n%v", attach, want)
	}
	wantMissing := []Missing{
		{"klp_force_transition", whyAbsent},
		{"klp_update_patch_state", "only compiler clones traceable (klp_update_patch_state.constprop.0): their arguments may differ"},
		{"klp_update_patch_state%return", "only compiler clones traceable (klp_update_patch_state.constprop.0): their arguments may differ"},
		{"__klp_sched_try_switch", whyAbsent},
		{"__klp_sched_try_switch%return", whyAbsent},
		{"klp_module_coming", whyAbsent},
		{"klp_module_going", whyAbsent},
		{"klp_patch_object", whyAbsent},
		{"klp_unpatch_object", whyAbsent},
		{"klp_unpatch_replaced_patches", whyAbsent},
		{"klp_discard_nops", whyAbsent},
		{"klp_free_patch_async", whyAbsent},
		{"klp_free_replaced_patches_async", whyAbsent},
		{"klp_patch_object%return", whyAbsent},
		{"klp_unpatch_objects%return", whyAbsent},
		{"klp_discard_nops%return", whyAbsent},
		{"klp_module_coming%return", whyAbsent},
		{"klp_module_going%return", whyAbsent},
	}
	if !reflect.DeepEqual(missing, wantMissing) {
		t.Errorf("missing:\n%v\nwant\n%v", missing, wantMissing)
	}
}

// Without wake_up_state the signals go unobserved, and the header says so
// under the name of the inlined function whose effect is missing.
func TestPlanSignalsMissing(t *testing.T) {
	for _, tc := range []struct{ drop, why string }{
		{"wake_up_state", "inlined; wake_up_state not traceable"},
		{"klp_try_complete_transition", "inlined; wake_up_state: " + whyPartner},
	} {
		avail, err := traceable(strings.NewReader(handMadeFilterFunctions))
		if err != nil {
			t.Fatal(err)
		}
		delete(avail, tc.drop)
		attach, missing := plan(avail)
		if _, ok := attach["klp_signal"]; ok {
			t.Errorf("without %s: klp_signal planned", tc.drop)
		}
		want := Missing{Symbol: event.SignalSymbol, Why: tc.why}
		found := false
		for _, m := range missing {
			found = found || m == want
		}
		if !found {
			t.Errorf("without %s: missing %v, want it to hold %v", tc.drop, missing, want)
		}
	}
}

func TestPlanCoversEveryProgram(t *testing.T) {
	spec, err := loadKlptop()
	if err != nil {
		t.Fatal(err)
	}
	known := map[string]bool{iterProg: true, funcsProg: true, statesProg: true,
		callbacksIterPrg: true, callbackProg: true, callbackRetProg: true}
	for _, p := range probes {
		known[p.prog] = true
		known[twin(p)] = true
		if spec.Programs[p.prog] == nil {
			t.Errorf("probe %s has no program in the object", p.prog)
		}
		// Return probes stay kretprobes: no fexit program may exist
		// for them (its frame would make the checked stacks unreliable).
		if p.ret {
			if fx := spec.Programs["fexit_"+p.prog]; fx != nil {
				t.Errorf("return probe %s has an fexit program", p.prog)
			}
			continue
		}
		// The fentry backend swaps one for the other: the twin must hook
		// the entry of the same function.
		tw := spec.Programs[twin(p)]
		if tw == nil {
			t.Errorf("probe %s has no fentry twin %s in the object", p.prog, twin(p))
			continue
		}
		if tw.Type != ebpf.Tracing || tw.AttachType != ebpf.AttachTraceFEntry {
			t.Errorf("%s: type %v attach %v, want Tracing fentry", twin(p), tw.Type, tw.AttachType)
		}
		if kp := spec.Programs[p.prog]; kp != nil && tw.AttachTo != kp.AttachTo {
			t.Errorf("%s goes on %s by default, its kprobe %s on %s", twin(p), tw.AttachTo, p.prog, kp.AttachTo)
		}
	}
	for name := range spec.Programs {
		if !known[name] {
			t.Errorf("program %s is never attached", name)
		}
	}
}

// The hand-written decoder must agree with the compiler's layout.
func TestEventLayout(t *testing.T) {
	spec, err := loadKlptop()
	if err != nil {
		t.Fatal(err)
	}
	offsets := func(name string) (uint32, map[string]uint32) {
		var s *btf.Struct
		if err := spec.Types.TypeByName(name, &s); err != nil {
			t.Fatal(err)
		}
		m := map[string]uint32{}
		for _, f := range s.Members {
			m[f.Name] = f.Offset.Bytes()
		}
		return s.Size, m
	}
	size, off := offsets("event")
	if size != eventSize {
		t.Errorf("struct event is %d bytes, decoder says %d", size, eventSize)
	}
	for name, want := range map[string]uint32{"time": 0, "duration": 8, "type": 16, "cpu": 20,
		"pid": 24, "tgid": 28, "ret": 32, "target": 36, "patch_state": 40, "pending": 44,
		"checked": 48, "flags": 52, "path": 53, "comm": offComm, "patch": offPatch, "func": offFunc,
		"id": offID, "version": offVersion, "aggregated": offAggregated} {
		if off[name] != want {
			t.Errorf("event.%s at %d, decoder reads %d", name, off[name], want)
		}
	}
	size, off = offsets("task_rec")
	if size != taskRecSize || off["comm"] != 16 || off["stack_len"] != 12 || off["patch_state"] != 8 || off["running"] != offRunning {
		t.Errorf("task_rec: size %d, %v", size, off)
	}
	size, off = offsets("func_rec")
	for name, want := range map[string]uint32{"func": 0, "old_func": 8, "new_func": 16, "kind": 24,
		"index": 28, "depth": 32, "nop": 36, "patched": 37, "transition": 38, "obj_patched": 39,
		"name": 40, "patch": 40 + funcLen, "object": 40 + funcLen + patchLen, "new_name": 40 + funcLen + 2*patchLen} {
		if off[name] != want {
			t.Errorf("func_rec.%s at %d, decoder reads %d", name, off[name], want)
		}
	}
	if size != funcRecSize {
		t.Errorf("struct func_rec is %d bytes, decoder says %d", size, funcRecSize)
	}
	size, off = offsets("state_rec")
	if size != stateRecSize || off["id"] != 0 || off["version"] != 8 || off["patch"] != 16 {
		t.Errorf("state_rec: size %d, %v", size, off)
	}
	if size, _ = offsets("shadow_count"); size != 48 {
		t.Errorf("struct shadow_count is %d bytes, shadowCount has 6 u64", size)
	}
	if size, _ = offsets("funcs_out"); size != funcsOutSize {
		t.Errorf("struct funcs_out is %d bytes, decoder says %d", size, funcsOutSize)
	}
}

func TestDecodeEvent(t *testing.T) {
	b := make([]byte, eventSize)
	b[16] = 10 // EV_TASK_CHECK
	b[24] = 42
	copy(b[32:], []byte{0x9e, 0xff, 0xff, 0xff}) // -98
	b[52] = flagWantStack
	copy(b[offComm:], "kworker/0:1\x00")
	copy(b[offPatch:], "test_klp_callbacks_demo")
	copy(b[offFunc:], "busymod_work_func")
	e, err := decodeEvent(b)
	if err != nil {
		t.Fatal(err)
	}
	if e.Type != event.TaskCheck || e.PID != 42 || e.Ret != -98 || e.Reason != event.ReasonSleeping ||
		e.Func != "busymod_work_func" || e.Comm != "kworker/0:1" || e.Patch != "test_klp_callbacks_demo" || !e.wantStack {
		t.Errorf("decoded %+v", e)
	}
	b = make([]byte, eventSize)
	b[16] = 13 // EV_SIGNAL
	b[24] = 42
	b[53] = 5 // PATH_WAKE
	copy(b[offComm:], "kworker/0:1\x00")
	if e, err = decodeEvent(b); err != nil {
		t.Fatal(err)
	}
	if e.Type != event.Signal || e.PID != 42 || e.Path != event.PathWake || e.Reason != "" {
		t.Errorf("decoded %+v", e)
	}
	b[53] = 6 // PATH_SIGNAL
	if e, _ = decodeEvent(b); e.Path != event.PathSignal {
		t.Errorf("path %q, want %q", e.Path, event.PathSignal)
	}
	b = make([]byte, eventSize)
	b[16] = 14 // EV_KLP_STATE
	copy(b[offPatch:], "test_klp_state")
	b[offID] = 1      // CONSOLE_LOGLEVEL_STATE
	b[offVersion] = 2 // CONSOLE_LOGLEVEL_STATE_VERSION of test_klp_state2
	if e, err = decodeEvent(b); err != nil {
		t.Fatal(err)
	}
	if e.Type != event.KlpState || e.Patch != "test_klp_state" || e.ID != 1 || e.Version != 2 {
		t.Errorf("decoded %+v", e)
	}
	b[16] = 99
	if _, err := decodeEvent(b); err == nil {
		t.Error("unknown type accepted")
	}
}

// On a kernel without livepatch, Open says so (or that it needs root).
func TestOpenWithoutLivepatch(t *testing.T) {
	if _, err := os.Stat("/sys/kernel/livepatch"); err == nil {
		t.Skip("this kernel has livepatch")
	}
	_, err := Open(Options{})
	if !errors.Is(err, ErrNoLivepatch) && !errors.Is(err, ErrNotRoot) {
		t.Fatalf("Open: %v", err)
	}
}

// The task iterator runs on any BPF-capable kernel: loaded alone (all kprobe
// programs pruned), it must find this test's own thread group.
func TestTaskIterator(t *testing.T) {
	spec := bpfSpec(t)
	coll, _, _, _, _, err := loadCollection(spec, map[string]bool{iterProg: true}, "", nil)
	if err != nil {
		t.Fatal(err)
	}
	defer coll.Close()
	if len(coll.Programs) != 1 {
		t.Fatalf("pruning left %d programs", len(coll.Programs))
	}
	evs, err := snapshotTasks(coll.Programs[iterProg], monotonicNow(), -1, ksym.New("/proc/kallsyms"))
	if err != nil {
		t.Fatal(err)
	}
	_, hasPatchState := os.Stat("/proc/self/patch_state")
	found := false
	for _, e := range evs {
		if e.TGID != os.Getpid() {
			continue
		}
		found = true
		if e.Type != event.TaskSnapshot || e.Comm == "" {
			t.Errorf("own task: %+v", e)
		}
		if hasPatchState != nil && e.PatchState != event.StateUnknown {
			t.Errorf("patch_state = %d on a kernel without it, want %d", e.PatchState, event.StateUnknown)
		}
	}
	if !found {
		t.Fatalf("own pid %d not among %d tasks", os.Getpid(), len(evs))
	}
}

func TestSchedInSchedule(t *testing.T) {
	for rel, want := range map[string]bool{"6.1.0-57-amd64": false, "6.12.95+deb12-amd64": false, "6.15.9": false, "6.16.0-rc1": true, "7.2.13+deb14-amd64": true, "": false} {
		if got := schedInSchedule(rel); got != want {
			t.Errorf("schedInSchedule(%q) = %v, want %v", rel, got, want)
		}
	}
}

// A hand-made EV_CALLBACK as the kernel side writes it: the object in
// patch, the callback %ps-named in func, a bracketed one's kind in version.
func TestDecodeCallback(t *testing.T) {
	b := make([]byte, eventSize)
	b[16] = 25 // EV_CALLBACK
	b[52] = flagBracket | flagFailed
	copy(b[32:], []byte{0xed, 0xff, 0xff, 0xff}) // -19
	copy(b[offPatch:], "test_klp_callbacks_mod")
	copy(b[offFunc:], "pre_patch_callback [test_klp_callbacks_demo]")
	b[offID] = 0x40
	b[offVersion] = 1 // CB_PRE_PATCH + 1
	raw, err := decodeEvent(b)
	if err != nil {
		t.Fatal(err)
	}
	if raw.Type != event.Callback || raw.Object != "test_klp_callbacks_mod" || raw.Func != "pre_patch_callback" ||
		raw.Patch != "test_klp_callbacks_demo" || raw.Callback != event.CallbackPrePatch || !raw.Bracketed || raw.Ret != -19 || raw.addr != 0x40 {
		t.Errorf("decoded %+v", raw)
	}
	// Probed (no kind from the kernel side): the site, by the kernel's
	// name, says post_unpatch and owns the ret (void: cleared).
	var s Session
	s.cb.sites = map[string]*callbackSite{"pre_patch_callback [test_klp_callbacks_demo]": {kind: event.CallbackPostUnpatch, patch: "test_klp_callbacks_demo"}}
	b[52], b[offVersion], b[offPatch] = 0, 0, 0
	if raw, err = decodeEvent(b); err != nil {
		t.Fatal(err)
	}
	e, ok := s.callbackEvent(raw)
	if !ok || e.Callback != event.CallbackPostUnpatch || e.Ret != 0 || e.Object != "vmlinux" || e.Bracketed {
		t.Errorf("probed callback %+v (ok %v)", e, ok)
	}
	// An EV_CALLBACKS names the site to probe and its kind.
	b2 := make([]byte, eventSize)
	b2[16] = 24 // EV_CALLBACKS
	copy(b2[offPatch:], "test_klp_callbacks_demo")
	copy(b2[offFunc:], "post_patch_callback [test_klp_callbacks_demo]")
	b2[offVersion] = 2 // CB_POST_PATCH + 1
	if raw, err := decodeEvent(b2); err != nil || raw.Type != callbacksSeen || raw.sym != "post_patch_callback [test_klp_callbacks_demo]" ||
		raw.Callback != event.CallbackPostPatch || raw.Patch != "test_klp_callbacks_demo" {
		t.Errorf("EV_CALLBACKS decoded %+v (%v)", raw, err)
	}
	// No symbol for the address: dropped, never written as a number.
	copy(b[offFunc:], "0xffffffffc0001000\x00")
	raw, _ = decodeEvent(b)
	if _, ok := s.callbackEvent(raw); ok {
		t.Error("a callback the kernel could not name was kept")
	}
}

// A callback of a module still coming waits for it to be live; one of a
// module already gone is never probed (the kernel would log the refusal).
func TestCallbackWaitsForLiveModule(t *testing.T) {
	root := t.TempDir()
	dir := filepath.Join(root, "sys/module/test_klp_callbacks_demo")
	if err := os.MkdirAll(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	os.WriteFile(filepath.Join(dir, "initstate"), []byte("coming\n"), 0o644)
	os.MkdirAll(filepath.Join(root, "sys/kernel/livepatch/test_klp_callbacks_demo"), 0o755)
	s := &Session{root: root}
	s.cb.sites = map[string]*callbackSite{}
	site := &callbackSite{kind: event.CallbackPostPatch, patch: "test_klp_callbacks_demo", module: "test_klp_callbacks_demo", target: "test_klp_callbacks_demo:post_patch_callback"}
	s.placeLocked("post_patch_callback [test_klp_callbacks_demo]", site)
	if !site.pending || site.closer != nil || site.err != nil {
		t.Errorf("coming module: %+v, want pending", site)
	}
	// Live, but its patch already freed: not probed either.
	os.WriteFile(filepath.Join(dir, "initstate"), []byte("live\n"), 0o644)
	freed := &callbackSite{kind: event.CallbackPrePatch, patch: "test_klp_callbacks_freed", module: "test_klp_callbacks_demo", target: "test_klp_callbacks_demo:pre_patch_callback"}
	s.placeLocked("pre_patch_callback [test_klp_callbacks_demo]", freed)
	if freed.closer != nil || freed.err == nil || !strings.Contains(freed.err.Error(), "gone") {
		t.Errorf("freed patch: %+v, want an error and no probe", freed)
	}
	gone := &callbackSite{kind: event.CallbackPrePatch, module: "test_klp_callbacks_gone", target: "test_klp_callbacks_gone:pre_patch_callback"}
	s.placeLocked("pre_patch_callback [test_klp_callbacks_gone]", gone)
	if gone.pending || gone.closer != nil || gone.err == nil || !strings.Contains(gone.err.Error(), "gone") {
		t.Errorf("gone module: %+v, want an error and no probe", gone)
	}
}

func TestRingBytes(t *testing.T) {
	for _, c := range []struct {
		tasks int
		want  uint32
	}{
		{0, 2 << 20},
		{100, 2 << 20},
		{1500, 2 << 20},
		{10_000, 8 << 20},
		{50_000, 32 << 20},
		{100_000, 64 << 20},
		{10_000_000, 1 << 30},
	} {
		got := ringBytes(c.tasks)
		if got != c.want {
			t.Errorf("ringBytes(%d) = %d MiB, want %d MiB", c.tasks, got>>20, c.want>>20)
		}
		// Two sweeps of every task fit, up to the cap.
		if need := uint64(2*c.tasks) * ringRecord; got < 1<<30 && uint64(got) < need {
			t.Errorf("ringBytes(%d) = %d: less than two records per task (%d)", c.tasks, got, need)
		}
	}
}

func TestThreadCount(t *testing.T) {
	dir := t.TempDir()
	if err := os.MkdirAll(filepath.Join(dir, "proc"), 0o755); err != nil {
		t.Fatal(err)
	}
	for in, want := range map[string]int{
		"0.52 0.58 0.59 3/101234 4567\n": 101234,
		"0.00 0.01 0.05 1/123 4567\n":    123,
		"garbage\n":                      0,
		"0 0 0 1-123 4\n":                0,
	} {
		if err := os.WriteFile(filepath.Join(dir, "proc/loadavg"), []byte(in), 0o644); err != nil {
			t.Fatal(err)
		}
		if got := threadCount(dir); got != want {
			t.Errorf("threadCount(%q) = %d, want %d", in, got, want)
		}
	}
	if got := threadCount(filepath.Join(dir, "none")); got != 0 {
		t.Errorf("threadCount without /proc/loadavg = %d", got)
	}
}

func TestSizeMaps(t *testing.T) {
	spec, err := loadKlptop()
	if err != nil {
		t.Fatal(err)
	}
	if ring := sizeMaps(spec, 10_000, 0); ring != 8<<20 || spec.Maps["events"].MaxEntries != ring {
		t.Errorf("10,000 tasks: ring %d, events max_entries %d, want 8 MiB", ring, spec.Maps["events"].MaxEntries)
	}
	if n := spec.Maps["last_checks"].MaxEntries; n != 20_000 {
		t.Errorf("10,000 tasks: last_checks max_entries %d, want 20,000", n)
	}
	spec, _ = loadKlptop()
	sizeMaps(spec, 10, 0)
	if n := spec.Maps["last_checks"].MaxEntries; n != 8192 {
		t.Errorf("10 tasks: last_checks max_entries %d, want the object's 8192", n)
	}
}
