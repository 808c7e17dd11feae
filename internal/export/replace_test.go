package export

import (
	"bytes"
	"encoding/json"
	"slices"
	"strings"
	"testing"
)

const handMadeReplace = `{"format":"klptop-trace","version":"1.4","klptop":"test","kernel":"6.12.0-test","clock":"CLOCK_MONOTONIC","start_mono_ns":1000000000,"attached":[],"missing":[]}
{"t":1100000000,"type":"patch_enable","patch":"b","replace":true,"target":1,"patch_state":0}
{"t":1200000000,"type":"transition_init","patch":"b","target":1,"patch_state":0}
{"t":1300000000,"type":"patch_replace","patch":"b","target":1,"patch_state":0}
{"t":1300000000,"type":"patch_replaced","patch":"a","target":1,"patch_state":0}
{"t":1300000000,"type":"nops_discard","patch":"b","target":1,"patch_state":0}
{"t":1400000000,"type":"transition_complete","patch":"b","target":1,"patch_state":0}
{"t":1450000000,"type":"replaced_free","patch":"b","target":-1,"patch_state":0}
{"t":1500000000,"type":"module_coming","object":"m","target":-1,"patch_state":0}
{"t":1500000000,"type":"module_apply","patch":"b","object":"m","target":-1,"patch_state":0}
`

// Module and atomic-replace events are global instants.
func TestReplaceModuleInstants(t *testing.T) {
	var out bytes.Buffer
	if _, err := Perfetto(strings.NewReader(handMadeReplace), &out); err != nil {
		t.Fatal(err)
	}
	var ct chromeTrace
	if err := json.Unmarshal(out.Bytes(), &ct); err != nil {
		t.Fatal(err)
	}
	var got []string
	for _, e := range ct.TraceEvents {
		if e.Ph == "i" && e.S == "g" && e.Cat != "lost" {
			got = append(got, e.Name)
		}
	}
	want := []string{"b replaces", "a replaced", "b nops discarded", "patches replaced by b freed", "module m coming", "b applied to m"}
	if !slices.Equal(got, want) {
		t.Errorf("global instants %q, want %q", got, want)
	}
}
