package main

import (
	"bytes"
	"encoding/json"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

const handMade = "../../internal/report/testdata/"

func exitCode(err error) int {
	var ee *exitError
	if errors.As(err, &ee) {
		return ee.code
	}
	if err != nil {
		return -1
	}
	return 0
}

func TestRunReportExitStatus(t *testing.T) {
	for _, tc := range []struct {
		args []string
		code int
		msg  string
	}{
		{[]string{handMade + "hand-made-stall.jsonl"}, 0, ""},
		{[]string{handMade + "hand-made-stall.jsonl", "--json"}, 0, ""},
		{[]string{"--json", handMade + "hand-made-unfinished.jsonl"}, 1, "never finished"},
		{[]string{handMade + "hand-made-corrupt.jsonl"}, 1, "line 15 (byte "},
		{[]string{"no-such-file.jsonl"}, 1, "no-such-file"},
		{nil, 2, "usage"},
		{[]string{"a", "b"}, 2, "usage"},
	} {
		var out, errOut bytes.Buffer
		err := runReport(tc.args, &out, &errOut)
		if got := exitCode(err); got != tc.code {
			t.Errorf("%v: exit %d, want %d (%v)", tc.args, got, tc.code, err)
		}
		if err != nil && (!strings.Contains(err.Error(), tc.msg) || strings.Contains(err.Error(), "\n")) {
			t.Errorf("%v: error %q, want one line naming %q", tc.args, err, tc.msg)
		}
	}
	var out, errOut bytes.Buffer
	runReport([]string{handMade + "hand-made-truncated.jsonl"}, &out, &errOut)
	if !strings.Contains(errOut.String(), "warning: trace ends in a partial line") {
		t.Errorf("no truncation warning on stderr: %q", errOut.String())
	}
}

func TestRunExport(t *testing.T) {
	dir := t.TempDir()
	out := filepath.Join(dir, "out.json")
	var stdout, stderr bytes.Buffer
	if err := runExport([]string{"--format", "perfetto", handMade + "hand-made-stall.jsonl", "-o", out}, &stdout, &stderr); err != nil {
		t.Fatal(err)
	}
	b, err := os.ReadFile(out)
	if err != nil {
		t.Fatal(err)
	}
	var v struct{ TraceEvents []any }
	if err := json.Unmarshal(b, &v); err != nil || len(v.TraceEvents) == 0 {
		t.Fatalf("output: %v, %d events", err, len(v.TraceEvents))
	}
	if err := runExport([]string{"--format", "pprof", "x"}, &stdout, &stderr); exitCode(err) != 2 {
		t.Errorf("unknown format: %v", err)
	}
	if err := runExport([]string{handMade + "hand-made-corrupt.jsonl"}, &stdout, &stderr); exitCode(err) != 1 {
		t.Errorf("corrupt trace: %v", err)
	}
	// A newer minor version's event types are skipped and said once.
	src, err := os.ReadFile(handMade + "hand-made-stall.jsonl")
	if err != nil {
		t.Fatal(err)
	}
	first, rest, _ := bytes.Cut(src, []byte("\n"))
	newer := filepath.Join(t.TempDir(), "hand-made-newer.jsonl")
	extra := `{"t":5000000001,"type":"from_the_future","cpu":0}` + "\n"
	var nb bytes.Buffer
	nb.Write(first)
	nb.WriteString("\n" + extra + extra)
	nb.Write(rest)
	if err := os.WriteFile(newer, nb.Bytes(), 0o644); err != nil {
		t.Fatal(err)
	}
	stderr.Reset()
	if err := runExport([]string{newer, "-o", filepath.Join(dir, "newer.json")}, &stdout, &stderr); err != nil {
		t.Fatalf("newer trace: %v", err)
	}
	if !strings.Contains(stderr.String(), `skipped 2 events of type "from_the_future"`) {
		t.Errorf("export did not say what it skipped: %q", stderr.String())
	}
	os.Remove(filepath.Join(dir, "newer.json"))
	entries, _ := os.ReadDir(dir)
	if len(entries) != 1 {
		t.Errorf("temporary files left behind: %v", entries)
	}
}
