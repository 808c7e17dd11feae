package report

import (
	"bytes"
	"encoding/json"
	"reflect"
	"strings"
	"testing"
)

// A hand-made 1.4 trace: b atomically replaces a, then a module is loaded
// and unloaded under b.
const handMadeReplaceModules = `{"format":"klptop-trace","version":"1.4","klptop":"test","kernel":"6.12.0-test","clock":"CLOCK_MONOTONIC","start_wall":"2026-12-02T00:00:00Z","start_mono_ns":1000000000,"attached":["klp_enable_patch"],"missing":[]}
{"t":1000000000,"type":"patch","patch":"a","enabled":true,"target":-1,"patch_state":0}
{"t":1000000000,"type":"snapshot_end","target":-1,"patch_state":0}
{"t":1100000000,"type":"patch_enable","patch":"b","replace":true,"target":1,"patch_state":0}
{"t":1200000000,"type":"transition_init","patch":"b","target":1,"patch_state":0}
{"t":1300000000,"type":"patch_replace","patch":"b","target":1,"patch_state":0}
{"t":1300000000,"type":"patch_replaced","patch":"a","target":1,"patch_state":0}
{"t":1300000000,"type":"nops_discard","patch":"b","target":1,"patch_state":0}
{"t":1400000000,"type":"transition_complete","patch":"b","target":1,"patch_state":0}
{"t":1450000000,"type":"replaced_free","patch":"b","target":-1,"patch_state":0}
{"t":1500000000,"type":"module_coming","object":"m","target":-1,"patch_state":0}
{"t":1500000000,"type":"module_apply","patch":"b","object":"m","target":-1,"patch_state":0}
{"t":1600000000,"type":"module_going","object":"m","target":-1,"patch_state":0}
{"t":1600000000,"type":"module_revert","patch":"b","object":"m","target":-1,"patch_state":0}
`

func TestReplaceAndModules(t *testing.T) {
	var js bytes.Buffer
	sum, err := Run(strings.NewReader(handMadeReplaceModules), &js, Options{JSON: true})
	if err != nil {
		t.Fatal(err)
	}
	if len(sum.UnknownEvents) > 0 {
		t.Errorf("unknown events %v", sum.UnknownEvents)
	}
	var r struct {
		Transitions []Transition `json:"transitions"`
		Summary     Summary      `json:"summary"`
	}
	if err := json.Unmarshal(js.Bytes(), &r); err != nil {
		t.Fatal(err)
	}
	if len(r.Transitions) != 1 || !reflect.DeepEqual(r.Transitions[0].Replace, &Replace{Replaced: []string{"a"}, NopsDiscarded: true}) {
		t.Errorf("transitions %+v", r.Transitions)
	}
	var mods []string
	for _, m := range r.Summary.Modules {
		mods = append(mods, m.Event+" "+m.Module+" "+strings.Join(m.Patches, ","))
	}
	if want := []string{"coming m b", "going m b"}; !reflect.DeepEqual(mods, want) {
		t.Errorf("modules %q, want %q", mods, want)
	}
	var txt bytes.Buffer
	if _, err := Run(strings.NewReader(handMadeReplaceModules), &txt, Options{}); err != nil {
		t.Fatal(err)
	}
	for _, line := range []string{"    replace  unpatched a; nops discarded\n", "module m coming at +0.500s: applied b\n", "module m going at +0.600s: reverted b\n"} {
		if !strings.Contains(txt.String(), line) {
			t.Errorf("text report lacks %q:\n%s", line, txt.String())
		}
	}
}
