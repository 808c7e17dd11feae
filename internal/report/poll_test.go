package report

import (
	"bytes"
	"encoding/json"
	"strings"
	"testing"
)

// A hand-made polled trace (backend "poll": no sweeps): kworker 7 seen
// pending at three polls is a stall; the second transition, over within
// one poll, is not.
const handMadePolled = `{"format":"klptop-trace","version":"1.3","klptop":"test","kernel":"6.1.0-test","clock":"CLOCK_MONOTONIC","start_mono_ns":1000000000,"backend":"poll","poll_interval_ns":250000000,"attached":[],"missing":[]}
{"t":1000000000,"type":"snapshot_end","target":-1,"patch_state":0}
{"t":1100000000,"type":"transition_init","patch":"p","target":1,"patch_state":0}
{"t":1100000000,"type":"transition_start","patch":"p","target":1,"patch_state":0}
{"t":1350000000,"type":"task_check","pid":7,"tgid":7,"comm":"kworker/0:1","reason":"sleeping","func":"f","target":0,"patch_state":0}
{"t":1600000000,"type":"task_check","pid":7,"tgid":7,"comm":"kworker/0:1","reason":"sleeping","func":"f","target":0,"patch_state":0}
{"t":1850000000,"type":"task_check","pid":7,"tgid":7,"comm":"kworker/0:1","reason":"sleeping","func":"f","target":0,"patch_state":0}
{"t":2100000000,"type":"task_switch","pid":7,"tgid":7,"comm":"kworker/0:1","target":0,"patch_state":1}
{"t":2100000000,"type":"transition_complete","patch":"p","target":1,"patch_state":0}
{"t":3000000000,"type":"transition_init","patch":"p","target":0,"patch_state":0}
{"t":3000000000,"type":"transition_start","patch":"p","target":0,"patch_state":0}
{"t":3250000000,"type":"task_check","pid":8,"tgid":8,"comm":"bash","reason":"running","target":0,"patch_state":1}
{"t":3500000000,"type":"transition_complete","patch":"p","target":0,"patch_state":0}
`

func TestPolledStall(t *testing.T) {
	var js bytes.Buffer
	if _, err := Run(strings.NewReader(handMadePolled), &js, Options{JSON: true}); err != nil {
		t.Fatal(err)
	}
	var r struct {
		Transitions []Transition `json:"transitions"`
	}
	if err := json.Unmarshal(js.Bytes(), &r); err != nil {
		t.Fatal(err)
	}
	if len(r.Transitions) != 2 {
		t.Fatalf("transitions %+v", r.Transitions)
	}
	if tr := r.Transitions[0]; !tr.Stall || len(tr.Blockers) != 1 || tr.Blockers[0].PID != 7 || tr.Blockers[0].Checks != 3 {
		t.Errorf("first transition %+v", tr)
	}
	if tr := r.Transitions[1]; tr.Stall {
		t.Errorf("second transition, one poll long, is a stall: %+v", tr)
	}
}
