package probes

import (
	"errors"
	"maps"
	"slices"
	"strings"
	"testing"

	"github.com/cilium/ebpf/asm"
)

func TestPickBackend(t *testing.T) {
	ok := func() error { return nil }
	no := func() error { return errors.New("refused") }
	for _, tc := range []struct {
		want          string
		fentry, multi func() error
		got, err      string
	}{
		{"", ok, ok, BackendFentry, ""},
		{BackendAuto, ok, no, BackendFentry, ""},
		{BackendAuto, no, ok, BackendKprobeMulti, ""},
		{BackendAuto, no, no, BackendKprobe, ""},
		{BackendFentry, ok, no, BackendFentry, ""},
		{BackendFentry, no, ok, "", "fentry: refused"},
		{BackendKprobeMulti, ok, ok, BackendKprobeMulti, ""},
		{BackendKprobeMulti, ok, no, "", "kprobe-multi: refused"},
		{BackendKprobe, ok, ok, BackendKprobe, ""},
		{"uprobe", ok, ok, "", "unknown backend"},
	} {
		got, err := pickBackend(tc.want, tc.fentry, tc.multi)
		if got != tc.got {
			t.Errorf("pickBackend(%q, fentry %v, multi %v) = %q, want %q", tc.want, tc.fentry(), tc.multi(), got, tc.got)
		}
		if tc.err == "" && err != nil || tc.err != "" && (err == nil || !strings.Contains(err.Error(), tc.err)) {
			t.Errorf("pickBackend(%q, fentry %v, multi %v): error %v, want %q", tc.want, tc.fentry(), tc.multi(), err, tc.err)
		}
		// A refused forced backend must reach the caller as a BPF problem:
		// that is what turns it into klptop's one-line error.
		if tc.err != "" && tc.want != "uprobe" && !errors.Is(err, ErrNoBPF) {
			t.Errorf("pickBackend(%q): %v does not wrap ErrNoBPF", tc.want, err)
		}
	}
}

// A probe gets its fentry twin only on one function with BTF; everything
// else stays a kprobe and says why.
func TestFentryTargets(t *testing.T) {
	attach := map[string][]string{
		"klp_enable_patch":                   {"klp_enable_patch"},
		"klp_start_transition":               {"klp_start_transition.part.0"},
		"klp_cancel_transition":              {"klp_cancel_transition.isra.0", "klp_cancel_transition.constprop.0"},
		"klp_signal":                         {"wake_up_state"},
		"klp_check_and_switch_task":          {"klp_check_and_switch_task"},
		"klp_check_and_switch_task_ret":      {"klp_check_and_switch_task"},
		"funcs_changed_klp_start_transition": {"klp_start_transition.part.0"},
	}
	inBTF := func(fn string) bool { return fn != "wake_up_state" && !strings.Contains(fn, ".") }
	targets, fallback := fentryTargets(attach, inBTF)
	wantTargets := map[string]string{
		"klp_enable_patch":          "klp_enable_patch",
		"klp_check_and_switch_task": "klp_check_and_switch_task",
	}
	if len(targets) != len(wantTargets) {
		t.Errorf("targets %v, want %v", targets, wantTargets)
	}
	for prog, sym := range wantTargets {
		if targets[prog] != sym {
			t.Errorf("%s: target %q, want %q", prog, targets[prog], sym)
		}
	}
	for prog, want := range map[string]string{
		"klp_start_transition":               "compiler clone klp_start_transition.part.0",
		"funcs_changed_klp_start_transition": "reliable stack check",
		"klp_cancel_transition":              "one function",
		"klp_signal":                         "wake_up_state not in the kernel BTF",
		"klp_check_and_switch_task_ret":      "reliable stack check",
	} {
		if !strings.Contains(fallback[prog], want) {
			t.Errorf("%s: fallback %q, want it to say %q", prog, fallback[prog], want)
		}
	}
	if len(targets)+len(fallback) != len(attach) {
		t.Errorf("%d targets and %d fallbacks for %d planned probes", len(targets), len(fallback), len(attach))
	}
	if got := probeTarget(attach, inBTF); got != "klp_enable_patch" {
		t.Errorf("probeTarget = %q, want the first fentry target, klp_enable_patch", got)
	}
	if got := probeTarget(attach, func(string) bool { return false }); got != "" {
		t.Errorf("probeTarget without BTF = %q", got)
	}
}

// Info.Fallback names probe points as Attached does, once each, and leaves
// out what did not attach at all.
func TestFallbackList(t *testing.T) {
	attach := map[string][]string{
		"klp_start_transition":                  {"klp_start_transition.part.0"},
		"klp_complete_transition":               {"klp_complete_transition"},
		"funcs_changed_klp_complete_transition": {"klp_complete_transition"},
		"klp_signal":                            {"wake_up_state"},
	}
	why := map[string]string{
		"klp_start_transition":                  "clone",
		"klp_complete_transition":               "refused",
		"funcs_changed_klp_complete_transition": "refused",
		"klp_signal":                            "no BTF",
		"klp_enable_patch":                      "not planned",
	}
	got := fallbackList(attach, why, []Missing{{Symbol: "wake_up_state", Why: "attach: busy"}})
	want := []Missing{
		{Symbol: "klp_start_transition.part.0", Why: "clone"},
		{Symbol: "klp_complete_transition%return", Why: "refused"},
	}
	if len(got) != len(want) {
		t.Fatalf("fallbackList = %v, want %v", got, want)
	}
	for i := range want {
		if got[i] != want[i] {
			t.Errorf("fallbackList[%d] = %v, want %v", i, got[i], want[i])
		}
	}
}

// An fentry twin the kernel will not load (here: a target it does not
// have) is swapped for its kprobe program, not lost.
func TestLoadCollectionFallsBackToKprobe(t *testing.T) {
	spec := bpfSpec(t)
	var start probe
	for _, p := range probes {
		if p.prog == "klp_start_transition" {
			start = p
		}
	}
	spec.Programs[twin(start)].AttachTo = "klptop_no_such_function"
	keep := map[string]bool{iterProg: true, twin(start): true}
	coll, _, _, rejected, _, err := loadCollection(spec, keep, "", nil)
	if err != nil {
		t.Fatal(err)
	}
	defer coll.Close()
	if len(rejected) != 1 || !rejected[0].fellBack || rejected[0].prog != start.prog ||
		!strings.HasPrefix(rejected[0].why, "fentry refused: ") {
		t.Fatalf("rejected %+v, want klp_start_transition's twin refused and fallen back", rejected)
	}
	t.Logf("why: %s", rejected[0].why)
	if coll.Programs[start.prog] == nil || coll.Programs[twin(start)] != nil {
		t.Errorf("loaded %v, want the kprobe program instead of the twin", slices.Collect(maps.Keys(coll.Programs)))
	}
}

// A sweep probe the verifier refuses (here: its return program made to
// return an unset register) takes its partner with it and makes the maps
// again with sweep_probed false, under the programs loaded after it too.
func TestLoadCollectionSweepRefused(t *testing.T) {
	spec := bpfSpec(t)
	if err := spec.Variables["sweep_probed"].Set(true); err != nil {
		t.Fatal(err)
	}
	spec.Programs["klp_try_complete_transition_ret"].Instructions = asm.Instructions{asm.Return()}
	keep := map[string]bool{iterProg: true, "klp_try_complete_transition": true, "klp_try_complete_transition_ret": true, "klp_start_transition": true}
	coll, _, _, rejected, loads, err := loadCollection(spec, keep, "", nil)
	if err != nil {
		t.Fatal(err)
	}
	defer coll.Close()
	got := slices.Sorted(maps.Keys(coll.Programs))
	if want := []string{"klp_start_transition", iterProg}; !slices.Equal(got, want) {
		t.Errorf("loaded %v, want %v", got, want)
	}
	if len(rejected) != 2 || rejected[0].symbol != sweepSymbol || rejected[1].symbol != sweepSymbol {
		t.Errorf("rejected %+v, want both sweep probes", rejected)
	}
	var probed bool
	if err := coll.Variables["sweep_probed"].Get(&probed); err != nil || probed {
		t.Errorf("sweep_probed %v (%v) after the sweep probe was refused", probed, err)
	}
	// The iterator and the sweep's entry went first; the iterator is
	// loaded again over the new maps.
	if loads != 5 {
		t.Errorf("%d program loads, want 5 (iterator, sweep entry, sweep return, iterator again, start)", loads)
	}
	for _, r := range rejected {
		t.Logf("%s: %s", r.prog, r.why)
	}
}
