package probes

import (
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"

	"github.com/klptop/klptop/internal/event"
	"github.com/klptop/klptop/internal/ksym"
)

// A hand-made /proc/kallsyms excerpt: the table is a static variable ('b'),
// and a module symbol with a longer name must not match.
const handMadeKallsyms = `ffffffff8118a0b0 T klp_shadow_get
ffffffff83a1c0c0 b klp_shadow_hash
ffffffffc0a01000 t klp_shadow_hash_dump	[made_up_mod]
`

func TestKallsymsAddr(t *testing.T) {
	p := filepath.Join(t.TempDir(), "kallsyms")
	os.WriteFile(p, []byte(handMadeKallsyms), 0o644)
	if a, err := ksym.New(p).Vmlinux(shadowHashSym); err != nil || a != 0xffffffff83a1c0c0 {
		t.Errorf("klp_shadow_hash at %#x (%v)", a, err)
	}
	// Only some hidden (a module's symbol not): not found, not zero.
	hidden := strings.ReplaceAll(handMadeKallsyms, "ffffffff83a1c0c0", "0000000000000000")
	os.WriteFile(p, []byte(hidden), 0o644)
	if a, _ := ksym.New(p).Vmlinux(shadowHashSym); a != 0 {
		t.Errorf("hidden address read as %#x", a)
	}
}

// Without klp_shadow_hash only klp_shadow_alloc stays: its non-NULL return
// is a new variable whatever the table holds.
func TestPlanShadowWithoutHash(t *testing.T) {
	avail, err := traceable(strings.NewReader(handMadeFilterFunctions))
	if err != nil {
		t.Fatal(err)
	}
	attach, _ := plan(avail)
	if m := planShadow(attach, true); m != nil {
		t.Errorf("with the table: missing %v", m)
	}
	missing := planShadow(attach, false)
	var got []string
	for _, m := range missing {
		got = append(got, m.Symbol)
		if m.Why != whyNoShadowHash {
			t.Errorf("%s: why %q", m.Symbol, m.Why)
		}
	}
	want := []string{"klp_shadow_get_or_alloc", "klp_shadow_get_or_alloc%return", "klp_shadow_free", "klp_shadow_free_all"}
	if !reflect.DeepEqual(got, want) {
		t.Errorf("missing %v, want %v", got, want)
	}
	for _, p := range []string{"shadow_alloc", "shadow_alloc_ret"} {
		if _, ok := attach[p]; !ok {
			t.Errorf("%s dropped", p)
		}
	}
}

// Hand-made counts shaped like test_klp_shadow_vars' id 0x1234: one
// klp_shadow_alloc, five klp_shadow_get_or_alloc of which two allocated,
// three klp_shadow_free.
func TestShadowEvent(t *testing.T) {
	e := shadowEvent(7, 0x1234, shadowCount{AllocCalls: 1, GetOrAllocCalls: 5, FreeCalls: 3, Allocs: 3, Frees: 3})
	want := event.Event{Time: 7, Type: event.Shadow, ID: 0x1234, Allocs: 3, Frees: 3, Live: 0,
		Calls: map[string]uint64{event.ShadowAlloc: 1, event.ShadowGetOrAlloc: 5, event.ShadowFree: 3}}
	if !reflect.DeepEqual(e, want) {
		t.Errorf("got %+v\nwant %+v", e, want)
	}
	// Freed more than seen allocated: allocated before klptop attached.
	if e := shadowEvent(7, 1, shadowCount{FreeAllCalls: 1, Frees: 4}); e.Live != -4 {
		t.Errorf("live %d, want -4", e.Live)
	}
}

func TestDecodeStateRec(t *testing.T) {
	b := make([]byte, stateRecSize)
	b[0] = 1
	b[8] = 2
	copy(b[16:], "test_klp_state2")
	e := decodeStateRec(9, b)
	if e.Type != event.KlpState || e.ID != 1 || e.Version != 2 || e.Patch != "test_klp_state2" || e.Time != 9 {
		t.Errorf("decoded %+v", e)
	}
}
