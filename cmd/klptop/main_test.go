package main

import (
	"bytes"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/klptop/klptop/internal/probes"
)

func runArgs(args ...string) (int, string, string) {
	var out, errb bytes.Buffer
	code := run(args, &out, &errb)
	return code, out.String(), errb.String()
}

func TestUsageErrorsAreOneLineWithStatus2(t *testing.T) {
	for _, args := range [][]string{
		{"bogus"},
		{"record"},
		{"record", "--no-such-flag", "-o", "x"},
		{"--no-such-flag"},
		{"live", "extra"},
		{"record", "-o", "x", "--ring-size", "3K"},
		{"--ring-size", "2G"},
	} {
		code, _, stderr := runArgs(args...)
		if code != 2 {
			t.Errorf("%q: exit %d, want 2", args, code)
		}
		last := strings.Split(strings.TrimSpace(stderr), "\n")
		if !strings.HasPrefix(last[len(last)-1], "klptop: ") {
			t.Errorf("%q: last stderr line %q", args, last[len(last)-1])
		}
	}
}

func TestVersion(t *testing.T) {
	code, out, _ := runArgs("version")
	if code != 0 || !strings.HasPrefix(out, "klptop ") {
		t.Errorf("version: %d %q", code, out)
	}
}

// On a kernel without livepatch (the development machine's), klptop must say
// what is missing in one line and exit 2, and record must not clobber an
// existing file. Where livepatch exists this is covered by the VM tests.
func TestNoLivepatchHere(t *testing.T) {
	if _, err := os.Stat("/sys/kernel/livepatch"); err == nil {
		t.Skip("this kernel has livepatch; the VM tests cover it")
	}
	code, _, stderr := runArgs()
	if code != 2 || strings.Count(stderr, "\n") != 1 ||
		!(strings.Contains(stderr, "livepatch") || strings.Contains(stderr, "root")) {
		t.Errorf("live: exit %d, stderr %q", code, stderr)
	}
	for _, json := range []bool{false, true} {
		args := []string{"status"}
		if json {
			args = append(args, "--json")
		}
		code, stdout, stderr := runArgs(args...)
		if code != 2 || stdout != "" || strings.Count(stderr, "\n") != 1 {
			t.Errorf("%q: exit %d, stdout %q, stderr %q", args, code, stdout, stderr)
		}
	}
	f := filepath.Join(t.TempDir(), "old.jsonl")
	os.WriteFile(f, []byte("precious\n"), 0o644)
	code, _, _ = runArgs("record", "-o", f, "--", "true")
	if code != 2 {
		t.Errorf("record: exit %d, want 2", code)
	}
	if b, _ := os.ReadFile(f); string(b) != "precious\n" {
		t.Errorf("record clobbered an existing file: %q", b)
	}
}

// A wrong flag is one line on stderr and exit status 2, for every command.
func TestBadFlagOneLine(t *testing.T) {
	for _, args := range [][]string{
		{"--bogus"}, {"record", "--bogus"}, {"status", "--bogus"},
		{"replay", "--bogus", "x"}, {"report", "--bogus", "x"}, {"export", "--bogus", "x"},
	} {
		var stdout, stderr bytes.Buffer
		code := run(args, &stdout, &stderr)
		lines := strings.Split(strings.TrimSpace(stderr.String()), "\n")
		if code != 2 || len(lines) != 1 || !strings.Contains(lines[0], "-bogus") {
			t.Errorf("klptop %v: exit %d, stderr %q", args, code, stderr.String())
		}
	}
	var stdout, stderr bytes.Buffer
	if code := run([]string{"report", "-h"}, &stdout, &stderr); code != 0 || !strings.Contains(stderr.String(), "-json") {
		t.Errorf("report -h: exit %d, stderr %q", code, stderr.String())
	}
}

func TestRingSize(t *testing.T) {
	for in, want := range map[string]uint32{"4K": 4 << 10, "64k": 64 << 10, "8M": 8 << 20, "1G": 1 << 30, "65536": 64 << 10} {
		var r ringSize
		if err := r.Set(in); err != nil || uint32(r) != want {
			t.Errorf("%q: %d, %v; want %d", in, r, err, want)
		}
	}
	for _, in := range []string{"", "0", "2K", "3K", "100000", "2G", "-4K", "M", "8MiB"} {
		var r ringSize
		if err := r.Set(in); err == nil {
			t.Errorf("%q: accepted as %d", in, r)
		}
	}
}

// Hand-made Info: the start-up note lists every step in order, rounded to
// the millisecond, and counts the loads.
func TestStartupNote(t *testing.T) {
	info := probes.Info{Loads: 3, Phases: []probes.Phase{
		{Name: "kernel BTF", Took: 412400 * time.Microsecond},
		{Name: "load", Took: 1500 * time.Millisecond},
	}}
	want := "start-up: kernel BTF 412ms, load 1.5s (3 program loads)"
	if got := startup(info); got != want {
		t.Errorf("startup: %q, want %q", got, want)
	}
	info.Loads = 1
	if got := startup(info); !strings.HasSuffix(got, "(1 program load)") {
		t.Errorf("one load: %q", got)
	}
	var found bool
	for _, n := range notes(info) {
		found = found || strings.HasPrefix(n, "start-up: ")
	}
	if !found {
		t.Errorf("notes lack the start-up line: %q", notes(info))
	}
}
