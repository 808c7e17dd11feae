package main

import (
	"context"
	"errors"
	"fmt"
	"os"
	"strconv"
	"time"

	"golang.org/x/sys/unix"

	"github.com/klptop/klptop/internal/event"
	"github.com/klptop/klptop/internal/poll"
	"github.com/klptop/klptop/internal/probes"
	"github.com/klptop/klptop/internal/sysfs"
	"github.com/klptop/klptop/internal/trace"
)

// source is where events come from: the BPF probes or, degraded, the
// poller of sysfs and /proc.
type source interface {
	Info() probes.Info
	Snapshot() ([]event.Event, error)
	Read(ctx context.Context, emit func(event.Event)) error
	Close() error
}

const backendHelp = "event source: auto, fentry, kprobe-multi, kprobe (BPF), or poll (no BPF: sysfs and /proc; auto falls back to it when BPF or kprobes are not usable)"

const minPollInterval = 10 * time.Millisecond

const ringHelp = "size of the BPF events `ring` (a power of two from 4K to 1G: 256K, 8M); default: room for two sweeps of every task's check"

// ringSize is --ring-size: bytes, with an optional K, M or G.
type ringSize uint32

func (r *ringSize) String() string {
	if *r == 0 {
		return ""
	}
	return strconv.FormatUint(uint64(*r), 10)
}

func (r *ringSize) Set(v string) error {
	num, mult := v, uint64(1)
	if n := len(v); n > 0 {
		switch v[n-1] {
		case 'k', 'K':
			num, mult = v[:n-1], 1<<10
		case 'm', 'M':
			num, mult = v[:n-1], 1<<20
		case 'g', 'G':
			num, mult = v[:n-1], 1<<30
		}
	}
	n, err := strconv.ParseUint(num, 10, 32)
	b := n * mult
	if err != nil || b < 4<<10 || b > 1<<30 || b&(b-1) != 0 {
		return fmt.Errorf("%q: a power of two from 4K to 1G", v)
	}
	*r = ringSize(b)
	return nil
}

// openSource opens the probes, or the poller when asked to or, with the
// auto backend, when this kernel offers no usable BPF or kprobes. Every
// other reason klptop cannot run here stays one line and exit 2.
func openSource(backend string, interval time.Duration, ring ringSize, warn func(string)) (source, error) {
	if interval < minPollInterval {
		return nil, fail(2, "--poll-interval %s: at least %s", interval, minPollInterval)
	}
	if backend == poll.Backend {
		return openPoll(interval, "")
	}
	s, err := probes.Open(probes.Options{Backend: backend, Warn: warn, RingBytes: uint32(ring)})
	if err == nil {
		return s, nil
	}
	if errors.Is(err, probes.ErrNoBPF) && (backend == "" || backend == probes.BackendAuto) {
		return openPoll(interval, oneLine(err.Error()))
	}
	return nil, openError(err)
}

// pollSource is the poller as a source.
type pollSource struct {
	p        *poll.Poller
	interval time.Duration
	info     probes.Info
	// why BPF was not used, when klptop fell back to polling.
	why      string
	closeLog func() error
}

func openPoll(interval time.Duration, why string) (*pollSource, error) {
	if os.Geteuid() != 0 {
		return nil, openError(fmt.Errorf("%w (/proc/PID/stack of every task)", probes.ErrNotRoot))
	}
	if !sysfs.HasLivepatch("/") {
		return nil, openError(fmt.Errorf("%w: no /%s (CONFIG_LIVEPATCH)", probes.ErrNoLivepatch, sysfs.LivepatchDir))
	}
	info := probes.Info{Backend: poll.Backend, Attached: []string{}}
	var u unix.Utsname
	if unix.Uname(&u) == nil {
		info.Kernel = unix.ByteSliceToString(u.Release[:])
	}
	for _, m := range poll.NotObservable {
		why := m[1]
		if m[0] == "event times" {
			why += fmt.Sprintf(" (every %s)", interval)
		}
		info.Missing = append(info.Missing, probes.Missing{Symbol: m[0], Why: why})
	}
	s := &pollSource{p: poll.New("/"), interval: interval, info: info, why: why}
	if read, closeLog, err := poll.OpenKmsg("/dev/kmsg"); err == nil {
		s.p.Log, s.closeLog = read, closeLog
	} else {
		s.info.Missing = append(s.info.Missing, probes.Missing{Symbol: "/dev/kmsg",
			Why: "polling: " + err.Error() + "; a patch disabled right after its patching completed looks like a reverse"})
	}
	return s, nil
}

func (s *pollSource) Info() probes.Info                { return s.info }
func (s *pollSource) Snapshot() ([]event.Event, error) { return s.p.Snapshot() }
func (s *pollSource) Close() error {
	if s.closeLog != nil {
		return s.closeLog()
	}
	return nil
}
func (s *pollSource) Read(ctx context.Context, emit func(event.Event)) error {
	return s.p.Run(ctx, s.interval, emit)
}

// degraded is the label the live view shows in place of nothing.
func (s *pollSource) degraded() string {
	return degradedLabel(s.interval)
}

func degradedLabel(interval time.Duration) string {
	return fmt.Sprintf("degraded: no BPF, polling sysfs and /proc every %s: no sweeps, reasons from stacks", interval)
}

// pollNote is the one start-up line that says what polling cannot see.
func pollNote(interval time.Duration) string {
	late := "one poll interval"
	if interval > 0 {
		late = interval.String()
	}
	return fmt.Sprintf("not observable when polling: sweeps, the kernel's check results (reasons derived from stacks), "+
		"signals, how tasks switch, force, function stacks, idle tasks; events carry the time of the poll that saw them (up to %s late)", late)
}

// sourceNotes are the start-up lines of any source; degraded is the poller's
// label ("" for the probes).
func sourceNotes(src source) (lines []string, degraded string) {
	ps, ok := src.(*pollSource)
	if !ok {
		return notes(src.Info()), ""
	}
	if ps.why != "" {
		lines = append(lines, "BPF not usable, polling instead: "+ps.why)
	}
	lines = append(lines, pollNote(ps.interval))
	return lines, ps.degraded()
}

// sourceHeader is the trace header for a recording of src.
func sourceHeader(src source, command []string) trace.Header {
	h := header(src.Info(), command)
	if ps, ok := src.(*pollSource); ok {
		h.PollIntervalNs = uint64(ps.interval)
	}
	return h
}

// replayDegraded is the label of a recording made by polling, "" otherwise.
func replayDegraded(h trace.Header) string {
	if h.Backend != poll.Backend {
		return ""
	}
	iv := "an unknown interval"
	if h.PollIntervalNs > 0 {
		iv = time.Duration(h.PollIntervalNs).String()
	}
	return "recorded without BPF, polling sysfs and /proc every " + iv + ": no sweeps, reasons from stacks"
}
