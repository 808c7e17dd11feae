package state

import (
	"reflect"
	"testing"

	"github.com/klptop/klptop/internal/event"
)

// Hand-made events: test_klp_state2 enabled over test_klp_state, each with
// one klp_state; shadow counts that grow, then an id freed to zero.
func TestKlpStatesAndShadows(t *testing.T) {
	s := New()
	for _, e := range []event.Event{
		{Time: 1, Type: event.PatchSnapshot, Patch: "test_klp_state", Enabled: true},
		{Time: 1, Type: event.KlpState, Patch: "test_klp_state", ID: 1, Version: 1},
		{Time: 1, Type: event.SnapshotEnd, Target: -1},
		{Time: 2, Type: event.PatchEnable, Patch: "test_klp_state2", Target: 1},
		{Time: 2, Type: event.KlpState, Patch: "test_klp_state2", ID: 1, Version: 2},
		{Time: 2, Type: event.KlpState, Patch: "test_klp_state2", ID: 0, Version: 9}, // the terminator: ignored
		{Time: 3, Type: event.Shadow, ID: 0x1235, Allocs: 3, Live: 3, Calls: map[string]uint64{event.ShadowAlloc: 3}},
		{Time: 3, Type: event.Shadow, ID: 0x1234, Allocs: 3, Live: 3, Calls: map[string]uint64{event.ShadowAlloc: 1, event.ShadowGetOrAlloc: 2}},
		{Time: 4, Type: event.Shadow, ID: 0x1235, Allocs: 3, Frees: 3, Calls: map[string]uint64{event.ShadowAlloc: 3, event.ShadowFreeAll: 1}},
	} {
		s.Apply(e)
	}
	if got := s.Patch("test_klp_state").States; !reflect.DeepEqual(got, []KlpState{{1, 1}}) {
		t.Errorf("test_klp_state states %v", got)
	}
	if got := s.Patch("test_klp_state2").States; !reflect.DeepEqual(got, []KlpState{{1, 2}}) {
		t.Errorf("test_klp_state2 states %v", got)
	}
	list := s.ShadowList()
	if len(list) != 2 || list[0].ID != 0x1234 || list[1].ID != 0x1235 {
		t.Fatalf("shadows %+v", list)
	}
	if sh := list[1]; sh.Allocs != 3 || sh.Frees != 3 || sh.Live != 0 || sh.Last != 4 || sh.Calls[event.ShadowFreeAll] != 1 {
		t.Errorf("0x1235: %+v", sh)
	}
	if sh := list[0]; sh.Live != 3 || sh.Calls[event.ShadowGetOrAlloc] != 2 {
		t.Errorf("0x1234: %+v", sh)
	}
	// A re-enable of the same name starts its states afresh.
	s.Apply(event.Event{Time: 5, Type: event.PatchEnable, Patch: "test_klp_state"})
	if got := s.Patch("test_klp_state").States; got != nil {
		t.Errorf("after a new klp_enable_patch: %v", got)
	}
}
