package ui

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"strings"
	"testing"
	"time"

	"github.com/klptop/klptop/internal/event"
)

// demoEnv makes the test binary act as a tiny klptop that shows
// handMadeStall on the real terminal, for TestRealTerminal.
const demoEnv = "KLPTOP_UI_TTY_DEMO"

func TestMain(m *testing.M) {
	if os.Getenv(demoEnv) == "1" {
		os.Exit(runDemo())
	}
	if p := os.Getenv(replayDemoEnv); p != "" {
		os.Exit(runReplayDemo(p))
	}
	os.Exit(m.Run())
}

func runDemo() int {
	ch := make(chan event.Event)
	go func() {
		for _, e := range handMadeStall() {
			ch <- e
		}
		// Left open: a live session whose transition is still stuck.
	}()
	err := Run(context.Background(), ch, testOpts)
	if err != nil {
		fmt.Fprintln(os.Stderr, "demo:", err)
		return 1
	}
	return 0
}

// TestRealTerminal runs the demo in a detached tmux session, reads the
// screen as a terminal drew it, and quits with q.
func TestRealTerminal(t *testing.T) {
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
	sock := fmt.Sprintf("klptop-ui-test-%d", os.Getpid())
	run := func(args ...string) string {
		out, err := exec.Command(tmux, append([]string{"-L", sock, "-f", "/dev/null"}, args...)...).CombinedOutput()
		if err != nil {
			t.Fatalf("tmux %v: %v: %s", args, err, out)
		}
		return string(out)
	}
	// The shell reports the exit status and lingers so that the pane can
	// still be read after the program ends.
	cmd := fmt.Sprintf("%s=1 %q -test.run='^$'; echo \"demo exited: $?\"; sleep 60", demoEnv, exe)
	run("new-session", "-d", "-x", "120", "-y", "40", "sh", "-c", cmd)
	t.Cleanup(func() { _ = exec.Command(tmux, "-L", sock, "kill-server").Run() })

	waitFor := func(what string, ok func(string) bool) string {
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

	main := waitFor("the stuck kworker", func(s string) bool {
		return strings.Contains(s, "kworker/0:1") && strings.Contains(s, "busymod_work_func") &&
			strings.Contains(s, "sweep 17")
	})
	t.Logf("main screen:\n%s", main)
	for _, want := range []string{"PENDING TASKS", "sleeping on busymod_work_func", "test_klp_callbacks_demo", "4/6 tasks switched"} {
		if !strings.Contains(main, want) {
			t.Errorf("main screen lacks %q", want)
		}
	}

	run("send-keys", "Enter")
	stack := waitFor("the stack view", func(s string) bool { return strings.Contains(s, "▶ #4  busymod_work_func+0x2b/0x40") })
	t.Logf("stack view:\n%s", stack)

	run("send-keys", "Escape")
	waitFor("the main screen again", func(s string) bool { return strings.Contains(s, "PENDING TASKS") })

	run("send-keys", "q")
	waitFor("the program to exit", func(s string) bool { return strings.Contains(s, "demo exited: 0") })
}
