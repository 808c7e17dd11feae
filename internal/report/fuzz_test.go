package report

import (
	"bytes"
	"encoding/json"
	"os"
	"path/filepath"
	"testing"
)

// FuzzRun: no trace makes the report panic, and --json output always parses
// once the header was read, even when the trace is corrupt further on.
func FuzzRun(f *testing.F) {
	m, _ := filepath.Glob("testdata/*.jsonl")
	rec, _ := filepath.Glob(recordedGlob)
	m = append(m, rec...)
	for _, p := range m {
		if b, err := os.ReadFile(p); err == nil {
			f.Add(b)
		}
	}
	f.Fuzz(func(t *testing.T, b []byte) {
		var out bytes.Buffer
		if _, err := Run(bytes.NewReader(b), &out, Options{}); err != nil && bytes.ContainsRune([]byte(err.Error()), '\n') {
			t.Fatalf("error is not one line: %q", err)
		}
		out.Reset()
		if _, err := Run(bytes.NewReader(b), &out, Options{JSON: true}); out.Len() > 0 && !json.Valid(out.Bytes()) {
			t.Fatalf("invalid JSON (err %v):\n%s", err, out.Bytes())
		}
	})
}
