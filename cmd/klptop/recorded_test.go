package main

import (
	"bytes"
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// The commands over every recording of a real kernel in testdata/linux-*/
// (make testdata): report and report --json exit 0 with nothing on stderr,
// export writes Chrome trace JSON.
func TestCommandsOnRecordings(t *testing.T) {
	paths, _ := filepath.Glob("../../testdata/linux-*/*.jsonl")
	if len(paths) == 0 {
		t.Fatal("no recordings in testdata (make testdata)")
	}
	for _, path := range paths {
		t.Run(filepath.Base(filepath.Dir(path))+"/"+filepath.Base(path), func(t *testing.T) {
			for _, args := range [][]string{{path}, {"--json", path}} {
				var out, errOut bytes.Buffer
				if err := runReport(args, &out, &errOut); err != nil || errOut.Len() > 0 {
					t.Errorf("report %v: %v, stderr %q", args, err, errOut.String())
				}
				if args[0] == "--json" && !json.Valid(out.Bytes()) {
					t.Errorf("report --json: invalid JSON")
				}
				if args[0] != "--json" && !strings.Contains(out.String(), "summary: ") {
					t.Errorf("report: no summary:\n%s", out.String())
				}
			}
			o := filepath.Join(t.TempDir(), "out.json")
			var stdout, stderr bytes.Buffer
			if err := runExport([]string{"--format", "perfetto", path, "-o", o}, &stdout, &stderr); err != nil {
				t.Fatalf("export: %v %s", err, stderr.String())
			}
			b, err := os.ReadFile(o)
			if err != nil {
				t.Fatal(err)
			}
			var v struct{ TraceEvents []any }
			if err := json.Unmarshal(b, &v); err != nil || len(v.TraceEvents) == 0 {
				t.Fatalf("export: %v, %d events", err, len(v.TraceEvents))
			}
		})
	}
}
