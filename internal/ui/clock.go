package ui

import "time"

// Clock is the UI's notion of now, in event time (CLOCK_MONOTONIC ns), so
// that elapsed times keep advancing between events. Live mode extrapolates
// from the last event by wall time; replay can drive it from the trace.
type Clock interface {
	// Observe is told the time of every event applied.
	Observe(eventTime uint64)
	// Now is the current event time.
	Now() uint64
}

// LiveClock extrapolates: the last event's time plus the wall time since it
// arrived. wall is time.Now unless a test injects another.
func LiveClock(wall func() time.Time) Clock {
	if wall == nil {
		wall = time.Now
	}
	return &liveClock{wall: wall}
}

type liveClock struct {
	wall   func() time.Time
	last   uint64
	lastAt time.Time
}

func (c *liveClock) Observe(t uint64) {
	if t >= c.last {
		c.last, c.lastAt = t, c.wall()
	}
}

func (c *liveClock) Now() uint64 {
	if c.lastAt.IsZero() {
		return c.last
	}
	d := c.wall().Sub(c.lastAt)
	if d < 0 {
		d = 0
	}
	return c.last + uint64(d)
}

// EventClock stands still between events: now is the latest event time.
// Replays and tests use it.
func EventClock() Clock { return &eventClock{} }

type eventClock struct{ last uint64 }

func (c *eventClock) Observe(t uint64) { c.last = max(c.last, t) }
func (c *eventClock) Now() uint64      { return c.last }

// FixedClock always says t.
func FixedClock(t uint64) Clock { return fixedClock(t) }

type fixedClock uint64

func (fixedClock) Observe(uint64) {}
func (c fixedClock) Now() uint64  { return uint64(c) }
