package trace

import (
	"bufio"
	"encoding/json"
	"fmt"
	"io"
	"sync"

	"github.com/klptop/klptop/internal/event"
)

// Writer appends events to a trace. It is safe for concurrent use: the
// recorder writes from the probe reader and flushes from a ticker.
type Writer struct {
	mu  sync.Mutex
	w   io.Writer
	buf *bufio.Writer
	n   uint64
	err error
}

// NewWriter writes the header line at once and flushes it, so that even an
// empty recording says what was recorded where.
func NewWriter(w io.Writer, h Header) (*Writer, error) {
	tw := &Writer{w: w, buf: bufio.NewWriterSize(w, 64<<10)}
	if h.Format == "" {
		h.Format = Format
	}
	if h.Version == "" {
		h.Version = fmt.Sprintf("%d.%d", Major, Minor)
	}
	if h.Attached == nil {
		h.Attached = []string{}
	}
	if h.Missing == nil {
		h.Missing = []Missing{}
	}
	if err := tw.line(h); err != nil {
		return nil, err
	}
	return tw, tw.Flush()
}

func (tw *Writer) line(v any) error {
	b, err := json.Marshal(v)
	if err != nil {
		return err
	}
	b = append(b, '\n')
	_, err = tw.buf.Write(b)
	return err
}

// Write appends one event. It is buffered: call Flush to bound what a crash
// can lose.
func (tw *Writer) Write(e event.Event) error {
	tw.mu.Lock()
	defer tw.mu.Unlock()
	if tw.err != nil {
		return tw.err
	}
	if err := tw.line(e); err != nil {
		tw.err = fmt.Errorf("write trace: %w", err)
		return tw.err
	}
	tw.n++
	return nil
}

// Flush writes buffered events through.
func (tw *Writer) Flush() error {
	tw.mu.Lock()
	defer tw.mu.Unlock()
	if tw.err != nil {
		return tw.err
	}
	if err := tw.buf.Flush(); err != nil {
		tw.err = fmt.Errorf("write trace: %w", err)
	}
	return tw.err
}

// Count is the number of events written so far.
func (tw *Writer) Count() uint64 {
	tw.mu.Lock()
	defer tw.mu.Unlock()
	return tw.n
}
