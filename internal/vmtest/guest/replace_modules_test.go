//go:build guest

package guest

import (
	"fmt"
	"slices"
	"strings"
	"testing"

	"github.com/klptop/klptop/internal/event"
	"github.com/klptop/klptop/internal/state"
)

// attachedOrMissing: whether the recording probed fn. The kernel decides
// what may be expected of it: a function available_filter_functions lists
// must be attached, one it does not list must be named missing.
func attachedOrMissing(t *testing.T, rec *recording, fn string) bool {
	t.Helper()
	traceable := kernelTraceable(t)[fn]
	if slices.Contains(rec.header.Attached, fn) {
		if !traceable {
			t.Errorf("%s attached, yet available_filter_functions does not list it", fn)
		}
		return true
	}
	if traceable {
		t.Errorf("%s is traceable here, and klptop did not attach it (missing %v)", fn, rec.header.Missing)
		return false
	}
	for _, m := range rec.header.Missing {
		if m.Symbol == fn {
			t.Logf("%s not observable here: %s", fn, m.Why)
			return false
		}
	}
	t.Errorf("%s neither attached nor named missing", fn)
	return false
}

// replaceScript: test_klp_livepatch replaced atomically by
// test_klp_atomic_replace, then the replacement disabled; both unloaded.
const replaceScript = `modprobe test_klp_livepatch
settle test_klp_livepatch
modprobe test_klp_atomic_replace replace=1
settle test_klp_atomic_replace
gone test_klp_livepatch
unload test_klp_livepatch
echo 0 > $lp/test_klp_atomic_replace/enabled
gone test_klp_atomic_replace
unload test_klp_atomic_replace
`

// TestReplaceEvents: an atomic replace of test_klp_livepatch by
// test_klp_atomic_replace. The kernel names the patch it replaces (from its
// own klp_patches), discards the nops, and frees the replaced patch; the
// replaced patch leaves the folded state at that free, not before.
func TestReplaceEvents(t *testing.T) {
	t.Cleanup(func() {
		unloadPatch(t, scReplace, scReplace)
		unloadPatch(t, scKlpTest, scKlpTest)
	})
	s := startScenario(t, "replace-events", replaceScript)
	rec, _ := s.finish()
	var got []string
	for _, e := range rec.events {
		switch e.Type {
		case event.PatchReplace, event.PatchReplaced, event.NopsDiscard, event.ReplacedFree, event.PatchFree:
			got = append(got, string(e.Type)+"/"+e.Patch)
		}
	}
	t.Logf("replace events: %v", got)
	want := []string{}
	if attachedOrMissing(t, rec, "klp_unpatch_replaced_patches") {
		want = append(want, "patch_replace/"+scReplace, "patch_replaced/"+scKlpTest)
	}
	if attachedOrMissing(t, rec, "klp_discard_nops") {
		want = append(want, "nops_discard/"+scReplace)
	}
	freeReplaced := attachedOrMissing(t, rec, "klp_free_replaced_patches_async")
	if freeReplaced {
		want = append(want, "replaced_free/"+scReplace)
	}
	if attachedOrMissing(t, rec, "klp_free_patch_async") {
		// The disable at the end frees the replacing patch.
		want = append(want, "patch_free/"+scReplace)
	}
	// In the kernel's order; a patch_free of the replaced patch (when
	// klp_free_patch_async is not inlined into its caller) may come too.
	var core []string
	for _, g := range got {
		if g != "patch_free/"+scKlpTest {
			core = append(core, g)
		}
	}
	if !slices.Equal(core, want) {
		t.Errorf("replace events %v, want %v", core, want)
	}

	// Folded: test_klp_livepatch is there until the kernel frees it.
	st := state.New()
	completed, left := -1, -1
	for i, e := range rec.events {
		st.Apply(e)
		if e.Type == event.TransitionComplete && e.Patch == scReplace && completed < 0 {
			completed = i
			if st.Patch(scKlpTest) == nil && freeReplaced {
				t.Errorf("%s gone from the state at %s's transition_complete, before the kernel freed it", scKlpTest, scReplace)
			}
		}
		if left < 0 && completed >= 0 && st.Patch(scKlpTest) == nil {
			left = i
		}
	}
	if left < 0 {
		t.Fatalf("%s never left the state", scKlpTest)
	}
	if e := rec.events[left]; freeReplaced && (e.Type != event.ReplacedFree || e.Patch != scReplace) {
		t.Errorf("%s left the state at %v, want %s's replaced_free", scKlpTest, e, scReplace)
	}
	t.Logf("%s left the state at event %d: %v", scKlpTest, left, rec.events[left])
}

const (
	cbDemo = "test_klp_callbacks_demo"
	cbMod  = "test_klp_callbacks_mod"
)

// TestModuleEvents: with test_klp_callbacks_demo enabled, loading and
// unloading the module it patches is seen as module_coming/module_apply and
// module_going/module_revert, as the kernel log tells them.
func TestModuleEvents(t *testing.T) {
	t.Cleanup(func() { unloadPatch(t, demoName, cbMod, cbDemo) })
	s := startScenario(t, "modules", `modprobe test_klp_callbacks_demo
settle test_klp_callbacks_demo
modprobe test_klp_callbacks_mod
unload test_klp_callbacks_mod
echo 0 > $lp/test_klp_callbacks_demo/enabled
gone test_klp_callbacks_demo
unload test_klp_callbacks_demo
`)
	rec, klog := s.finish()
	var logLines []string
	for _, r := range klog {
		if strings.Contains(r.msg, "loading module '") || strings.Contains(r.msg, "unloading module '") {
			logLines = append(logLines, r.msg)
		}
	}
	t.Logf("kernel log: %q", logLines)
	applyLine := fmt.Sprintf("applying patch '%s' to loading module '%s'", cbDemo, cbMod)
	revertLine := fmt.Sprintf("reverting patch '%s' on unloading module '%s'", cbDemo, cbMod)
	for _, l := range []string{applyLine, revertLine} {
		if !slices.ContainsFunc(logLines, func(m string) bool { return strings.Contains(m, l) }) {
			t.Errorf("kernel log lacks %q", l)
		}
	}
	var got []string
	for _, e := range rec.events {
		switch e.Type {
		case event.ModuleComing, event.ModuleGoing, event.ModuleApply, event.ModuleRevert:
			if e.Object == cbMod {
				got = append(got, string(e.Type)+"/"+e.Patch)
			}
		}
	}
	t.Logf("module events of %s: %v", cbMod, got)
	var want []string
	if attachedOrMissing(t, rec, "klp_module_coming") {
		want = append(want, "module_coming/")
	}
	if attachedOrMissing(t, rec, "klp_patch_object") {
		want = append(want, "module_apply/"+cbDemo) // the log's "applying patch"
	}
	if attachedOrMissing(t, rec, "klp_module_going") {
		want = append(want, "module_going/")
	}
	if attachedOrMissing(t, rec, "klp_unpatch_object") {
		want = append(want, "module_revert/"+cbDemo) // the log's "reverting patch"
	}
	if !slices.Equal(got, want) {
		t.Errorf("module events of %s: %v, want %v", cbMod, got, want)
	}
}
