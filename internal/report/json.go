package report

import (
	"bufio"
	"encoding/json"
	"io"
)

// jsonSink writes one JSON document, a transition at a time, so that a
// report of a huge trace never sits in memory whole.
type jsonSink struct {
	w *bufio.Writer
	n int
}

func newJSONSink(w io.Writer) *jsonSink { return &jsonSink{w: bufio.NewWriter(w)} }

func (j *jsonSink) write(prefix string, v any, indent string) error {
	b, err := json.MarshalIndent(v, indent, "  ")
	if err != nil {
		return err
	}
	j.w.WriteString(prefix)
	_, err = j.w.Write(b)
	return err
}

func (j *jsonSink) begin(info TraceInfo, _ bool) error {
	if err := j.write("{\n  \"trace\": ", info, "  "); err != nil {
		return err
	}
	_, err := j.w.WriteString(",\n  \"transitions\": [")
	return err
}

func (j *jsonSink) transition(t *Transition) error {
	sep := ",\n    "
	if j.n == 0 {
		sep = "\n    "
	}
	j.n++
	return j.write(sep, t, "    ")
}

func (j *jsonSink) end(s *Summary) error {
	if j.n > 0 {
		j.w.WriteString("\n  ")
	}
	if err := j.write("],\n  \"summary\": ", s, "  "); err != nil {
		return err
	}
	j.w.WriteString("\n}\n")
	return j.w.Flush()
}
