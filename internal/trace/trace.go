// Package trace is klptop's recording format: newline-delimited JSON, a header
// line then one event.Event per line. Line-oriented so that a recorder killed
// mid-write leaves a file that reads up to its last whole line, and so that
// traces stream through grep, jq and friends.
package trace

import (
	"fmt"
	"slices"
	"strconv"
	"strings"

	"github.com/klptop/klptop/internal/event"
)

// Format is the value of Header.Format: it tells a klptop trace from any other
// JSON-lines file.
const Format = "klptop-trace"

// Version of the format this package writes. Readers accept any 1.x: a minor
// bump only adds fields or event types, which older readers skip.
const (
	Major = 1
	Minor = 11
)

// Missing is a kernel function klptop wanted to probe and could not.
type Missing struct {
	Symbol string `json:"symbol"`
	Why    string `json:"why"`
}

// Header is the first line of a trace: what recorded it, where, and what the
// recorder could and could not see.
type Header struct {
	Format  string `json:"format"`
	Version string `json:"version"`
	Klptop  string `json:"klptop"`
	Kernel  string `json:"kernel"`
	Host    string `json:"hostname"`
	BootID  string `json:"boot_id"`
	// Clock of every event's "t": CLOCK_MONOTONIC ns since boot.
	Clock string `json:"clock"`
	// StartWall and StartMono are read together at start, to map "t" to wall time.
	StartWall string `json:"start_wall"`
	StartMono uint64 `json:"start_mono_ns"`
	Backend   string `json:"backend,omitempty"`
	// PollIntervalNs: with backend "poll" (no BPF), how often sysfs and
	// /proc were read; every event is then a change seen by a poll.
	PollIntervalNs uint64    `json:"poll_interval_ns,omitempty"`
	Attached       []string  `json:"attached"`
	Missing        []Missing `json:"missing"`
	// Fallback (1.5): with backend "fentry", the attached probe points
	// that went on as kprobes instead, and why.
	Fallback []Missing `json:"fallback,omitempty"`
	// OnDemand (1.11): the attached probe points on functions that run all
	// over the kernel (forks, exits, wake-ups), attached only while a
	// transition ran; a Resync with Reason "probes_attached" marks each
	// time they went on.
	OnDemand []string `json:"on_demand,omitempty"`
	// Tasks (1.7): the number of tasks when klptop started; RingBytes the
	// size of the events ring klptop chose for them.
	Tasks     int    `json:"tasks,omitempty"`
	RingBytes uint32 `json:"ring_bytes,omitempty"`
	// LossCounted (1.9): the causes of loss (event.Lost*) the recorder
	// counted; a loss of another cause would have gone unseen.
	LossCounted []string `json:"loss_counted,omitempty"`
	// Command run under `klptop record -- COMMAND`, if any.
	Command []string `json:"command,omitempty"`
}

// SignalsObservable reports whether the recorder saw the kernel's signals
// to stuck tasks: a trace without signal events then means none were sent.
func (h Header) SignalsObservable() bool {
	return slices.Contains(h.Attached, event.SignalProbe)
}

// NewHeader fills in the format fields.
func NewHeader() Header {
	return Header{
		Format:  Format,
		Version: fmt.Sprintf("%d.%d", Major, Minor),
		Clock:   "CLOCK_MONOTONIC",
	}
}

// version parses "MAJOR.MINOR".
func version(v string) (major, minor int, err error) {
	a, b, ok := strings.Cut(v, ".")
	if !ok {
		b = "0"
	}
	if major, err = strconv.Atoi(a); err != nil {
		return 0, 0, fmt.Errorf("bad version %q", v)
	}
	if minor, err = strconv.Atoi(b); err != nil {
		return 0, 0, fmt.Errorf("bad version %q", v)
	}
	return major, minor, nil
}
