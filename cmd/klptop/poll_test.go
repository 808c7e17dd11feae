package main

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/klptop/klptop/internal/trace"
)

// The poll backend keeps the rule: no livepatch (or no root) is one line
// and exit 2, never a silent poll of nothing.
func TestPollNoLivepatchHere(t *testing.T) {
	if _, err := os.Stat("/sys/kernel/livepatch"); err == nil {
		t.Skip("this kernel has livepatch; the VM tests cover it")
	}
	f := filepath.Join(t.TempDir(), "t.jsonl")
	for _, args := range [][]string{
		{"--backend", "poll"},
		{"record", "--backend", "poll", "-o", f},
	} {
		code, _, stderr := runArgs(args...)
		if code != 2 || strings.Count(stderr, "\n") != 1 ||
			!(strings.Contains(stderr, "no livepatch support") || strings.Contains(stderr, "needs root")) {
			t.Errorf("%q: exit %d, stderr %q", args, code, stderr)
		}
	}
	if _, err := os.Stat(f); err == nil {
		t.Errorf("record --backend poll wrote %s on a kernel without livepatch", f)
	}
}

func TestPollIntervalTooShort(t *testing.T) {
	code, _, stderr := runArgs("record", "--backend", "poll", "--poll-interval", "1ms", "-o", filepath.Join(t.TempDir(), "t"))
	if code != 2 || !strings.Contains(stderr, "--poll-interval 1ms") {
		t.Errorf("exit %d, stderr %q", code, stderr)
	}
}

func TestReplayDegradedLabel(t *testing.T) {
	h := trace.NewHeader()
	if got := replayDegraded(h); got != "" {
		t.Errorf("BPF trace labelled %q", got)
	}
	h.Backend, h.PollIntervalNs = "poll", uint64(250*time.Millisecond)
	if got := replayDegraded(h); !strings.Contains(got, "without BPF") || !strings.Contains(got, "every 250ms") {
		t.Errorf("poll trace labelled %q", got)
	}
	if got := degradedLabel(250 * time.Millisecond); got != "degraded: no BPF, polling sysfs and /proc every 250ms: no sweeps, reasons from stacks" {
		t.Errorf("live label %q", got)
	}
}
