package probes

import (
	"fmt"
	"strings"
	"testing"

	"github.com/cilium/ebpf/btf"

	"github.com/klptop/klptop/internal/event"
)

// Hand-made BTF in the shape of the kernel's bpf_link_info: the members
// klptop needs sit in anonymous unions and structs.
func TestHasMember(t *testing.T) {
	u64 := &btf.Int{Name: "__u64", Size: 8}
	kprobe := &btf.Struct{Members: []btf.Member{{Name: "addr", Type: u64}, {Name: "missed", Type: u64}}}
	oldKprobe := &btf.Struct{Members: []btf.Member{{Name: "addr", Type: u64}}}
	info := &btf.Struct{Name: "bpf_link_info", Members: []btf.Member{
		{Name: "type", Type: u64},
		{Name: "", Type: &btf.Union{Members: []btf.Member{
			{Name: "kprobe_multi", Type: kprobe},
			{Name: "perf_event", Type: &btf.Struct{Members: []btf.Member{
				{Name: "type", Type: u64},
				{Name: "", Type: &btf.Union{Members: []btf.Member{{Name: "kprobe", Type: &btf.Typedef{Name: "k", Type: oldKprobe}}}}},
			}}},
		}}},
	}}
	for _, c := range []struct {
		path []string
		want bool
	}{
		{[]string{"kprobe_multi", "missed"}, true},
		{[]string{"perf_event", "kprobe", "addr"}, true},
		{[]string{"perf_event", "kprobe", "missed"}, false},
		{[]string{"tracing"}, false},
		{[]string{"type", "missed"}, false},
	} {
		if got := hasMember(info, c.path...); got != c.want {
			t.Errorf("hasMember(%v) = %v, want %v", c.path, got, c.want)
		}
	}
}

// Hand-made: what klptop makes is held until the ring's events before
// it are read, so the stream never goes back in time; a resync's block
// stays whole and in its order.
func TestHoldRelease(t *testing.T) {
	var s Session
	s.hold(event.Event{Time: 50, Type: event.Lost, Count: 3})
	s.hold(event.Event{Time: 40, Type: event.Shadow})
	s.held = append(s.held, event.Event{Time: 60, Type: event.Resync}, event.Event{Time: 60, Type: event.TaskSnapshot, PID: 1},
		event.Event{Time: 60, Type: event.SnapshotEnd})
	s.resync.taken = true
	var got []string
	fn := func(e event.Event) { got = append(got, fmt.Sprintf("%d %s", e.Time, e.Type)) }
	for _, ring := range []uint64{30, 45, 55, 70} {
		s.release(ring, fn)
		fn(event.Event{Time: ring, Type: event.TaskCheck})
	}
	want := "30 task_check, 40 shadow, 45 task_check, 50 lost, 55 task_check, 60 resync, 60 task, 60 snapshot_end, 70 task_check"
	if strings.Join(got, ", ") != want || s.resync.taken || len(s.held) != 0 {
		t.Errorf("got %s\nwant %s (taken %v, %d held)", strings.Join(got, ", "), want, s.resync.taken, len(s.held))
	}
}
