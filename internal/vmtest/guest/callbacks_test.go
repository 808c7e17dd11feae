//go:build guest

package guest

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"testing"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/asm"
	"github.com/cilium/ebpf/link"

	"github.com/klptop/klptop/internal/event"
)

// TestCallbacks: every callback test_klp_callbacks_demo's objects run
// (vmlinux and test_klp_callbacks_mod) appears in the trace once, in the
// kernel log's order, with the right kind, object and function; the
// enable's pre-patch callback bracketed, the others probed; and an enable
// whose pre-patch callback fails (pre_patch_ret=-19) with its error.
func TestCallbacks(t *testing.T) {
	const demo = "test_klp_callbacks_demo"
	t.Cleanup(func() {
		_ = exec.Command("rmmod", "test_klp_callbacks_mod").Run()
		unloadPatch(t, demo, demo)
	})
	pins := kprobePinsModule(t)
	mark := kmsgMark(t)
	rec := startRecord(t, "callbacks", scenarioLib+`modprobe test_klp_callbacks_demo
settle test_klp_callbacks_demo
sleep 2 # klptop probes a new patch's callbacks: seconds under emulation
modprobe test_klp_callbacks_mod
unload test_klp_callbacks_mod
echo 0 > $lp/test_klp_callbacks_demo/enabled
gone test_klp_callbacks_demo
unload test_klp_callbacks_demo
if modprobe test_klp_callbacks_demo pre_patch_ret=-19; then echo "enable did not fail"; exit 1; fi
`)()
	if !slices.Contains(rec.header.Attached, event.CallbacksPoint) {
		t.Fatalf("header does not list %s as attached: %v", event.CallbacksPoint, rec.header.Missing)
	}

	// The kernel's word: test_klp_callbacks_demo logs "<callback>: <object>"
	// and the state of the module (ignored here).
	re := regexp.MustCompile(`^test_klp_callbacks_demo: (pre_patch|post_patch|pre_unpatch|post_unpatch)_callback: (\S+)`)
	// Where a kprobe on a module holds it, klptop takes its probes off the
	// callbacks and says so: then only the bracketed ones, the enable's
	// pre-patch and the post ones of a completion, are seen.
	logText, _ := os.ReadFile(strings.TrimSuffix(rec.path, filepath.Ext(rec.path)) + ".log")
	if said := strings.Contains(string(logText), "a kprobe on a patch module holds the module here"); said != pins {
		t.Errorf("klptop says a kprobe pins a module here: %v; the kernel's refcnt says %v", said, pins)
	}
	var want []string
	for _, m := range readKmsg(t, mark) {
		if s := re.FindStringSubmatch(m.msg); s != nil {
			if pins && (s[2] != "vmlinux" || s[1] == "pre_unpatch") {
				continue
			}
			want = append(want, s[1]+"/"+s[2])
		}
	}
	var got []string
	var cbs []event.Event
	for _, e := range rec.events {
		if e.Type == event.Callback {
			got = append(got, e.Callback+"/"+e.Object)
			cbs = append(cbs, e)
		}
	}
	t.Logf("kernel log: %v", want)
	t.Logf("trace:      %v", got)
	if len(want) < 8 && !pins || len(want) < 4 {
		t.Fatalf("the kernel logged %d callbacks (pinning %v): %v", len(want), pins, want)
	}
	if !slices.Equal(got, want) {
		t.Errorf("callbacks in the trace %v, kernel log %v", got, want)
	}
	var pre []event.Event
	for _, e := range cbs {
		if e.Patch != demo || !strings.HasSuffix(e.Func, e.Callback+"_callback") {
			t.Errorf("callback %s/%s: patch %q func %q", e.Callback, e.Object, e.Patch, e.Func)
		}
		if e.Duration == 0 {
			t.Errorf("callback %s/%s: no duration", e.Callback, e.Object)
		}
		if e.Callback == event.CallbackPrePatch && e.Object == "vmlinux" {
			pre = append(pre, e)
		}
		t.Logf("%s %s %s: %v, ret %d, bracketed %v", e.Patch, e.Callback, e.Object, fmt.Sprint(e.Duration)+"ns", e.Ret, e.Bracketed)
	}
	// The enable's pre-patch callbacks on vmlinux: the first succeeded,
	// the others failed with the module parameter's error (modprobe may
	// try the load twice: the kernel log says how often it ran). All ran
	// before user space could probe them.
	if len(pre) < 2 {
		t.Fatalf("%d pre_patch callbacks on vmlinux, want 2 or more", len(pre))
	}
	if !pre[0].Bracketed || pre[0].Ret != 0 {
		t.Errorf("first enable's pre_patch: bracketed %v ret %d, want bracketed, 0", pre[0].Bracketed, pre[0].Ret)
	}
	for _, p := range pre[1:] {
		if !p.Bracketed || p.Ret != -19 {
			t.Errorf("failed enable's pre_patch: bracketed %v ret %d, want bracketed, -19", p.Bracketed, p.Ret)
		}
	}
	// The module's and the unpatching's were probed on the callbacks
	// themselves (klptop had seen the patch for seconds).
	for _, e := range cbs {
		if pins {
			if !e.Bracketed {
				t.Errorf("%s/%s probed on a kernel where klptop said it would not probe", e.Callback, e.Object)
			}
			continue
		}
		if e.Object == "test_klp_callbacks_mod" || e.Callback == event.CallbackPostUnpatch || e.Callback == event.CallbackPreUnpatch {
			if e.Bracketed {
				t.Errorf("%s/%s bracketed, want probed", e.Callback, e.Object)
			}
		}
	}
	// The report tells them apart.
	out, _ := exec.Command(klptopBin, "report", rec.path).CombinedOutput()
	lines := []string{"    callbacks  pre_patch vmlinux ", "returned -19 (the enable or module load failed)"}
	if !pins {
		lines = append(lines, "    callbacks  pre_unpatch vmlinux ", "(module load or unload)")
	}
	for _, line := range lines {
		if !strings.Contains(string(out), line) {
			t.Errorf("report lacks %q:\n%s", line, out)
		}
	}
}

// kprobePinsModule asks the kernel whether a kprobe on a module's function
// holds the module: its refcnt with a BPF kprobe (perf_kprobe, as klptop
// places its callback probes) on busymod_work_func, against without.
func kprobePinsModule(t *testing.T) bool {
	t.Helper()
	const mod = "test_klp_callbacks_busy"
	run(t, "modprobe", mod)
	defer run(t, "rmmod", mod)
	refs := func() string { return readAttr("/sys/module/" + mod + "/refcnt") }
	before := refs()
	prog, err := ebpf.NewProgram(&ebpf.ProgramSpec{
		Type:         ebpf.Kprobe,
		License:      "GPL",
		Instructions: asm.Instructions{asm.Mov.Imm(asm.R0, 0), asm.Return()},
	})
	if err != nil {
		t.Fatal(err)
	}
	defer prog.Close()
	l, err := link.Kprobe(busyFunc, prog, nil)
	if err != nil {
		t.Fatalf("kprobe on %s:%s: %v", mod, busyFunc, err)
	}
	with := refs()
	l.Close()
	t.Logf("%s refcnt %s, with a kprobe on %s %s", mod, before, busyFunc, with)
	if before == "" || with == "" {
		t.Fatalf("no refcnt for %s", mod)
	}
	return with != before
}
