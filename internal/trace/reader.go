package trace

import (
	"bufio"
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"

	"github.com/klptop/klptop/internal/event"
)

// maxLine bounds one line so a corrupt file cannot make the reader buffer
// without end. A stack of 127 frames is under 16 KiB.
const maxLine = 4 << 20

// Reader streams a trace: memory stays constant in the trace's length.
type Reader struct {
	Header Header

	br     *bufio.Reader
	line   int   // number of the line last read, 1-based
	offset int64 // byte offset of the start of the next line

	// Truncated is set when the last line had no newline and did not parse:
	// a recorder killed mid-write. Everything before it was returned.
	Truncated bool
	// Unknown counts events of types this reader does not know, skipped.
	Unknown map[event.Type]int

	dec decoder
	// ev is decoded into in place: a local would escape to the heap
	// through the encoding/json fallback, one allocation per event.
	ev event.Event
}

// ErrNewerVersion is returned for a trace written by a newer major version.
var ErrNewerVersion = errors.New("trace written by a newer klptop")

// NewReader reads and checks the header.
func NewReader(r io.Reader) (*Reader, error) {
	tr := &Reader{br: bufio.NewReaderSize(r, 64<<10), Unknown: map[event.Type]int{}}
	b, _, err := tr.next()
	if err == io.EOF {
		return nil, errors.New("empty trace: no header line")
	}
	if err != nil {
		return nil, err
	}
	if err := json.Unmarshal(b, &tr.Header); err != nil || tr.Header.Format != Format {
		return nil, fmt.Errorf("not a klptop trace: line 1 is not a klptop-trace header")
	}
	major, _, err := version(tr.Header.Version)
	if err != nil {
		return nil, fmt.Errorf("trace header: %v", err)
	}
	if major > Major {
		return nil, fmt.Errorf("%w: format %s, this klptop reads %d.x", ErrNewerVersion, tr.Header.Version, Major)
	}
	return tr, nil
}

// next returns the next line without its newline, and whether it was complete.
func (tr *Reader) next() ([]byte, bool, error) {
	var line []byte
	for {
		chunk, err := tr.br.ReadSlice('\n')
		if err == nil && line == nil {
			// The whole line is in the buffer: no copy. It is valid until the
			// next read, and callers are done with it by then.
			tr.line++
			tr.offset += int64(len(chunk))
			return chunk[:len(chunk)-1], true, nil
		}
		line = append(line, chunk...)
		if len(line) > maxLine {
			return nil, false, fmt.Errorf("line %d (byte %d): longer than %d bytes", tr.line+1, tr.offset, maxLine)
		}
		if err == bufio.ErrBufferFull {
			continue
		}
		if err == io.EOF {
			if len(line) == 0 {
				return nil, false, io.EOF
			}
			tr.line++
			tr.offset += int64(len(line))
			return line, false, nil
		}
		if err != nil {
			return nil, false, err
		}
		tr.line++
		tr.offset += int64(len(line))
		return line[:len(line)-1], true, nil
	}
}

// Next returns the next event, io.EOF at the end. Blank lines are skipped;
// events of unknown type are skipped and counted in Unknown.
func (tr *Reader) Next() (event.Event, error) {
	for {
		start := tr.offset
		b, complete, err := tr.next()
		if err != nil {
			return event.Event{}, err
		}
		b = bytes.TrimRight(b, "\r")
		if len(bytes.TrimSpace(b)) == 0 {
			continue
		}
		if err := tr.dec.decode(b, &tr.ev); err != nil {
			if !complete {
				tr.Truncated = true
				return event.Event{}, io.EOF
			}
			return event.Event{}, fmt.Errorf("line %d (byte %d): %v", tr.line, start, err)
		}
		if !event.Known(tr.ev.Type) {
			tr.Unknown[tr.ev.Type]++
			continue
		}
		return tr.ev, nil
	}
}

// Line is the number of the line last read.
func (tr *Reader) Line() int { return tr.line }
