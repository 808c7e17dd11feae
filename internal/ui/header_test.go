package ui

import (
	"strings"
	"testing"

	"github.com/klptop/klptop/internal/event"
	"github.com/klptop/klptop/internal/state"
)

// Hand-made: the header says a loss is open until a resync ends it, and
// after it that the picture was repaired.
func TestHeaderLostAndResynced(t *testing.T) {
	s := state.New()
	for _, e := range []event.Event{
		{Time: 1, Type: event.SnapshotEnd, Target: -1},
		{Time: 2, Type: event.Lost, Count: 12, Reason: event.LostRingFull},
	} {
		s.Apply(e)
	}
	if h := renderHeader(DefaultTheme(), Options{}, s, false, 120); !strings.Contains(h, "lost 12 events: counts may be off until a resync") {
		t.Errorf("open loss: %q", h)
	}
	s.Apply(event.Event{Time: 3, Type: event.Resync, Count: 12})
	s.Apply(event.Event{Time: 3, Type: event.SnapshotEnd, Target: -1})
	if h := renderHeader(DefaultTheme(), Options{}, s, false, 120); !strings.Contains(h, "lost 12 events, resynced once") {
		t.Errorf("after the resync: %q", h)
	}
}
