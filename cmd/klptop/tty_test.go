package main

import (
	"bytes"
	"os"
	"os/exec"
	"strings"
	"syscall"
	"testing"
)

// TestMain lets a test run klptop itself as a child: KLPTOP_AS_MAIN=1.
func TestMain(m *testing.M) {
	if os.Getenv("KLPTOP_AS_MAIN") == "1" {
		os.Exit(run(os.Args[1:], os.Stdout, os.Stderr))
	}
	os.Exit(m.Run())
}

// Without a controlling terminal (a new session, as under cron or CI),
// replay says so in one line and points to report, instead of bubbletea's
// TTY error.
func TestReplayWithoutTerminal(t *testing.T) {
	cmd := exec.Command(os.Args[0], "replay", "../../testdata/linux-6.1/stall.jsonl")
	cmd.Env = append(os.Environ(), "KLPTOP_AS_MAIN=1")
	cmd.SysProcAttr = &syscall.SysProcAttr{Setsid: true}
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	err := cmd.Run()
	ee, ok := err.(*exec.ExitError)
	lines := strings.Split(strings.TrimSpace(stderr.String()), "\n")
	if !ok || ee.ExitCode() != 2 || len(lines) != 1 || !strings.Contains(lines[0], "replay needs a terminal") {
		t.Fatalf("replay without a terminal: %v, stderr %q", err, stderr.String())
	}
}
