package probes

import (
	"io"
	"time"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/btf"
	"github.com/cilium/ebpf/link"

	"github.com/klptop/klptop/internal/event"
)

// counted is one attached probe whose losses the kernel counts: the runs
// its kprobe missed (the link's missed count) and the runs of its program
// the kernel skipped because a BPF program was already running on that
// CPU (the program's recursion_misses; for an fentry program the only
// count there is).
type counted struct {
	point string // as in Info.Attached
	link  io.Closer
	prog  *ebpf.Program
	// The counts last reported.
	missed, recursion uint64
	// gone: the missed counts of its links closed before (a hot probe's).
	gone uint64
}

// lossCounters says which loss causes this kernel counts, from its BTF:
// the missed count of kprobe links (bpf_link_info's perf_event.kprobe and
// kprobe_multi "missed", 6.7+) and the programs' recursion_misses
// (bpf_prog_info, 5.12+). The ring's drops klptop counts itself.
func lossCounters(cache *btf.Cache) (missed, recursion bool) {
	spec, err := cache.Kernel()
	if err != nil {
		return false, false
	}
	var link, prog *btf.Struct
	if spec.TypeByName("bpf_link_info", &link) == nil {
		missed = hasMember(link, "kprobe_multi", "missed") && hasMember(link, "perf_event", "kprobe", "missed")
	}
	if spec.TypeByName("bpf_prog_info", &prog) == nil {
		recursion = hasMember(prog, "recursion_misses")
	}
	return missed, recursion
}

// hasMember: t has the member path, looking through anonymous unions and
// structs as C does.
func hasMember(t btf.Type, path ...string) bool {
	for _, p := range path {
		m := member(t, p)
		if m == nil {
			return false
		}
		t = m.Type
	}
	return true
}

func member(t btf.Type, name string) *btf.Member {
	var ms []btf.Member
	switch v := btf.UnderlyingType(t).(type) {
	case *btf.Struct:
		ms = v.Members
	case *btf.Union:
		ms = v.Members
	default:
		return nil
	}
	for i := range ms {
		if ms[i].Name == name {
			return &ms[i]
		}
		if ms[i].Name == "" {
			if m := member(ms[i].Type, name); m != nil {
				return m
			}
		}
	}
	return nil
}

// linkMissed sums the missed counts of a probe's kprobe links.
func linkMissed(l io.Closer) uint64 {
	switch v := l.(type) {
	case multiLink:
		var n uint64
		for _, x := range v {
			n += linkMissed(x)
		}
		return n
	case link.Link:
		info, err := v.Info()
		if err != nil {
			return 0
		}
		if km := info.KprobeMulti(); km != nil {
			return km.Missed
		}
		if pe := info.PerfEvent(); pe != nil {
			if kp := pe.Kprobe(); kp != nil {
				return kp.Missed
			}
		}
	}
	return 0
}

// LossCounted lists the causes of loss this session counts (event.Lost*).
func (s *Session) lossCounted() []string {
	out := []string{event.LostRingFull, event.LostUndecodable}
	if s.countMissed {
		out = append(out, event.LostMissed)
	}
	if s.countRecursion {
		out = append(out, event.LostRecursion)
	}
	return out
}

// reportLost sends a Lost event for every loss counted since the last
// call, and returns how many events were lost.
func (s *Session) reportLost(fn func(event.Event)) uint64 {
	now := time.Now()
	window := uint64(now.Sub(s.lostChecked))
	if s.lostChecked.IsZero() {
		window = 0
	}
	s.lostChecked = now
	s.placePending()   // same tick: callbacks of patch modules that came live
	s.reportShadow(fn) // same tick: shadow variable counts that changed
	t := monotonicNow()
	var lost uint64
	emit := func(n uint64, cause, point string) {
		if n == 0 {
			return
		}
		lost += n
		fn(event.Event{Time: t, Type: event.Lost, Count: n, Reason: cause, Func: point, Duration: window})
	}
	var total uint64
	if v := s.coll.Variables["lost_events"]; v != nil && v.Get(&total) == nil && total > s.lostSeen {
		emit(total-s.lostSeen, event.LostRingFull, "")
		s.lostSeen = total
	}
	if s.undecodable > s.undecodableSeen {
		emit(s.undecodable-s.undecodableSeen, event.LostUndecodable, "")
		s.undecodableSeen = s.undecodable
	}
	for i := range s.counted {
		c := &s.counted[i]
		if s.countMissed {
			if n := c.gone + linkMissed(c.link); n > c.missed {
				emit(n-c.missed, event.LostMissed, c.point)
				c.missed = n
			}
		}
		if s.countRecursion && c.prog != nil {
			if st, err := c.prog.Stats(); err == nil && st.RecursionMisses > c.recursion {
				emit(st.RecursionMisses-c.recursion, event.LostRecursion, c.point)
				c.recursion = st.RecursionMisses
			}
		}
	}
	return lost
}
