//go:build guest

package guest

import (
	"fmt"
	"io"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"testing"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/asm"
	"github.com/cilium/ebpf/features"
	"github.com/cilium/ebpf/link"

	"github.com/klptop/klptop/internal/event"
	"github.com/klptop/klptop/internal/trace"
)

// pacedSampleScript is sampleScript with pauses after each transition:
// klptop re-reads function stacks behind the ring buffer, and on a fast
// transition (7.x: 15 ms) the patched stack may be gone before the read,
// legitimately skipped; paced, both recordings must show it.
const pacedSampleScript = `set -e
lp=/sys/kernel/livepatch/livepatch_sample
modprobe livepatch-sample
while [ "$(cat $lp/transition)" != 0 ]; do sleep 0.05; done
sleep 2
echo 0 > $lp/enabled
while [ -e $lp ]; do sleep 0.05; done
sleep 2
unload livepatch_sample
`

// attachLine is klptop's start-up note: "N probes attached (BACKEND) in D".
var attachLine = regexp.MustCompile(`(\d+) probes attached \((\S+)\) in (\S+)`)

// startupLine is the start-up note that gives the time of each step.
var startupLine = regexp.MustCompile(`start-up: [^\n]* program loads?\)`)

// attachNote reads the attach note from a recording's klptop output.
func attachNote(t *testing.T, rec *recording) (n, backend, took string) {
	t.Helper()
	b, err := os.ReadFile(strings.TrimSuffix(rec.path, filepath.Ext(rec.path)) + ".log")
	if err != nil {
		t.Fatal(err)
	}
	m := attachLine.FindStringSubmatch(string(b))
	if m == nil {
		t.Fatalf("no attach note in klptop's output:\n%s", b)
	}
	if s := startupLine.Find(b); s != nil {
		t.Logf("%s", s)
	} else {
		t.Errorf("no start-up note in klptop's output:\n%s", b)
	}
	return m[1], m[2], m[3]
}

// TestFentryBackend: the sample livepatch's patch and unpatch recorded with
// --backend fentry tell the same story as with kprobes: same milestones,
// sweeps, checks with reasons, switches and function stacks. Probes fentry
// cannot take (clones, functions without BTF, refused) go on as kprobes and
// the header says which. Also logs the attach time
// of each backend.
func TestFentryBackend(t *testing.T) {
	needKlptop(t)
	t.Cleanup(func() { unloadPatch(t, sampleName, "livepatch_sample") })
	dir := filepath.Join(outDir, "traces")

	if err := os.MkdirAll(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	// The kprobe backend auto would take without fentry (Debian's 6.1 has
	// no kprobe-multi): the one to compare with. (What auto picks, every
	// other test's header shows: TestProbePlanAgreesWithKernel logs it.)
	kmode := "kprobe-multi"
	if err := features.HaveBPFLinkKprobeMulti(); err != nil {
		t.Logf("no kprobe-multi here, comparing with single kprobes: %v", err)
		kmode = "kprobe"
	}
	mark := kmsgMark(t)
	fe := startRecordArgs(t, filepath.Join(dir, "fentry.ndjson"), pacedSampleScript, "--backend", "fentry")()
	klog := readKmsg(t, mark)
	kp := startRecordArgs(t, filepath.Join(dir, "fentry-"+kmode+".ndjson"), pacedSampleScript, "--backend", kmode)()

	feN, feBackend, feTook := attachNote(t, fe)
	kpN, kpBackend, kpTook := attachNote(t, kp)
	t.Logf("attach time on %s: fentry %s (%s probes), %s %s (%s probes)",
		kernelRelease(t), feTook, feN, kpBackend, kpTook, kpN)
	if feBackend != "fentry" || fe.header.Backend != "fentry" {
		t.Errorf("--backend fentry: note says %s, header says %q", feBackend, fe.header.Backend)
	}
	if kp.header.Backend != kmode {
		t.Errorf("--backend %s: header says %q", kmode, kp.header.Backend)
	}
	if len(kp.header.Fallback) != 0 {
		t.Errorf("%s recording has fentry fallbacks: %v", kmode, kp.header.Fallback)
	}

	t.Run("header", func(t *testing.T) {
		t.Logf("fentry attached %d: %v", len(fe.header.Attached), fe.header.Attached)
		for _, f := range fe.header.Fallback {
			t.Logf("kprobe instead of fentry: %s (%s)", f.Symbol, f.Why)
			if !slices.Contains(fe.header.Attached, f.Symbol) {
				t.Errorf("fallback %s is not among the attached points", f.Symbol)
			}
		}
		// The fallback is per probe: most entry points must have gone
		// on as fentry, or the backend is fentry in name only. Every
		// return probe is a kretprobe (an fexit frame would make the
		// stacks the transition checks unreliable).
		entries, entryFallbacks := 0, 0
		for _, a := range fe.header.Attached {
			if a == event.CallbacksPoint || strings.HasSuffix(a, "%return") {
				continue
			}
			entries++
			if slices.ContainsFunc(fe.header.Fallback, func(f trace.Missing) bool { return f.Symbol == a }) {
				entryFallbacks++
			}
		}
		if entryFallbacks*2 > entries {
			t.Errorf("%d of %d entry points fell back to kprobes", entryFallbacks, entries)
		}
		for _, a := range fe.header.Attached {
			fell := slices.ContainsFunc(fe.header.Fallback, func(f trace.Missing) bool { return f.Symbol == a })
			if strings.HasSuffix(a, "%return") && !fell {
				t.Errorf("return probe %s attached, but not listed as a kretprobe fallback", a)
			}
			// A compiler clone has no BTF: it can only be a kprobe.
			if a != event.CallbacksPoint && strings.Contains(strings.TrimSuffix(a, "%return"), ".") && !fell {
				t.Errorf("clone %s attached, but not listed as a kprobe fallback", a)
			}
		}
		// Same probe points as the kprobe backend: what is observable
		// does not depend on how it is attached.
		if got, want := strings.Join(fe.header.Attached, " "), strings.Join(kp.header.Attached, " "); got != want {
			t.Errorf("attached with fentry:\n  %s\nwith %s:\n  %s", got, kmode, want)
		}
		if got, want := fmt.Sprint(fe.header.Missing), fmt.Sprint(kp.header.Missing); got != want {
			t.Errorf("missing with fentry %s, with %s %s", got, kmode, want)
		}
	})

	t.Run("events", func(t *testing.T) {
		want := []string{"transition_init/1", "transition_start", "transition_complete",
			"transition_init/0", "transition_start", "transition_complete"}
		for _, rec := range []*recording{fe, kp} {
			ms, _ := rec.milestones()
			var got []string
			for _, e := range ms {
				s := string(e.Type)
				if e.Type == event.TransitionInit {
					s += fmt.Sprintf("/%d", e.Target)
				}
				got = append(got, s)
			}
			if strings.Join(got, " ") != strings.Join(want, " ") {
				t.Errorf("%s: milestones %v, want %v", rec.header.Backend, got, want)
			}
		}
		feTypes, kpTypes := eventTypes(fe), eventTypes(kp)
		t.Logf("fentry: %v", feTypes)
		t.Logf("%s: %v", kmode, kpTypes)
		for _, ty := range []event.Type{event.SweepStart, event.SweepEnd, event.FuncStack} {
			if feTypes[ty] == 0 {
				t.Errorf("no %s event with fentry", ty)
			}
		}
		// Whatever the kprobes saw of a transition, fentry sees too. Counts
		// depend on timing (sweeps retried), so types are compared by
		// presence. Except task_switch: whether any task switches itself
		// before a sweep switches it is a race, on 7.x's single vCPU
		// usually lost (0 to 3 such switches in either backend, all of
		// klptop's own threads at a syscall exit); it is logged. So is
		// task_exit: whether a task exits during a transition is timing.
		// And task_check: a sweep sends only the checks that fail, and
		// whether a task is running when it is checked is timing too. And
		// resync: the fork and exit probes go on (and a resync follows)
		// only in a transition that its first sweep did not complete.
		t.Logf("task_switch: %d with fentry, %d with %s", feTypes[event.TaskSwitch], kpTypes[event.TaskSwitch], kmode)
		t.Logf("task_exit: %d with fentry, %d with %s", feTypes[event.TaskExit], kpTypes[event.TaskExit], kmode)
		t.Logf("task_check: %d with fentry, %d with %s", feTypes[event.TaskCheck], kpTypes[event.TaskCheck], kmode)
		for ty, n := range kpTypes {
			if n > 0 && feTypes[ty] == 0 && ty != event.TaskSwitch && ty != event.TaskExit && ty != event.TaskCheck && ty != event.Resync {
				t.Errorf("%s: %d with %s, none with fentry", ty, n, kmode)
			}
		}
		// fexit reads the check's verdict like the kretprobe did: the
		// sweeps count the successful checks they did not send
		// (aggregate), and every failed one that is sent has a reason.
		reasons := map[string]int{}
		aggregated := 0
		for _, e := range fe.events {
			switch e.Type {
			case event.TaskCheck:
				reasons[e.Reason]++
			case event.SweepEnd:
				if !e.Aggregate {
					t.Errorf("fentry: sweep_end at %d not aggregate", e.Time)
				}
				aggregated += e.Aggregated
				if e.Aggregated+e.Pending > e.Checked {
					t.Errorf("fentry: sweep_end at %d: %d aggregated and %d pending of %d checked", e.Time, e.Aggregated, e.Pending, e.Checked)
				}
			}
		}
		t.Logf("fentry task_check reasons: %v; %d successful checks aggregated", reasons, aggregated)
		if aggregated == 0 || reasons[""] > 0 {
			t.Errorf("fentry task_check reasons %v, %d aggregated: want aggregated switches and no check without a reason", reasons, aggregated)
		}
	})
	t.Run("kernel_log", func(t *testing.T) { checkAgainstKernelLog(t, fe, klog) })
}

func eventTypes(rec *recording) map[event.Type]int {
	m := map[event.Type]int{}
	for _, e := range rec.events {
		m[e.Type]++
	}
	return m
}

// TestFentryFallbackOnRefusedLink: a function whose trampoline the kernel
// refuses once klptop's programs are loaded (here: klp_init_transition's,
// filled to the kernel's limit of programs per trampoline beforehand) gets
// its kprobe program instead, loaded afterwards over the same maps: the
// recording still shows each transition_init, named after its patch (the
// transition state it sets lives in the shared .bss), and the header says
// why that probe is a kprobe.
func TestFentryFallbackOnRefusedLink(t *testing.T) {
	needKlptop(t)
	t.Cleanup(func() { unloadPatch(t, sampleName, "livepatch_sample") })
	const target = "klp_init_transition"
	var held []io.Closer
	t.Cleanup(func() {
		for _, c := range held {
			c.Close()
		}
	})
	for i := 0; ; i++ {
		prog, err := ebpf.NewProgram(&ebpf.ProgramSpec{
			Type: ebpf.Tracing, AttachType: ebpf.AttachTraceFEntry, AttachTo: target, License: "GPL",
			Instructions: asm.Instructions{asm.Mov.Imm(asm.R0, 0), asm.Return()},
		})
		if err != nil {
			t.Fatalf("fentry program on %s: %v", target, err)
		}
		held = append(held, prog)
		l, err := link.AttachTracing(link.TracingOptions{Program: prog, AttachType: ebpf.AttachTraceFEntry})
		if err != nil {
			if i == 0 {
				t.Fatalf("no fentry link on %s at all: %v", target, err)
			}
			t.Logf("trampoline of %s full after %d links: %v", target, i, err)
			break
		}
		held = append(held, l)
		if i > 200 {
			t.Fatalf("%d fentry links on %s and no limit", i, target)
		}
	}

	rec := startRecordArgs(t, filepath.Join(outDir, "traces", "fentry-refused.ndjson"), pacedSampleScript, "--backend", "fentry")()
	if rec.header.Backend != "fentry" {
		t.Errorf("header backend %q, want fentry", rec.header.Backend)
	}
	var why string
	for _, f := range rec.header.Fallback {
		if f.Symbol == target {
			why = f.Why
		}
	}
	t.Logf("fallback: %v", rec.header.Fallback)
	if !strings.HasPrefix(why, "fentry attach: ") {
		t.Errorf("header fallback for %s: %q, want the refused link", target, why)
	}
	if !slices.Contains(rec.header.Attached, target) {
		t.Errorf("%s not attached: %v (missing %v)", target, rec.header.Attached, rec.header.Missing)
	}
	var inits []string
	for _, e := range rec.events {
		if e.Type == event.TransitionInit {
			inits = append(inits, fmt.Sprintf("%s/%d", e.Patch, e.Target))
		}
	}
	want := []string{sampleName + "/1", sampleName + "/0"}
	if !slices.Equal(inits, want) {
		t.Errorf("transition_init events %v, want %v", inits, want)
	}
	// The events of the fentry programs see what the fallen-back kprobe
	// set: the transition's patch name.
	for _, e := range rec.events {
		if e.Type == event.TransitionComplete && e.Patch != sampleName {
			t.Errorf("transition_complete of patch %q, want %q", e.Patch, sampleName)
		}
	}
}
