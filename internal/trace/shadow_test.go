package trace

import (
	"reflect"
	"testing"

	"github.com/klptop/klptop/internal/event"
)

// Hand-made klp_state and shadow events (format 1.3) read back as written.
func TestRoundTripStatesShadows(t *testing.T) {
	evs := []event.Event{
		{Time: 1, Type: event.KlpState, Patch: "test_klp_state2", ID: 1, Version: 2},
		{Time: 2, Type: event.Shadow, ID: 0x1234, Allocs: 3, Frees: 3,
			Calls: map[string]uint64{event.ShadowAlloc: 1, event.ShadowGetOrAlloc: 5, event.ShadowFree: 3}},
		{Time: 3, Type: event.Shadow, ID: 0x1235, Allocs: 1, Frees: 4, Live: -3,
			Calls: map[string]uint64{event.ShadowFreeAll: 1}},
	}
	_, got, err := readAll(t, write(t, evs))
	if err != nil {
		t.Fatal(err)
	}
	if !reflect.DeepEqual(got, evs) {
		t.Errorf("read back\n%+v\nwant\n%+v", got, evs)
	}
}
