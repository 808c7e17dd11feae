package probes

import (
	"context"
	"os"
	"runtime"
	"testing"
	"time"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/ringbuf"

	"github.com/klptop/klptop/internal/event"
	"github.com/klptop/klptop/internal/ksym"
)

// bpfSpec is klptop's BPF object, for a test that loads it into this
// machine's kernel: without root or kernel BTF the test is skipped.
func bpfSpec(t *testing.T) *ebpf.CollectionSpec {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("needs root")
	}
	if _, err := os.Stat("/sys/kernel/btf/vmlinux"); err != nil {
		t.Skip("no kernel BTF")
	}
	spec, err := loadKlptop()
	if err != nil {
		t.Fatal(err)
	}
	return spec
}

// readSession is a Session without probes: the maps of the real object, so
// Read's ring buffer and lost-event accounting run on any BPF kernel.
func readSession(t *testing.T) *Session {
	t.Helper()
	spec := bpfSpec(t)
	coll, _, _, _, _, err := loadCollection(spec, map[string]bool{iterProg: true}, "", nil)
	if err != nil {
		t.Fatal(err)
	}
	rd, err := ringbuf.NewReader(coll.Maps["events"])
	if err != nil {
		coll.Close()
		t.Fatal(err)
	}
	s := &Session{coll: coll, rd: rd, syms: ksym.New("/proc/kallsyms"), root: "/"}
	t.Cleanup(func() { s.Close() })
	return s
}

func TestReadCancelAndLost(t *testing.T) {
	s := readSession(t)
	// Pretend the ring was full for 3 events.
	if err := s.coll.Variables["lost_events"].Set(uint64(3)); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 3*pollEvery)
	defer cancel()
	var got []event.Event
	start := time.Now()
	if err := s.Read(ctx, func(e event.Event) { got = append(got, e) }); err != nil {
		t.Fatal(err)
	}
	if d := time.Since(start); d > 10*pollEvery {
		t.Errorf("Read returned %v after cancel", d)
	}
	if len(got) != 1 || got[0].Type != event.Lost || got[0].Count != 3 || got[0].Reason != event.LostRingFull {
		t.Errorf("events %+v, want one Lost of 3, ring full", got)
	}
}

func TestReadClose(t *testing.T) {
	s := readSession(t)
	done := make(chan error)
	go func() { done <- s.Read(context.Background(), func(event.Event) {}) }()
	time.Sleep(50 * time.Millisecond)
	s.Close()
	select {
	case err := <-done:
		if err != nil {
			t.Errorf("Read after Close: %v", err)
		}
	case <-time.After(2 * time.Second):
		t.Fatal("Read did not return after Close")
	}
}

func ebpfPossibleCPUs(t *testing.T) int {
	n, err := ebpf.PossibleCPU()
	if err != nil {
		return runtime.NumCPU()
	}
	return n
}
