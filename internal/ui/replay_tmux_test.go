package ui

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// replayDemoEnv makes the test binary act as `klptop replay --paused FILE`
// for TestRealTerminalReplay.
const replayDemoEnv = "KLPTOP_UI_TTY_REPLAY"

func runReplayDemo(path string) int {
	r, err := OpenReplay(path, ReplayOptions{Paused: true})
	if err != nil {
		fmt.Fprintln(os.Stderr, "klptop: replay", err)
		return 1
	}
	defer r.Close()
	opts := Options{Title: "replay: " + filepath.Base(path)}
	if err := RunReplay(context.Background(), r, opts, nil); err != nil {
		fmt.Fprintln(os.Stderr, "klptop: replay", err)
		return 1
	}
	return 0
}

// tmuxSession runs the test binary under env in a detached tmux session of
// 120x40 and returns a function that runs tmux commands on it.
func tmuxSession(t *testing.T, env string) (run func(args ...string) string, waitFor func(what string, ok func(string) bool) string) {
	t.Helper()
	if testing.Short() {
		t.Skip("starts tmux")
	}
	tmux, err := exec.LookPath("tmux")
	if err != nil {
		t.Skip("tmux not installed")
	}
	exe, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	sock := fmt.Sprintf("klptop-replay-test-%d-%d", os.Getpid(), time.Now().UnixNano())
	run = func(args ...string) string {
		t.Helper()
		out, err := exec.Command(tmux, append([]string{"-L", sock, "-f", "/dev/null"}, args...)...).CombinedOutput()
		if err != nil {
			t.Fatalf("tmux %v: %v: %s", args, err, out)
		}
		return string(out)
	}
	// The shell reports the exit status and lingers so that the pane can
	// still be read after the program ends.
	cmd := fmt.Sprintf("%s %q -test.run='^$'; echo \"demo exited: $?\"; sleep 60", env, exe)
	run("new-session", "-d", "-x", "120", "-y", "40", "sh", "-c", cmd)
	t.Cleanup(func() { _ = exec.Command(tmux, "-L", sock, "kill-server").Run() })
	waitFor = func(what string, ok func(string) bool) string {
		t.Helper()
		var s string
		for deadline := time.Now().Add(15 * time.Second); time.Now().Before(deadline); time.Sleep(100 * time.Millisecond) {
			s = run("capture-pane", "-p")
			if ok(s) {
				return s
			}
		}
		t.Fatalf("timed out waiting for %s; screen:\n%s", what, s)
		return s
	}
	return run, waitFor
}

func has(subs ...string) func(string) bool {
	return func(s string) bool {
		for _, x := range subs {
			if !strings.Contains(s, x) {
				return false
			}
		}
		return true
	}
}

// TestRealTerminalReplay replays the hand-made recording on a real terminal:
// step, seek to transitions and stalls, play to the end at max speed, quit.
func TestRealTerminalReplay(t *testing.T) {
	path, err := filepath.Abs(handMadeReplayFile)
	if err != nil {
		t.Fatal(err)
	}
	run, waitFor := tmuxSession(t, fmt.Sprintf("%s=%q", replayDemoEnv, path))

	s := waitFor("the paused start", has("REPLAY", "⏸ paused", "event 0/94", "space play/pause"))
	t.Logf("start:\n%s", s)
	run("send-keys", "n")
	waitFor("one step", has("event 1/94", "last event: patch test_klp_callbacks_busy"))
	run("send-keys", "]")
	s = waitFor("the first transition", has("event 9/94", "transition 1/2", "last event: transition_init"))
	t.Logf("at the first transition:\n%s", s)
	run("send-keys", "s")
	s = waitFor("the first stall", has("stall 1/3", "sleeping on busymod_work_func", "sweep 2, retries"))
	t.Logf("at the first stall:\n%s", s)
	run("send-keys", "[")
	waitFor("back at the transition", has("event 9/94", "stall 0/3", "0/5 tasks switched"))
	run("send-keys", "3", "Space")
	s = waitFor("the end", has("end of recording: final state", "event 94/94", "■ end"))
	t.Logf("end:\n%s", s)
	run("send-keys", "q")
	waitFor("the program to exit", has("demo exited: 0"))
}

// TestRealTerminalReplayCorrupt: a corrupt recording is one line naming the
// line and byte, and a non-zero exit, before any screen opens.
func TestRealTerminalReplayCorrupt(t *testing.T) {
	b, err := os.ReadFile(handMadeReplayFile)
	if err != nil {
		t.Fatal(err)
	}
	lines := strings.SplitAfter(string(b), "\n")
	lines[5] = "{not json\n"
	p := filepath.Join(t.TempDir(), "hand-made-corrupt.jsonl")
	if err := os.WriteFile(p, []byte(strings.Join(lines, "")), 0o644); err != nil {
		t.Fatal(err)
	}
	_, waitFor := tmuxSession(t, fmt.Sprintf("%s=%q", replayDemoEnv, p))
	s := waitFor("the error", has("demo exited: 1"))
	if !strings.Contains(s, "line 6 (byte ") || strings.Contains(s, "panic") {
		t.Fatalf("want a one-line error naming line 6:\n%s", s)
	}
}
