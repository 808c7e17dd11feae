package report

import (
	"bytes"
	"encoding/json"
	"reflect"
	"strings"
	"testing"

	"github.com/klptop/klptop/internal/event"
)

// A hand-made 1.3 trace: test_klp_state2 (klp_state id 1 version 2)
// patching, and the shadow counts of two ids, the second updated once.
const handMadeStatesShadows = `{"format":"klptop-trace","version":"1.3","klptop":"test","kernel":"6.1.0-test","clock":"CLOCK_MONOTONIC","start_wall":"2026-12-02T00:00:00Z","start_mono_ns":1000000000,"attached":["klp_enable_patch","klp_shadow_alloc","klp_shadow_alloc%return"],"missing":[]}
{"t":1000000000,"type":"snapshot_end","target":-1,"patch_state":0}
{"t":1100000000,"type":"patch_enable","patch":"test_klp_state2","replace":true,"target":1,"patch_state":0}
{"t":1100000000,"type":"klp_state","patch":"test_klp_state2","id":1,"version":2,"target":0,"patch_state":0}
{"t":1200000000,"type":"transition_init","patch":"test_klp_state2","target":1,"patch_state":0}
{"t":1300000000,"type":"shadow","id":4660,"allocs":3,"live":3,"calls":{"klp_shadow_alloc":1,"klp_shadow_get_or_alloc":5},"target":0,"patch_state":0}
{"t":1400000000,"type":"transition_complete","patch":"test_klp_state2","target":1,"patch_state":0}
{"t":1500000000,"type":"shadow","id":4661,"allocs":3,"frees":3,"calls":{"klp_shadow_alloc":3,"klp_shadow_free_all":1},"target":0,"patch_state":0}
`

func TestStatesAndShadows(t *testing.T) {
	var js bytes.Buffer
	if _, err := Run(strings.NewReader(handMadeStatesShadows), &js, Options{JSON: true}); err != nil {
		t.Fatal(err)
	}
	var r struct {
		Transitions []Transition `json:"transitions"`
		Summary     Summary      `json:"summary"`
	}
	if err := json.Unmarshal(js.Bytes(), &r); err != nil {
		t.Fatal(err)
	}
	if len(r.Transitions) != 1 || !reflect.DeepEqual(r.Transitions[0].KlpStates, []KlpState{{ID: 1, Version: 2}}) {
		t.Errorf("transitions %+v", r.Transitions)
	}
	want := []Shadow{
		{ID: 0x1234, Allocs: 3, Live: 3, Calls: map[string]uint64{event.ShadowAlloc: 1, event.ShadowGetOrAlloc: 5}},
		{ID: 0x1235, Allocs: 3, Frees: 3, Calls: map[string]uint64{event.ShadowAlloc: 3, event.ShadowFreeAll: 1}},
	}
	if !reflect.DeepEqual(r.Summary.Shadows, want) || !r.Summary.ShadowsObservable {
		t.Errorf("shadows %+v (observable %v), want %+v", r.Summary.Shadows, r.Summary.ShadowsObservable, want)
	}

	var txt bytes.Buffer
	if _, err := Run(strings.NewReader(handMadeStatesShadows), &txt, Options{}); err != nil {
		t.Fatal(err)
	}
	for _, line := range []string{
		"    klp_state  id 1 v2\n",
		"shadow variables, counted from the start of the recording:\n",
		"    ID      ALLOCS  FREES  LIVE  CALLS\n",
		"    0x1234  3       0      3     klp_shadow_alloc 1, klp_shadow_get_or_alloc 5\n",
		"    0x1235  3       3      0     klp_shadow_alloc 3, klp_shadow_free_all 1\n",
	} {
		if !strings.Contains(txt.String(), line) {
			t.Errorf("text report lacks %q:\n%s", line, txt.String())
		}
	}
}
