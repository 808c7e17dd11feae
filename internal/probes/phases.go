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

// lap ends the step name, begun where the last one ended, and returns its
// time.
func (w *stopwatch) lap(name string) time.Duration {
	now := time.Now()
	took := now.Sub(w.last)
	w.phases = append(w.phases, Phase{Name: name, Took: took})
	w.last = now
	return took
}
