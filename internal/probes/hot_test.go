package probes

import (
	"errors"
	"io"
	"reflect"
	"testing"
	"time"

	"github.com/klptop/klptop/internal/event"
)

// fakeLink records its attach and close in a shared log.
type fakeLink struct {
	name string
	log  *[]string
}

func (l fakeLink) Close() error {
	*l.log = append(*l.log, "close "+l.name)
	return nil
}

func hotSession(log *[]string, fail string) *Session {
	s := &Session{}
	for _, name := range []string{"release_task", "release_task%return", "wake_up_state"} {
		s.hot = append(s.hot, hotProbe{point: name, counted: len(s.counted), attach: func() (io.Closer, error) {
			if name == fail {
				return nil, errors.New("refused")
			}
			*log = append(*log, "attach "+name)
			return fakeLink{name, log}, nil
		}})
		s.counted = append(s.counted, counted{point: name})
	}
	return s
}

// The hot probes follow the transition the events tell of: on at the
// drain after its init (returns before entries), off after its end
// (entries before returns), with a resync owed each time they went on.
func TestArmHotFollowsTransitions(t *testing.T) {
	var log []string
	s := hotSession(&log, "")
	if s.armHot() || len(log) != 0 {
		t.Fatalf("no transition: armHot attached %v", log)
	}
	s.track(event.Event{Type: event.TransitionInit})
	s.track(event.Event{Type: event.SweepEnd})
	if !s.armHot() || !s.resync.attached {
		t.Fatalf("in a transition: armHot did not attach (resync owed %v)", s.resync.attached)
	}
	if s.armHot() {
		t.Error("armHot attached twice")
	}
	want := []string{"attach wake_up_state", "attach release_task%return", "attach release_task"}
	if !reflect.DeepEqual(log, want) {
		t.Errorf("attach order %v, want %v", log, want)
	}
	for i, h := range s.hot {
		if h.link == nil || s.counted[h.counted].link != h.link {
			t.Errorf("hot %d (%s): link %v, counted %v", i, h.point, h.link, s.counted[h.counted].link)
		}
	}
	s.track(event.Event{Type: event.TransitionReverse})
	if s.armHot() {
		t.Error("a reverse parked or re-attached the probes")
	}
	log = nil
	s.track(event.Event{Type: event.TransitionComplete})
	if s.armHot() || !s.hotOn || len(log) != 0 {
		t.Fatalf("the probes were parked at once after the completion: %v", log)
	}
	if due := time.Until(s.parkDue()); due <= 0 || due > hotLinger {
		t.Fatalf("park due in %v, want within %v", due, hotLinger)
	}
	s.endedAt = s.endedAt.Add(-hotLinger)
	if s.armHot() || s.hotOn {
		t.Fatal("hotLinger after the completion the probes stay on")
	}
	if !s.parkDue().IsZero() {
		t.Error("parked, and a park still due")
	}
	want = []string{"close release_task", "close release_task%return", "close wake_up_state"}
	if !reflect.DeepEqual(log, want) {
		t.Errorf("detach order %v, want %v", log, want)
	}
	for _, h := range s.hot {
		if h.link != nil || s.counted[h.counted].link != nil {
			t.Errorf("%s still linked after parking", h.point)
		}
	}
}

// A resync's snapshot says whether a transition runs: the one the lost
// events ended, or the one they began.
func TestTrackResync(t *testing.T) {
	s := &Session{}
	s.track(event.Event{Type: event.TransitionInit})
	s.track(event.Event{Type: event.Resync})
	s.track(event.Event{Type: event.PatchSnapshot, Patch: "a"})
	if s.transition {
		t.Error("a resync showing no patch in transition left the transition running")
	}
	s.track(event.Event{Type: event.Resync})
	s.track(event.Event{Type: event.PatchSnapshot, Patch: "a"})
	s.track(event.Event{Type: event.PatchSnapshot, Patch: "b", InTransition: true})
	if !s.transition {
		t.Error("a resync showing b in transition did not start one")
	}
	s.track(event.Event{Type: event.TransitionCancel})
	if s.transition {
		t.Error("a cancel left the transition running")
	}
}

// A probe the kernel refuses mid-session is warned of; the others go on.
func TestArmHotWarnsOfRefusal(t *testing.T) {
	var log, warned []string
	s := hotSession(&log, "wake_up_state")
	s.warn = func(m string) { warned = append(warned, m) }
	s.transition = true
	if !s.armHot() {
		t.Fatal("armHot did not attach")
	}
	if len(warned) != 1 || s.hot[2].link != nil || s.hot[0].link == nil {
		t.Errorf("warned %v; links %v %v", warned, s.hot[0].link, s.hot[2].link)
	}
}
