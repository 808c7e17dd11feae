package main

import (
	"errors"
	"fmt"
	"os"
	"strings"
	"time"

	"golang.org/x/sys/unix"

	"github.com/klptop/klptop/internal/probes"
	"github.com/klptop/klptop/internal/trace"
)

// openError turns the reasons klptop cannot watch this kernel into one line
// that says what is missing and what to do, with exit status 2.
func openError(err error) error {
	switch {
	case errors.Is(err, probes.ErrNotRoot):
		return fail(2, "%v: run 'sudo klptop'", err)
	case errors.Is(err, probes.ErrNoLivepatch):
		return fail(2, "%v: nothing to watch here; 'make demo' shows klptop on a real livepatch kernel in a guest", err)
	case errors.Is(err, probes.ErrNoBPF):
		return fail(2, "%s", oneLine(err.Error()))
	}
	return fmt.Errorf("open probes: %w", err)
}

// notes are the start-up lines: what attached, how, and what is not observable.
func notes(info probes.Info) []string {
	n := []string{fmt.Sprintf("%d probes attached (%s) in %s", len(info.Attached), info.Backend, info.AttachTime.Round(time.Millisecond))}
	if info.LoadTime > 0 {
		n[0] += fmt.Sprintf(" (load %s)", info.LoadTime.Round(time.Millisecond))
	}
	if len(info.OnDemand) > 0 {
		n[0] += fmt.Sprintf(", %d of them only during a transition (%s)", len(info.OnDemand), strings.Join(info.OnDemand, ", "))
	}
	if info.RingBytes > 0 {
		size := fmt.Sprintf("%d MiB", info.RingBytes>>20)
		if info.RingBytes < 1<<20 {
			size = fmt.Sprintf("%d KiB", info.RingBytes>>10)
		}
		n[0] += fmt.Sprintf("; events ring %s for %d tasks", size, info.Tasks)
	}
	if len(info.Phases) > 0 {
		n = append(n, startup(info))
	}
	if len(info.Missing) > 0 {
		var m []string
		for _, x := range info.Missing {
			m = append(m, x.Symbol+" ("+x.Why+")")
		}
		n = append(n, "not observable here: "+strings.Join(m, ", "))
	}
	if len(info.Fallback) > 0 {
		// One reason, many points (every return probe): the reason once.
		var order []string
		by := map[string][]string{}
		for _, x := range info.Fallback {
			why := x.Why
			if strings.HasPrefix(why, "fexit would leave") {
				why = "fexit would leave a BPF trampoline frame on the stacks the transition checks"
			}
			if by[why] == nil {
				order = append(order, why)
			}
			by[why] = append(by[why], x.Symbol)
		}
		var m []string
		for _, why := range order {
			m = append(m, strings.Join(by[why], ", ")+" ("+why+")")
		}
		n = append(n, "kprobes instead of fentry: "+strings.Join(m, "; "))
	}
	if info.FuncsWhy != "" {
		n = append(n, "function stacks not observable here: "+info.FuncsWhy)
	}
	return n
}

// startup says where the start-up time went, step by step.
func startup(info probes.Info) string {
	var p []string
	for _, x := range info.Phases {
		p = append(p, fmt.Sprintf("%s %s", x.Name, x.Took.Round(time.Millisecond)))
	}
	loads := "1 program load"
	if info.Loads != 1 {
		loads = fmt.Sprintf("%d program loads", info.Loads)
	}
	return "start-up: " + strings.Join(p, ", ") + " (" + loads + ")"
}

func header(info probes.Info, command []string) trace.Header {
	h := trace.NewHeader()
	h.Klptop = version
	h.Kernel = info.Kernel
	if h.Kernel == "" {
		var u unix.Utsname
		if unix.Uname(&u) == nil {
			h.Kernel = unix.ByteSliceToString(u.Release[:])
		}
	}
	h.Host, _ = os.Hostname()
	if b, err := os.ReadFile("/proc/sys/kernel/random/boot_id"); err == nil {
		h.BootID = strings.TrimSpace(string(b))
	}
	var ts unix.Timespec
	if unix.ClockGettime(unix.CLOCK_MONOTONIC, &ts) == nil {
		h.StartMono = uint64(ts.Nano())
	}
	h.StartWall = time.Now().UTC().Format(time.RFC3339Nano)
	h.Backend = info.Backend
	h.Tasks, h.RingBytes, h.LossCounted = info.Tasks, info.RingBytes, info.LossCounted
	h.Attached, h.OnDemand = info.Attached, info.OnDemand
	for _, m := range info.Missing {
		h.Missing = append(h.Missing, trace.Missing{Symbol: m.Symbol, Why: m.Why})
	}
	for _, m := range info.Fallback {
		h.Fallback = append(h.Fallback, trace.Missing{Symbol: m.Symbol, Why: m.Why})
	}
	h.Command = command
	return h
}
