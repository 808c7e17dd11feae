//go:build guest

package guest

import (
	"encoding/json"
	"os/exec"
	"regexp"
	"slices"
	"strconv"
	"testing"

	"github.com/klptop/klptop/internal/event"
	"github.com/klptop/klptop/internal/state"
	"github.com/klptop/klptop/internal/status"
)

// shadowCounts is what one shadow id went through.
type shadowCounts struct {
	allocs, frees uint64
	calls         map[string]uint64
}

// The kernel's test_klp_shadow_vars logs every call it makes, with pointers
// replaced by PTRn (PTR0 is NULL), and its results:
//
//	test_klp_shadow_vars: klp_shadow_alloc(obj=PTR1, id=0x1234, ...) = PTR6
//	test_klp_shadow_vars: klp_shadow_get_or_alloc(obj=PTR1, id=0x1234, ...) = PTR6
//	test_klp_shadow_vars: klp_shadow_free(obj=PTR1, id=0x1234, dtor=PTR9)
//	test_klp_shadow_vars: klp_shadow_free_all(id=0x1235, dtor=PTR0)
var (
	shadowAllocRE   = regexp.MustCompile(`^test_klp_shadow_vars: (klp_shadow_alloc|klp_shadow_get_or_alloc)\(obj=PTR(\d+), id=0x([0-9a-f]+),.* = PTR(\d+)$`)
	shadowFreeRE    = regexp.MustCompile(`^test_klp_shadow_vars: klp_shadow_free\(obj=PTR(\d+), id=0x([0-9a-f]+),`)
	shadowFreeAllRE = regexp.MustCompile(`^test_klp_shadow_vars: klp_shadow_free_all\(id=0x([0-9a-f]+),`)
)

// shadowFromLog replays the module's log against a model of the kernel's
// table: an allocation is a call returning a variable for an (obj, id)
// that had none; a free frees what the table held.
func shadowFromLog(recs []kmsg) map[uint64]*shadowCounts {
	out := map[uint64]*shadowCounts{}
	of := func(id uint64) *shadowCounts {
		if out[id] == nil {
			out[id] = &shadowCounts{calls: map[string]uint64{}}
		}
		return out[id]
	}
	type key struct {
		obj string
		id  uint64
	}
	live := map[key]bool{}
	hex := func(s string) uint64 { v, _ := strconv.ParseUint(s, 16, 64); return v }
	for _, r := range recs {
		if m := shadowAllocRE.FindStringSubmatch(r.msg); m != nil {
			id, k := hex(m[3]), key{m[2], hex(m[3])}
			c := of(id)
			c.calls[m[1]]++
			if m[4] != "0" && !live[k] {
				live[k] = true
				c.allocs++
			}
		} else if m := shadowFreeRE.FindStringSubmatch(r.msg); m != nil {
			id, k := hex(m[2]), key{m[1], hex(m[2])}
			c := of(id)
			c.calls[event.ShadowFree]++
			if live[k] {
				delete(live, k)
				c.frees++
			}
		} else if m := shadowFreeAllRE.FindStringSubmatch(r.msg); m != nil {
			id := hex(m[1])
			c := of(id)
			c.calls[event.ShadowFreeAll]++
			for k := range live {
				if k.id == id {
					delete(live, k)
					c.frees++
				}
			}
		}
	}
	return out
}

// TestShadowVars records the kernel's test_klp_shadow_vars, which allocates
// and frees shadow variables of ids 0x1234 and 0x1235 in its init, and
// checks the trace's last shadow event of each id against the module's own
// log of its calls.
func TestShadowVars(t *testing.T) {
	mark := kmsgMark(t)
	wait := startRecord(t, "shadow-vars", "modprobe test_klp_shadow_vars && unload test_klp_shadow_vars")
	rec := wait()
	want := shadowFromLog(readKmsg(t, mark))
	if len(want) == 0 {
		t.Fatal("test_klp_shadow_vars logged no shadow variable call")
	}
	for _, fn := range []string{event.ShadowAlloc, event.ShadowGetOrAlloc, event.ShadowFree, event.ShadowFreeAll} {
		if !slices.Contains(rec.header.Attached, fn) {
			t.Errorf("%s not attached: header %v, missing %v", fn, rec.header.Attached, rec.header.Missing)
		}
	}
	got := map[uint64]event.Event{}
	n := 0
	for _, e := range rec.events {
		if e.Type == event.Shadow {
			got[e.ID] = e
			n++
		}
	}
	t.Logf("%d shadow events", n)
	for id, w := range want {
		e, ok := got[id]
		if !ok {
			t.Errorf("id %#x: no shadow event; the module's log says allocs %d frees %d calls %v", id, w.allocs, w.frees, w.calls)
			continue
		}
		t.Logf("id %#x: trace allocs %d frees %d live %d calls %v; module's log allocs %d frees %d calls %v",
			id, e.Allocs, e.Frees, e.Live, e.Calls, w.allocs, w.frees, w.calls)
		if e.Allocs != w.allocs || e.Frees != w.frees || e.Live != int64(w.allocs)-int64(w.frees) {
			t.Errorf("id %#x: trace allocs %d frees %d live %d, module's log allocs %d frees %d", id, e.Allocs, e.Frees, e.Live, w.allocs, w.frees)
		}
		for fn, c := range w.calls {
			if e.Calls[fn] != c {
				t.Errorf("id %#x: %s called %d times by the trace, %d by the module's log", id, fn, e.Calls[fn], c)
			}
		}
	}
	for id := range got {
		if want[id] == nil {
			t.Errorf("id %#x in the trace, never in the module's log", id)
		}
	}
	// The folded state holds the same.
	st := state.New()
	for _, e := range rec.events {
		st.Apply(e)
	}
	if len(st.ShadowList()) != len(want) {
		t.Errorf("state holds %d shadow ids, want %d", len(st.ShadowList()), len(want))
	}
}

// The klp_state arrays of the kernel's test_klp_state (lib/livepatch
// test_klp_state.c: CONSOLE_LOGLEVEL_STATE 1 at version 1) and
// test_klp_state2 (the same state at version 2, an atomic replace).
var wantStates = map[string][]state.KlpState{
	"test_klp_state":  {{ID: 1, Version: 1}},
	"test_klp_state2": {{ID: 1, Version: 2}},
}

// TestKlpStates: klptop sees each patch's klp_state at klp_enable_patch
// (test_klp_state, then test_klp_state2 replacing it), in the start-up
// snapshot of a patch already loaded, and `klptop status --json` shows it.
func TestKlpStates(t *testing.T) {
	t.Cleanup(func() {
		unloadPatch(t, "test_klp_state2", "test_klp_state2")
		unloadPatch(t, "test_klp_state", "test_klp_state")
	})
	rec := startRecord(t, "klp-state", scenarioLib+`modprobe test_klp_state
settle test_klp_state
modprobe test_klp_state2
settle test_klp_state2
gone test_klp_state
unload test_klp_state
`)()
	// Those of klp_enable_patch; a resync's snapshot (the fork and exit
	// probes going on during a transition) gives the patches' states again.
	var seen, resynced []string
	inResync := false
	for i, e := range rec.events {
		switch e.Type {
		case event.Resync:
			inResync = true
		case event.SnapshotEnd:
			inResync = false
		case event.KlpState:
			s := e.Patch + "/" + strconv.FormatUint(e.ID, 10) + "/" + strconv.Itoa(e.Version)
			if inResync {
				resynced = append(resynced, s)
				continue
			}
			seen = append(seen, s)
			// Right after its patch's patch_enable.
			if i == 0 || rec.events[i-1].Type != event.PatchEnable || rec.events[i-1].Patch != e.Patch {
				t.Errorf("klp_state of %s at line %d does not follow its patch_enable", e.Patch, i+2)
			}
		}
	}
	if w := []string{"test_klp_state/1/1", "test_klp_state2/1/2"}; !slices.Equal(seen, w) {
		t.Errorf("klp_state events %v, want %v", seen, w)
	}
	for _, s := range resynced {
		if !slices.Contains(seen, s) {
			t.Errorf("a resync's klp_state %s, which no patch_enable had", s)
		}
	}
	t.Logf("klp_state events at enables %v, in resyncs %v", seen, resynced)
	st := state.New()
	for _, e := range rec.events {
		st.Apply(e)
	}
	if p := st.Patch("test_klp_state2"); p == nil || !slices.Equal(p.States, wantStates["test_klp_state2"]) {
		t.Errorf("state: test_klp_state2 is %+v, want states %v", p, wantStates["test_klp_state2"])
	}

	// test_klp_state2 is loaded: the snapshot reads its states.
	snap := startRecord(t, "klp-state-snapshot", "true")()
	var snapStates []event.Event
	for _, e := range snap.events {
		if e.Type == event.KlpState {
			snapStates = append(snapStates, e)
		}
		if e.Type == event.SnapshotEnd {
			break
		}
	}
	if len(snapStates) != 1 || snapStates[0].Patch != "test_klp_state2" || snapStates[0].ID != 1 || snapStates[0].Version != 2 {
		t.Errorf("snapshot klp_state events %+v, want test_klp_state2 id 1 version 2", snapStates)
	}

	out, err := exec.Command(klptopBin, "status", "--json").Output()
	if err != nil {
		t.Fatalf("klptop status --json: %v", err)
	}
	var js status.Status
	if err := json.Unmarshal(out, &js); err != nil {
		t.Fatalf("status --json: %v\n%s", err, out)
	}
	found := false
	for _, p := range js.Patches {
		if p.Name == "test_klp_state2" {
			found = true
			if len(p.States) != 1 || p.States[0].ID != 1 || p.States[0].Version != 2 {
				t.Errorf("status --json: test_klp_state2 states %+v, want id 1 version 2", p.States)
			}
		}
	}
	if !found {
		t.Errorf("status --json has no test_klp_state2: %s", out)
	}
}
