package report

import (
	"bytes"
	"encoding/json"
	"strings"
	"testing"
)

// A hand-made 1.5 trace: test_klp_callbacks_demo patching (its pre-patch
// callback bracketed, its post-patch one probed), a module load it
// applies to and its unload (no transition: not the next unpatching's), its unpatching (pre-unpatch before the transition, post-unpatch
// in it), then an enable whose pre-patch callback fails with -19.
const handMadeCallbacks = `{"format":"klptop-trace","version":"1.5","klptop":"test","kernel":"6.1.0-test","clock":"CLOCK_MONOTONIC","start_wall":"2026-12-03T00:00:00Z","start_mono_ns":1000000000,"attached":["klp_enable_patch","klp_object.callbacks"],"missing":[]}
{"t":1000000000,"type":"snapshot_end","target":-1,"patch_state":0}
{"t":1100000000,"type":"patch_enable","patch":"demo","target":1,"patch_state":0}
{"t":1200000000,"type":"transition_init","patch":"demo","target":1,"patch_state":0}
{"t":1210000000,"type":"callback","patch":"demo","object":"vmlinux","callback":"pre_patch","func":"pre_patch_callback","duration_ns":2000000,"bracketed":true,"target":0,"patch_state":0}
{"t":1300000000,"type":"transition_start","patch":"demo","target":1,"patch_state":0}
{"t":1390000000,"type":"callback","patch":"demo","object":"vmlinux","callback":"post_patch","func":"post_patch_callback","duration_ns":30000,"target":0,"patch_state":0}
{"t":1400000000,"type":"transition_complete","patch":"demo","target":1,"patch_state":0}
{"t":1500000000,"type":"module_coming","object":"test_klp_callbacks_mod","target":0,"patch_state":0}
{"t":1510000000,"type":"callback","patch":"demo","object":"test_klp_callbacks_mod","callback":"pre_patch","func":"pre_patch_callback","duration_ns":40000,"target":0,"patch_state":0}
{"t":1600000000,"type":"module_going","object":"test_klp_callbacks_mod","target":0,"patch_state":0}
{"t":1610000000,"type":"callback","patch":"demo","object":"test_klp_callbacks_mod","callback":"pre_unpatch","func":"pre_unpatch_callback","duration_ns":41000,"target":0,"patch_state":0}
{"t":2000000000,"type":"callback","patch":"demo","object":"vmlinux","callback":"pre_unpatch","func":"pre_unpatch_callback","duration_ns":50000,"target":0,"patch_state":0}
{"t":2100000000,"type":"transition_init","patch":"demo","target":0,"patch_state":0}
{"t":2290000000,"type":"callback","patch":"demo","object":"vmlinux","callback":"post_unpatch","func":"post_unpatch_callback","duration_ns":60000,"target":0,"patch_state":0}
{"t":2300000000,"type":"transition_complete","patch":"demo","target":0,"patch_state":0}
{"t":3000000000,"type":"patch_enable","patch":"demo","target":1,"patch_state":0}
{"t":3100000000,"type":"transition_init","patch":"demo","target":1,"patch_state":0}
{"t":3200000000,"type":"transition_cancel","patch":"demo","target":1,"patch_state":0}
{"t":3210000000,"type":"callback","patch":"demo","object":"vmlinux","callback":"pre_patch","func":"pre_patch_callback","duration_ns":3000000,"ret":-19,"bracketed":true,"target":0,"patch_state":0}
`

func TestCallbacks(t *testing.T) {
	var js bytes.Buffer
	if _, err := Run(strings.NewReader(handMadeCallbacks), &js, Options{JSON: true}); err != nil {
		t.Fatal(err)
	}
	var r struct {
		Transitions []Transition `json:"transitions"`
		Summary     Summary      `json:"summary"`
	}
	if err := json.Unmarshal(js.Bytes(), &r); err != nil {
		t.Fatal(err)
	}
	if len(r.Transitions) != 3 {
		t.Fatalf("%d transitions, want 3", len(r.Transitions))
	}
	kinds := func(cs []Callback) (out []string) {
		for _, c := range cs {
			out = append(out, c.Callback+"/"+c.Object)
		}
		return out
	}
	for i, want := range [][]string{
		{"pre_patch/vmlinux", "post_patch/vmlinux"},
		{"pre_unpatch/vmlinux", "post_unpatch/vmlinux"},
		nil,
	} {
		if got := kinds(r.Transitions[i].Callbacks); strings.Join(got, " ") != strings.Join(want, " ") {
			t.Errorf("transition %d callbacks %v, want %v", i+1, got, want)
		}
	}
	if c := r.Transitions[0].Callbacks[0]; !c.Bracketed || c.DurationNs != 2000000 || c.Func != "pre_patch_callback" {
		t.Errorf("bracketed pre_patch %+v", c)
	}
	if n := len(r.Summary.Callbacks); n != 7 || !r.Summary.CallbacksObservable {
		t.Fatalf("summary: %d callbacks (observable %v), want 6", n, r.Summary.CallbacksObservable)
	}
	if c := r.Summary.Callbacks[2]; c.InTransition || c.Object != "test_klp_callbacks_mod" {
		t.Errorf("module load's callback %+v", c)
	}
	if c := r.Summary.Callbacks[3]; c.InTransition || c.Callback != "pre_unpatch" {
		t.Errorf("module unload's callback %+v", c)
	}
	if c := r.Summary.Callbacks[6]; !c.InTransition || c.Ret != -19 {
		t.Errorf("failed pre_patch %+v", c)
	}

	var txt bytes.Buffer
	if _, err := Run(strings.NewReader(handMadeCallbacks), &txt, Options{}); err != nil {
		t.Fatal(err)
	}
	for _, line := range []string{
		"    callbacks  pre_patch vmlinux 2ms (timed around it), post_patch vmlinux 30µs\n",
		"    callbacks  pre_unpatch vmlinux 50µs, post_unpatch vmlinux 60µs\n",
		"callback pre_patch_callback of demo at +0.510s: pre_patch test_klp_callbacks_mod 40µs (module load or unload)\n",
		"callback pre_unpatch_callback of demo at +0.610s: pre_unpatch test_klp_callbacks_mod 41µs (module load or unload)\n",
		"callback pre_patch_callback of demo at +2.210s: pre_patch vmlinux 3ms (timed around it) returned -19 (the enable or module load failed)\n",
	} {
		if !strings.Contains(txt.String(), line) {
			t.Errorf("text report lacks %q:\n%s", line, txt.String())
		}
	}
}
