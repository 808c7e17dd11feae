package export

import (
	"bytes"
	"encoding/json"
	"os"
	"path/filepath"
	"testing"
)

// FuzzPerfetto: no trace makes the export panic, and its output always
// parses once the header was read, even when the trace is corrupt further on.
func FuzzPerfetto(f *testing.F) {
	m, _ := filepath.Glob(filepath.Join("..", "report", "testdata", "*.jsonl"))
	rec, _ := filepath.Glob(recordedGlob)
	m = append(m, rec...)
	for _, p := range m {
		if b, err := os.ReadFile(p); err == nil {
			f.Add(b)
		}
	}
	f.Fuzz(func(t *testing.T, b []byte) {
		var out bytes.Buffer
		_, err := Perfetto(bytes.NewReader(b), &out)
		if out.Len() > 0 && !json.Valid(out.Bytes()) {
			t.Fatalf("invalid JSON (err %v):\n%s", err, out.Bytes())
		}
	})
}
