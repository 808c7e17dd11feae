package state

import (
	"cmp"
	"slices"
	"testing"

	"github.com/klptop/klptop/internal/event"
)

// The first 17 keep their indices: the seeds below and in testdata/fuzz
// name types by them. TestFuzzTypesComplete keeps the list whole.
var fuzzTypes = []event.Type{event.PatchEnable, event.TransitionInit, event.TransitionStart,
	event.TransitionComplete, event.TransitionReverse, event.TransitionCancel, event.TransitionForce,
	event.SweepStart, event.SweepEnd, event.TaskCheck, event.TaskSwitch, event.PatchSnapshot,
	event.TaskSnapshot, event.SnapshotEnd, event.Lost, event.Signal, "bogus",
	event.FuncStack, event.KlpState, event.Shadow, event.ModuleComing, event.ModuleGoing,
	event.ModuleApply, event.ModuleRevert, event.PatchReplace, event.PatchReplaced,
	event.NopsDiscard, event.ReplacedFree, event.PatchFree, event.Callback, event.TaskExit, event.Resync}

var (
	fuzzComms   = []string{"", "swapper/0", "swapper/1", "swapper/x", "kworker/0:1", "bash", "swapper/-3", "swapper/99999999999"}
	fuzzPatches = []string{"", "a", "b", "c"}
	fuzzReasons = []string{"", event.ReasonSwitched, event.ReasonRunning, event.ReasonSleeping, event.ReasonUnreliable, "errno_5"}
	fuzzPaths   = []string{"", event.PathUser, event.PathFork, event.PathIdle}
	fuzzObjects = []string{"", "vmlinux", "m"}
	fuzzFuncs   = []string{"", "f", "g"}
	fuzzCBs     = []string{"", event.CallbackPrePatch, event.CallbackPostPatch, event.CallbackPreUnpatch,
		event.CallbackPostUnpatch, "bogus"}
	fuzzShadow = []string{event.ShadowAlloc, event.ShadowGetOrAlloc, event.ShadowFree, event.ShadowFreeAll, "x"}
)

// fuzzVersions is a func_stack of up to three versions, top first.
func fuzzVersions(b byte) []event.FuncVersion {
	var vs []event.FuncVersion
	for i := range int(b % 4) {
		bits := b >> (2 + 2*i)
		vs = append(vs, event.FuncVersion{
			Patch: fuzzPatches[int(bits)%len(fuzzPatches)], Func: fuzzFuncs[int(bits>>1)%len(fuzzFuncs)],
			Nop: bits&1 != 0, Patched: bits&2 != 0, Transition: i == 0 && bits&2 != 0,
		})
	}
	return vs
}

// fuzzEvents decodes 8 bytes per event; small values are favoured so that
// the fuzzer hits the same tasks and patches repeatedly.
func fuzzEvents(b []byte) []event.Event {
	var out []event.Event
	var now uint64
	for len(b) >= 8 {
		c := b[:8]
		b = b[8:]
		// Time mostly moves forward, sometimes back: traces can be reordered.
		switch d := uint64(c[1]); {
		case d >= 0xf0:
			now -= min(now, d-0xf0)
		case d == 0xef:
			now = 1<<64 - 1 - uint64(c[2])
		default:
			now += d << (c[7] & 31)
		}
		e := event.Event{
			Time:         now,
			Type:         fuzzTypes[int(c[0])%len(fuzzTypes)],
			PID:          int(c[2]%10) - 1,
			CPU:          int(c[3]%5) - 1,
			Comm:         fuzzComms[int(c[3]>>3)%len(fuzzComms)],
			Patch:        fuzzPatches[int(c[4])%len(fuzzPatches)],
			Target:       int(c[4]>>2)%5 - 2,
			PatchState:   int(c[5]%7) - 3,
			Seq:          int(c[5]>>3)%7 - 2,
			Reason:       fuzzReasons[int(c[6])%len(fuzzReasons)],
			Ret:          -int32(c[6] >> 1),
			Path:         fuzzPaths[int(c[6]>>4)%len(fuzzPaths)],
			Enabled:      c[7]&0x20 != 0,
			InTransition: c[7]&0x40 != 0,
			Replace:      c[7]&0x80 != 0,
			Pending:      int(int8(c[2])),
			Duration:     uint64(c[3]),
			Count:        uint64(c[4]),
		}
		if c[7]&0x60 == 0x60 {
			e.Func = "f"
			e.Stack = []string{"f+0x1/0x2", "g+0x3/0x4"}
		}
		// The fields of the later types, from the same bytes.
		switch e.Type {
		case event.FuncStack:
			e.Func = fuzzFuncs[int(c[5])%len(fuzzFuncs)]
			e.Object = fuzzObjects[int(c[3])%len(fuzzObjects)]
			e.Versions = fuzzVersions(c[6])
		case event.KlpState, event.Shadow:
			e.ID, e.Version = uint64(c[5]%3), int(c[3]%4)-1
			e.Func = fuzzShadow[int(c[6])%len(fuzzShadow)]
			e.Allocs, e.Frees, e.Live = uint64(c[3]), uint64(c[5]), int64(int8(c[6]))
			if c[7]&1 != 0 {
				e.Calls = map[string]uint64{e.Func: uint64(c[2])}
			}
		case event.ModuleComing, event.ModuleGoing, event.ModuleApply, event.ModuleRevert, event.Callback:
			e.Object = fuzzObjects[int(c[5])%len(fuzzObjects)]
			e.Callback = fuzzCBs[int(c[6])%len(fuzzCBs)]
			e.Func = fuzzFuncs[int(c[3])%len(fuzzFuncs)]
			e.Bracketed = c[7]&1 != 0
		}
		out = append(out, e)
	}
	return out
}

// FuzzApply: no event sequence makes Apply or a Tracker panic, and the
// state stays self-consistent after every event.
func FuzzApply(f *testing.F) {
	f.Add([]byte{})
	f.Add([]byte{
		13, 1, 1, 0, 0, 0, 0, 0, // snapshot_end
		1, 1, 1, 0, 1, 2, 0, 0, // init a
		7, 1, 2, 0, 0, 3, 3, 0, // sweep start
		9, 1, 3, 0, 0, 3, 3, 0x60, // check sleeping with stack
		9, 1, 4, 0, 0, 3, 1, 0, // check switched
		4, 1, 0, 0, 0, 0, 0, 0, // reverse
		6, 1, 0, 0, 0, 0, 0, 0, // force
		3, 1, 0, 0, 0, 0, 0, 0, // complete
	})
	f.Add([]byte{
		11, 0, 0, 0, 1, 0x0c, 0, 0x60, // patch snapshot, in transition
		12, 0, 3, 0x10, 0, 3, 0, 0, // task snapshot
		12, 0, 4, 0x18, 0, 4, 0, 0,
		13, 0, 0, 0, 0, 0, 0, 0,
		10, 0xf5, 3, 0x10, 0, 4, 0x10, 0, // switch, time back
		14, 0xef, 9, 9, 9, 0, 0, 0, // lost, time near max
	})
	f.Add([]byte{
		11, 0, 0, 0, 1, 0, 0, 0x20, // patch snapshot a, enabled
		13, 0, 0, 0, 0, 0, 0, 0, // snapshot_end
		0, 1, 0, 0, 2, 0, 0, 0, // patch_enable b
		18, 1, 0, 1, 2, 1, 0, 0, // klp_state
		1, 1, 1, 0, 2, 2, 0, 0, // init b
		17, 1, 0, 1, 2, 1, 0x1e, 0, // func_stack
		29, 1, 0, 1, 2, 1, 1, 1, // callback pre_patch, bracketed
		20, 1, 0, 0, 2, 2, 0, 0, // module_coming
		22, 1, 0, 0, 2, 2, 0, 0, // module_apply
		24, 1, 0, 0, 2, 0, 0, 0, // patch_replace
		25, 1, 0, 0, 1, 0, 0, 0, // patch_replaced
		26, 1, 0, 0, 2, 0, 0, 0, // nops_discard
		19, 1, 3, 4, 2, 1, 2, 1, // shadow
		3, 1, 0, 0, 0, 0, 0, 0, // complete
		27, 1, 0, 0, 2, 0, 0, 0, // replaced_free
		28, 1, 0, 0, 1, 0, 0, 0, // patch_free
		21, 1, 0, 0, 2, 2, 0, 0, // module_going
		23, 1, 0, 0, 2, 2, 0, 0, // module_revert
	})
	f.Fuzz(func(t *testing.T, b []byte) {
		evs := fuzzEvents(b)
		s := New()
		k := NewTracker()
		var now uint64
		for i, e := range evs {
			s.Apply(e)
			checkInvariants(t, s, i)
			checkFuzzInvariants(t, s, i, now)
			now = s.Now
			if ended := k.Apply(e); ended != nil {
				checkEnded(t, ended, i)
			}
			checkInvariants(t, k.S, i)
		}
		if ended := k.Close(); ended != nil {
			checkEnded(t, ended, len(evs))
		}
	})
}

func checkFuzzInvariants(t *testing.T, s *State, step int, prevNow uint64) {
	t.Helper()
	if s.Now < prevNow {
		t.Fatalf("step %d: Now went back from %d to %d", step, prevNow, s.Now)
	}
	if len(s.History) > maxHistory {
		t.Fatalf("step %d: history %d", step, len(s.History))
	}
	if tr := s.Transition; tr != nil {
		if tr.Switched < 0 || tr.Switched > tr.Total {
			t.Fatalf("step %d: switched %d of %d", step, tr.Switched, tr.Total)
		}
		if tr.Target != event.StatePatched && tr.Target != event.StateUnpatched {
			t.Fatalf("step %d: target %d", step, tr.Target)
		}
		_ = tr.Elapsed(s.Now)
	}
	p := s.Pending()
	for i := 1; i < len(p); i++ {
		if c := cmp.Or(cmp.Compare(p[i-1].PendingSince, p[i].PendingSince), cmp.Compare(p[i-1].PID, p[i].PID)); c > 0 {
			t.Fatalf("step %d: Pending() not sorted at %d", step, i)
		}
	}
	seen := map[string]bool{}
	for _, pt := range s.Patches {
		if seen[pt.Name] {
			t.Fatalf("step %d: patch %q twice on the stack", step, pt.Name)
		}
		seen[pt.Name] = true
	}
	for key, tk := range s.Tasks {
		if tk == nil {
			t.Fatalf("step %d: nil task %d", step, key)
		}
	}
}

func checkEnded(t *testing.T, en *Ended, step int) {
	t.Helper()
	if en.Transition == nil || en.Index < 1 {
		t.Fatalf("step %d: ended %+v", step, en)
	}
	for i, b := range en.Blockers {
		if b.open || b.Checks < 0 || (b.Checks > 0 && b.FirstCheck > b.LastCheck) {
			t.Fatalf("step %d: blocker %+v", step, b)
		}
		if i > 0 && en.Blockers[i-1].Blocked < b.Blocked {
			t.Fatalf("step %d: blockers not longest first", step)
		}
	}
}

// Every event type reaches the fuzzer and the garbage test.
func TestFuzzTypesComplete(t *testing.T) {
	for _, ty := range event.Types() {
		if !slices.Contains(fuzzTypes, ty) {
			t.Errorf("fuzzTypes lacks %s", ty)
		}
	}
}
