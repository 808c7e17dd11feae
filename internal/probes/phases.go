package probes

import "time"

// Phase is one step of Open and how long it took: where a slow start goes.
type Phase struct {
	Name string
	Took time.Duration
}

// stopwatch times Open's steps one after the other.
type stopwatch struct {
	last   time.Time
	phases []Phase
}

func newStopwatch() *stopwatch { return &stopwatch{last: time.Now()} }

// lap ends the step name, begun where the last one ended.
func (w *stopwatch) lap(name string) {
	now := time.Now()
	w.phases = append(w.phases, Phase{Name: name, Took: now.Sub(w.last)})
	w.last = now
}
