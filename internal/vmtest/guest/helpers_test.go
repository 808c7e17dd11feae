//go:build guest

package guest

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/klptop/klptop/internal/event"
	"github.com/klptop/klptop/internal/trace"
)

// monoNow is CLOCK_MONOTONIC in ns: the clock of every event's Time.
func monoNow(t *testing.T) uint64 {
	var ts unix.Timespec
	if err := unix.ClockGettime(unix.CLOCK_MONOTONIC, &ts); err != nil {
		t.Fatal(err)
	}
	return uint64(ts.Nano())
}

func needKlptop(t *testing.T) {
	t.Helper()
	if _, err := os.Stat(klptopBin); err != nil {
		t.Fatalf("no klptop in the guest (%v): the harness builds it from ./cmd/klptop", err)
	}
}

// recording is one `klptop record -- sh SCRIPT` run.
type recording struct {
	path   string // the trace, under outDir so that the host gets it
	header trace.Header
	events []event.Event
}

// startRecord starts `klptop record -o TRACE -- sh -c SCRIPT` and returns a
// function that waits for it and reads the trace. klptop's own output goes
// next to the trace.
func startRecord(t *testing.T, name, script string) func() *recording {
	t.Helper()
	return startRecordTo(t, filepath.Join(outDir, "traces", name+".ndjson"), script)
}

// startRecordTo is startRecord into a given trace file; klptop's output goes
// to the same name with .log.
func startRecordTo(t *testing.T, path, script string) func() *recording {
	t.Helper()
	return startRecordArgs(t, path, script)
}

// startRecordArgs is startRecordTo with extra klptop record flags.
func startRecordArgs(t *testing.T, path, script string, flags ...string) func() *recording {
	t.Helper()
	wait, _ := startRecordProc(t, path, script, flags...)
	return wait
}

// moduleLib is prepended to every recorded script. `unload M...` is rmmod
// once nothing holds the modules, as the kernel's selftests unload: the
// livepatch core drops its hold on a patch's module only after the patch
// left sysfs, and rmmod fails (EAGAIN) until then. Bounded: 10 s a module.
const moduleLib = `unload() {
	for m; do
		i=0
		while [ -e /sys/module/$m ] && [ "$(cat /sys/module/$m/refcnt)" != 0 ] && [ $i -lt 200 ]; do sleep 0.05; i=$((i+1)); done
	done
	rmmod "$@"
}
`

// startRecordProc is startRecordArgs that also gives the klptop process.
func startRecordProc(t *testing.T, path, script string, flags ...string) (func() *recording, *os.Process) {
	t.Helper()
	needKlptop(t)
	dir := filepath.Dir(path)
	if err := os.MkdirAll(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	logf, err := os.Create(strings.TrimSuffix(path, filepath.Ext(path)) + ".log")
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	args := append(append([]string{"record", "-o", path}, flags...), "--", "sh", "-c", moduleLib+script)
	cmd := exec.CommandContext(ctx, klptopBin, args...)
	cmd.Stdout, cmd.Stderr = logf, logf
	cmd.Cancel = func() error { return cmd.Process.Signal(syscall.SIGINT) }
	cmd.WaitDelay = 10 * time.Second
	if err := cmd.Start(); err != nil {
		cancel()
		logf.Close()
		t.Fatal(err)
	}
	done := false
	t.Cleanup(func() {
		if !done {
			_ = cmd.Process.Kill()
			_ = cmd.Wait()
			cancel()
			logf.Close()
		}
	})
	return func() *recording {
		t.Helper()
		err := cmd.Wait()
		done = true
		cancel()
		logf.Close()
		out, _ := os.ReadFile(logf.Name())
		if err != nil {
			t.Fatalf("klptop record: %v\n%s", err, out)
		}
		t.Logf("klptop record output:\n%s", out)
		// A ring sized by hand is the lossy case, checked by its test.
		return readTraceLossy(t, path, slices.Contains(flags, "--ring-size"))
	}, cmd.Process
}

func readTrace(t *testing.T, path string) *recording {
	t.Helper()
	return readTraceLossy(t, path, false)
}

// readTraceLossy reads a recording; lost events are an error unless
// lossy.
func readTraceLossy(t *testing.T, path string, lossy bool) *recording {
	t.Helper()
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	r, err := trace.NewReader(f)
	if err != nil {
		t.Fatalf("%s: %v", path, err)
	}
	rec := &recording{path: path, header: r.Header}
	for {
		e, err := r.Next()
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			t.Fatalf("%s: %v", path, err)
		}
		rec.events = append(rec.events, e)
	}
	if r.Truncated {
		t.Errorf("%s: last line cut off: klptop did not finish writing", path)
	}
	counts := map[event.Type]int{}
	var lost uint64
	dropped := map[string]uint64{}
	var back []string
	for i, e := range rec.events {
		counts[e.Type]++
		if e.Type == event.Lost {
			// The ring is klptop's to size; what the kernel skips
			// elsewhere it can only count and repair (TestScale checks).
			if e.Reason == "" || e.Reason == event.LostRingFull {
				lost += e.Count
			} else {
				dropped[e.Reason+" "+e.Func] += e.Count
			}
		}
		if i > 0 && e.Time < rec.events[i-1].Time {
			back = append(back, fmt.Sprintf("line %d %s %.6fs after %s %.6fs", i+2, e.Type, float64(e.Time)/1e9,
				rec.events[i-1].Type, float64(rec.events[i-1].Time)/1e9))
		}
	}
	// Not an error in itself: events from different CPUs or from user space
	// may interleave; milestones are checked for order where it matters.
	if len(back) > 0 {
		t.Logf("%s: %d events earlier than the one before, first: %s", filepath.Base(path), len(back), strings.Join(back[:min(3, len(back))], "; "))
	}
	if lost > 0 && !lossy {
		t.Errorf("%s: klptop lost %d events: every check below is on partial data", path, lost)
	}
	if len(dropped) > 0 {
		t.Logf("%s: the kernel skipped probe runs, counted and resynced: %v", filepath.Base(path), dropped)
	}
	t.Logf("%s: %d events %v; attached %d probes, missing %v", filepath.Base(path), len(rec.events), counts, len(rec.header.Attached), rec.header.Missing)
	return rec
}

// milestones are the transition-level events, in trace order, and their
// positions in the trace.
func (r *recording) milestones() ([]event.Event, []int) {
	var out []event.Event
	var idx []int
	for i, e := range r.events {
		switch e.Type {
		case event.TransitionInit, event.TransitionStart, event.TransitionComplete,
			event.TransitionReverse, event.TransitionCancel, event.TransitionForce:
			out = append(out, e)
			idx = append(idx, i)
		}
	}
	return out, idx
}

// kmsg is one record of the kernel log.
type kmsg struct {
	seq  uint64
	usec uint64 // local_clock(), not quite CLOCK_MONOTONIC
	msg  string
}

// readKmsg returns the kernel log records after seq (0: all of them).
// /dev/kmsg gives one record per read and EAGAIN at the end.
func readKmsg(t *testing.T, after uint64) []kmsg {
	t.Helper()
	fd, err := unix.Open("/dev/kmsg", unix.O_RDONLY|unix.O_NONBLOCK, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer unix.Close(fd)
	var out []kmsg
	buf := make([]byte, 8192)
	for {
		n, err := unix.Read(fd, buf)
		if err == unix.EPIPE { // overwritten while reading: go on
			continue
		}
		if err == unix.EAGAIN || n <= 0 {
			break
		}
		if err != nil {
			t.Fatal(err)
		}
		head, msg, ok := strings.Cut(string(buf[:n]), ";")
		if !ok {
			continue
		}
		f := strings.Split(head, ",")
		if len(f) < 3 {
			continue
		}
		seq, _ := strconv.ParseUint(f[1], 10, 64)
		usec, _ := strconv.ParseUint(f[2], 10, 64)
		if seq <= after && after != 0 {
			continue
		}
		msg, _, _ = strings.Cut(msg, "\n") // continuation lines are " KEY=value"
		out = append(out, kmsg{seq, usec, msg})
	}
	return out
}

func kmsgMark(t *testing.T) uint64 {
	recs := readKmsg(t, 0)
	if len(recs) == 0 {
		return 0
	}
	return recs[len(recs)-1].seq
}

// transitionLine is what the kernel says about a transition, or what a trace
// says, in the same terms: "start patching" etc.
type transitionLine struct {
	what  string // "start" or "complete"
	dir   string // "patching" or "unpatching"
	patch string
	t     uint64 // ns
}

func (l transitionLine) String() string {
	return fmt.Sprintf("%s %s %s @%.3fs", l.patch, l.what, l.dir, float64(l.t)/1e9)
}

var kmsgTransitionRE = regexp.MustCompile(`^livepatch: '([^']+)': (?:starting (patching|unpatching) transition|(patching|unpatching) complete)$`)

func kernelTransitions(recs []kmsg) []transitionLine {
	var out []transitionLine
	for _, r := range recs {
		m := kmsgTransitionRE.FindStringSubmatch(r.msg)
		if m == nil {
			continue
		}
		l := transitionLine{patch: m[1], t: r.usec * 1000}
		if m[2] != "" {
			l.what, l.dir = "start", m[2]
		} else {
			l.what, l.dir = "complete", m[3]
		}
		out = append(out, l)
	}
	return out
}

func dirName(target int) string {
	if target == event.StateUnpatched {
		return "unpatching"
	}
	return "patching"
}

// traceTransitions turns the trace's starts and completions into the lines
// the kernel prints for them. A reverse flips the direction the completion
// reports, as the kernel's klp_target_state flips.
func traceTransitions(evs []event.Event) []transitionLine {
	var out []transitionLine
	target, patch := event.StatePatched, ""
	for i, e := range evs {
		switch e.Type {
		case event.TransitionInit:
			target = e.Target
			if e.Patch != "" {
				patch = e.Patch
			}
		case event.TransitionReverse:
			target = e.Target
			// klp_reverse_transition restarts the transition with
			// klp_start_transition, which the kernel logs; where that call is
			// inlined klptop's probe cannot see it, and the reverse stands
			// for it.
			if !restarted(evs[i+1:]) {
				out = append(out, transitionLine{what: "start", dir: dirName(target), patch: pick(e.Patch, patch), t: e.Time})
			}
		case event.TransitionStart:
			out = append(out, transitionLine{what: "start", dir: dirName(target), patch: pick(e.Patch, patch), t: e.Time})
		case event.TransitionComplete:
			out = append(out, transitionLine{what: "complete", dir: dirName(target), patch: pick(e.Patch, patch), t: e.Time})
		}
	}
	return out
}

// restarted: the next transition-level event is a transition_start.
func restarted(evs []event.Event) bool {
	for _, e := range evs {
		switch e.Type {
		case event.TransitionStart:
			return true
		case event.TransitionInit, event.TransitionComplete, event.TransitionReverse,
			event.TransitionCancel, event.TransitionForce:
			return false
		}
	}
	return false
}

func pick(a, b string) string {
	if a != "" {
		return a
	}
	return b
}

// checkAgainstKernelLog matches the trace's transitions one for one with the
// kernel's own log lines, in order.
func checkAgainstKernelLog(t *testing.T, rec *recording, recs []kmsg) {
	t.Helper()
	klog := kernelTransitions(recs)
	tr := traceTransitions(rec.events)
	if len(klog) == 0 {
		t.Fatalf("no livepatch transition lines in the kernel log")
	}
	if len(klog) != len(tr) {
		t.Errorf("kernel log has %d transition lines, the trace %d\nkernel: %v\ntrace:  %v", len(klog), len(tr), klog, tr)
	}
	for i := 0; i < min(len(klog), len(tr)); i++ {
		k, e := klog[i], tr[i]
		if k.what != e.what || k.dir != e.dir || (e.patch != "" && k.patch != e.patch) {
			t.Errorf("transition %d: kernel says %v, trace says %v", i, k, e)
		}
		// The kernel log's clock is local_clock(), close to but not exactly
		// CLOCK_MONOTONIC, and the kernel prints after the probed call (an
		// unpatching completes after synchronize_rcu): only a gross difference
		// is an error.
		d := time.Duration(int64(k.t) - int64(e.t))
		t.Logf("%-45v trace %-45v kernel-trace %v", k, e, d)
		if d < -time.Second || d > 5*time.Second {
			t.Errorf("transition %d: kernel log and trace %v apart", i, d)
		}
	}
}

// checkNonDecreasing: events that cause one another (the milestones of a
// transition) must not go back in time, whichever CPU recorded them.
func checkNonDecreasing(t *testing.T, evs []event.Event) {
	t.Helper()
	for i := 1; i < len(evs); i++ {
		if evs[i].Time < evs[i-1].Time {
			t.Errorf("time goes back: %v then %v", evs[i-1], evs[i])
		}
	}
}

// procTasks returns every task's (thread's) patch_state from /proc.
func procTasks() map[int]int {
	out := map[int]int{}
	tasks, _ := filepath.Glob("/proc/[0-9]*/task/[0-9]*")
	for _, d := range tasks {
		b, err := os.ReadFile(d + "/patch_state")
		if err != nil {
			continue // exited meanwhile
		}
		tid, _ := strconv.Atoi(filepath.Base(d))
		ps, err := strconv.Atoi(strings.TrimSpace(string(b)))
		if err == nil {
			out[tid] = ps
		}
	}
	return out
}

// tasksWithFunc returns the tasks whose kernel stack holds fn.
func tasksWithFunc(fn string) []int {
	var out []int
	tasks, _ := filepath.Glob("/proc/[0-9]*/task/[0-9]*")
	for _, d := range tasks {
		b, err := os.ReadFile(d + "/stack")
		if err != nil {
			continue
		}
		sc := bufio.NewScanner(bytes.NewReader(b))
		for sc.Scan() {
			if strings.Contains(sc.Text(), " "+fn+"+") {
				tid, _ := strconv.Atoi(filepath.Base(d))
				out = append(out, tid)
				break
			}
		}
	}
	return out
}

func comm(pid int) string {
	return readAttr(fmt.Sprintf("/proc/%d/comm", pid))
}

func btoi(b bool) int {
	if b {
		return 1
	}
	return 0
}

// tuiSession is klptop in a real terminal: a detached tmux session whose
// screen the test reads and whose keys it types.
type tuiSession struct {
	t       *testing.T
	sock    string
	rcFile  string
	errFile string
}

// startTUI runs klptop with args in a width x height tmux pane, its stderr
// to errFile. The exit status is written to a temporary name and renamed, so
// that the file appears only once it holds the status: a reader that saw
// the file created by the shell's redirection, before the echo, read "".
func startTUI(t *testing.T, sock string, width, height int, errFile string, args ...string) *tuiSession {
	t.Helper()
	s := &tuiSession{t: t, sock: sock, rcFile: filepath.Join(t.TempDir(), "rc"), errFile: errFile}
	cmdline := klptopBin
	for _, a := range args {
		cmdline += " " + a
	}
	sh := fmt.Sprintf("%s 2>%s; echo $? > %s.tmp; mv %s.tmp %s", cmdline, errFile, s.rcFile, s.rcFile, s.rcFile)
	if out, err := s.tmux("-u", "new-session", "-d", "-x", fmt.Sprint(width), "-y", fmt.Sprint(height), "-s", "tui", sh); err != nil {
		t.Fatalf("tmux new-session: %v %s", err, out)
	}
	t.Cleanup(func() { _, _ = s.tmux("kill-server") })
	return s
}

func (s *tuiSession) tmux(args ...string) (string, error) {
	cmd := exec.Command("tmux", append([]string{"-L", s.sock}, args...)...)
	cmd.Env = append(os.Environ(), "TERM=xterm-256color")
	out, err := cmd.CombinedOutput()
	return string(out), err
}

func (s *tuiSession) capture() string {
	out, _ := s.tmux("capture-pane", "-p", "-t", "tui")
	return out
}

func (s *tuiSession) exited() bool { return fileExists(s.rcFile) }

// failIfExited stops the test when klptop is gone before it was asked to go.
func (s *tuiSession) failIfExited(screen string) {
	s.t.Helper()
	if s.exited() {
		errOut, _ := os.ReadFile(s.errFile)
		s.t.Fatalf("klptop exited at start (status %s): %s\n%s", readAttr(s.rcFile), errOut, screen)
	}
}

// quit types q and wants klptop gone within 15s with status 0.
func (s *tuiSession) quit() {
	s.t.Helper()
	if out, err := s.tmux("send-keys", "-t", "tui", "q"); err != nil {
		s.t.Fatalf("send-keys: %v %s", err, out)
	}
	waitFor(s.t, 15*time.Second, "klptop to quit on q", s.exited)
	if rc := readAttr(s.rcFile); rc != "0" {
		errOut, _ := os.ReadFile(s.errFile)
		s.t.Errorf("klptop exited with status %q after q; stderr:\n%s", rc, errOut)
	}
}
