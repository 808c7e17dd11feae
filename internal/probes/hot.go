package probes

import (
	"fmt"
	"io"
	"strings"
	"time"

	"github.com/klptop/klptop/internal/event"
)

// hotProbe is an attached probe of a function that runs all over the kernel
// (probe.hot): its link is there only while a transition runs.
type hotProbe struct {
	point   string // as in Info.Attached
	attach  func() (io.Closer, error)
	link    io.Closer // nil while parked
	counted int       // its entry in Session.counted
}

// track follows, from the events Read hands on, whether a transition runs.
// A resync's snapshot says it again: its patches follow the Resync.
func (s *Session) track(e event.Event) {
	switch e.Type {
	case event.TransitionInit:
		s.transition = true
	case event.TransitionComplete, event.TransitionCancel, event.Resync:
		if s.transition {
			s.endedAt = time.Now()
		}
		s.transition = false
	case event.PatchSnapshot:
		if e.InTransition {
			s.transition = true
		}
	}
}

// hotLinger is how long the hot probes stay after a transition: transitions
// come in runs (an atomic replace, a disable after an enable), and a detach
// the moment one ends would have klptop running when the next one's first
// sweep, in the same write, checks it.
const hotLinger = 2 * time.Second

// parkDue is when Read should come back to park the hot probes; zero if
// not owed.
func (s *Session) parkDue() time.Time {
	if !s.hotOn || s.transition || len(s.hot) == 0 {
		return time.Time{}
	}
	return s.endedAt.Add(hotLinger)
}

// armHot attaches the hot probes when a transition runs and parks them
// hotLinger after the last one ended; true if it attached them, and then a
// resync is owed: the forks and exits since the transition began were not
// seen. Read calls it with the ring read empty and no hold: the sweep that
// woke it has ended, and the next one is about a second away.
func (s *Session) armHot() bool {
	if len(s.hot) == 0 || s.hotOn == s.transition {
		return false
	}
	if !s.transition {
		if due := s.parkDue(); !due.IsZero() && !time.Now().Before(due) {
			s.parkHot()
		}
		return false
	}
	var failed []string
	// Returns before entries: an entry's hand-over finds its return there.
	for i := len(s.hot) - 1; i >= 0; i-- {
		h := &s.hot[i]
		if h.link != nil {
			continue // a park that a hold cut short
		}
		l, err := h.attach()
		if err != nil {
			failed = append(failed, fmt.Sprintf("%s: %v", h.point, err))
			continue
		}
		h.link = l
		s.counted[h.counted].link = l
	}
	s.hotOn = true
	s.resync.attached = true
	if len(failed) > 0 && s.warn != nil {
		s.warn("not attached for this transition (the resyncs show what they miss): " + strings.Join(failed, "; "))
	}
	return true
}

// parkHot detaches the hot probes, entries before returns, keeping the
// runs their links missed. A hold (a transition starting) stops it: the
// rest stay on for that transition.
func (s *Session) parkHot() {
	for i := range s.hot {
		h := &s.hot[i]
		if h.link == nil {
			continue
		}
		if s.holding() {
			return
		}
		c := &s.counted[h.counted]
		c.gone += linkMissed(h.link)
		if err := h.link.Close(); err != nil && s.warn != nil {
			s.warn("detach " + h.point + ": " + err.Error())
		}
		h.link, c.link = nil, nil
	}
	s.hotOn = false
}
