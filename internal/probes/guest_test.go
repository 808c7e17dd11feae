package probes

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"os/signal"
	"testing"
	"time"

	"github.com/cilium/ebpf/link"
	"golang.org/x/sys/unix"

	"github.com/klptop/klptop/internal/event"
)

// TestGuestDump runs inside a livepatch-capable guest (KLPTOP_GUEST=1): it
// opens the probes, prints Info, the snapshot and then every event as JSON
// lines until SIGTERM/SIGINT or KLPTOP_GUEST_SECONDS. It checks nothing by
// itself: the guest script drives livepatches and reads the output.
// KLPTOP_GUEST_CLONE=fn.part.0 also puts fn's program on that clone, to
// see whether the clone fires on its own.
func TestGuestDump(t *testing.T) {
	if os.Getenv("KLPTOP_GUEST") == "" {
		t.Skip("set KLPTOP_GUEST=1 in a livepatch guest")
	}
	s, err := Open(Options{Backend: os.Getenv("KLPTOP_BACKEND")})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	enc := json.NewEncoder(os.Stdout)
	enc.Encode(map[string]any{"info": s.Info()})
	if clone := os.Getenv("KLPTOP_GUEST_CLONE"); clone != "" {
		l, err := link.Kprobe(clone, s.coll.Programs["klp_start_transition"], nil)
		if err != nil {
			t.Fatal(err)
		}
		defer l.Close()
	}
	snap, err := s.Snapshot()
	if err != nil {
		t.Fatal(err)
	}
	for _, e := range snap {
		enc.Encode(e)
	}
	ctx, cancel := signal.NotifyContext(context.Background(), unix.SIGTERM, os.Interrupt)
	defer cancel()
	if sec := os.Getenv("KLPTOP_GUEST_SECONDS"); sec != "" {
		var n int
		fmt.Sscan(sec, &n)
		ctx, cancel = context.WithTimeout(ctx, time.Duration(n)*time.Second)
		defer cancel()
	}
	fmt.Println("@@READY@@")
	if err := s.Read(ctx, func(e event.Event) { enc.Encode(e) }); err != nil {
		t.Fatal(err)
	}
}
