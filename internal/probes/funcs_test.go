package probes

import (
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/klptop/klptop/internal/event"
	"github.com/klptop/klptop/internal/ksym"
)

// The funcs iterator must load where the kernel has no livepatch types (its
// CO-RE reads sit behind bpf_core_type_exists) and say why it read nothing.
func TestFuncsIteratorWithoutLivepatchBTF(t *testing.T) {
	if _, err := os.Stat("/sys/kernel/livepatch"); err == nil {
		t.Skip("this kernel has livepatch")
	}
	spec := bpfSpec(t)
	coll, _, _, _, _, err := loadCollection(spec, map[string]bool{funcsProg: true}, "", nil)
	if err != nil {
		t.Fatal(err)
	}
	s := &Session{coll: coll, syms: ksym.New("/proc/kallsyms"), root: "/"}
	defer s.Close()
	_, err = s.FuncStacks()
	if err == nil || !strings.Contains(err.Error(), "not observable here") {
		t.Fatalf("FuncStacks on a kernel without klp_ops: %v", err)
	}
}

func TestResolveHeads(t *testing.T) {
	dir := t.TempDir()
	p := filepath.Join(dir, "kallsyms")
	// 7.2 lists klp_ops as text: the type letter must not matter.
	os.WriteFile(p, []byte("ffffffff81000000 T _text\nffffffff82000010 d klp_patches\nffffffff82000100 t klp_ops\nffffffffc0000000 d klp_ops\t[other]\n"), 0o644)
	h, why := resolveHeads(ksym.New(p))
	if why != "" || h["klp_patches_addr"] != 0xffffffff82000010 || h["klp_ops_addr"] != 0xffffffff82000100 {
		t.Errorf("heads %x, why %q", h, why)
	}
	os.WriteFile(p, []byte("ffffffff81000000 T _text\nffffffff82000010 d klp_patches\n"), 0o644)
	if _, why := resolveHeads(ksym.New(p)); !strings.Contains(why, "no klp_ops") {
		t.Errorf("why = %q", why)
	}
}

// Two patches on cmdline_proc_show and a replace patch's nop: the stack comes
// from the klp_ops walk, newest first; patch and object from klp_patches.
func TestBuildStacks(t *testing.T) {
	dir := t.TempDir()
	p := filepath.Join(dir, "kallsyms")
	os.WriteFile(p, []byte(`ffffffff81400000 t cmdline_proc_show
ffffffff81400100 t meminfo_proc_show
ffffffff81400800 t other
ffffffffc0001000 t livepatch_cmdline_proc_show	[livepatch_sample]
ffffffffc0001100 t livepatch_end	[livepatch_sample]
ffffffffc0002000 t livepatch_cmdline_proc_show	[test_klp_livepatch]
ffffffffc0002100 t livepatch_end	[test_klp_livepatch]
`), 0o644)
	recs := []funcRec{
		// klp_ops 0: cmdline_proc_show, depth 1 sent first on purpose.
		{kind: frecStack, index: 0, depth: 1, fn: 0xa1, oldFunc: 0xffffffff81400000, newFunc: 0xffffffffc0001000, patched: true, name: "cmdline_proc_show"},
		{kind: frecStack, index: 0, depth: 0, fn: 0xb1, oldFunc: 0xffffffff81400000, newFunc: 0xffffffffc0002000, patched: true, trans: true, name: "cmdline_proc_show"},
		// klp_ops 1: a nop whose owner vanished between the walks.
		{kind: frecStack, index: 1, depth: 0, fn: 0xc1, oldFunc: 0xffffffff81400100, nop: true, patched: true, name: "meminfo_proc_show"},
		{kind: frecPatch, index: 0, fn: 0xa1, patch: "livepatch_sample", name: "cmdline_proc_show"},
		{kind: frecPatch, index: 1, fn: 0xb1, patch: "test_klp_livepatch", name: "cmdline_proc_show"},
	}
	got := buildStacks(recs, ksym.New(p))
	want := []FuncStack{
		{Func: "cmdline_proc_show", Object: "vmlinux", Versions: []event.FuncVersion{
			{Patch: "test_klp_livepatch", Func: "livepatch_cmdline_proc_show", Patched: true, Transition: true},
			{Patch: "livepatch_sample", Func: "livepatch_cmdline_proc_show", Patched: true},
		}},
		{Func: "meminfo_proc_show", Object: "vmlinux", Versions: []event.FuncVersion{
			{Patch: "?", Nop: true, Patched: true},
		}},
	}
	if !reflect.DeepEqual(got, want) {
		t.Errorf("got %+v\nwant %+v", got, want)
	}
	// The kernel's name for new_func wins over the table, which need not
	// know the module (it is not reread for it).
	recs[0].newName, recs[0].newFunc = "fresh_cmdline_proc_show", 0xffffffffc0009000
	if got := buildStacks(recs, ksym.New(p)); got[0].Versions[1].Func != "fresh_cmdline_proc_show" {
		t.Errorf("versions %+v: the kernel's name not used", got[0].Versions)
	}
}

func TestDecodeFuncRec(t *testing.T) {
	b := make([]byte, funcRecSize)
	b[0] = 0xa1
	b[24] = frecPatch
	b[28] = 3
	b[36], b[38] = 1, 1
	copy(b[40:], "cmdline_proc_show")
	copy(b[40+funcLen:], "livepatch_sample")
	copy(b[40+funcLen+patchLen:], "nfsd")
	copy(b[40+funcLen+2*patchLen:], "livepatch_cmdline_proc_show [livepatch_sample]")
	r, err := decodeFuncRec(b)
	if err != nil {
		t.Fatal(err)
	}
	if r.fn != 0xa1 || r.kind != frecPatch || r.index != 3 || !r.nop || r.patched || !r.trans ||
		r.name != "cmdline_proc_show" || r.patch != "livepatch_sample" || r.object != "nfsd" || r.newName != "livepatch_cmdline_proc_show" {
		t.Errorf("decoded %+v", r)
	}
}

// On a kernel without the livepatch types (this development machine's), the
// kprobe programs that read them unguarded are refused by the verifier:
// loadCollection drops each one and its partner, names why, and loads the
// rest, the task iterator among them.
func TestLoadCollectionDropsRejected(t *testing.T) {
	if _, err := os.Stat("/sys/kernel/livepatch"); err == nil {
		t.Skip("this kernel has livepatch")
	}
	spec := bpfSpec(t)
	keep := map[string]bool{iterProg: true}
	for _, p := range probes {
		keep[p.prog] = true
	}
	if err := spec.Variables["sweep_probed"].Set(true); err != nil {
		t.Fatal(err)
	}
	coll, _, _, rejected, loads, err := loadCollection(spec, keep, "", nil)
	if err != nil {
		t.Fatal(err)
	}
	defer coll.Close()
	if coll.Programs[iterProg] == nil {
		t.Fatal("task iterator not loaded")
	}
	names := map[string]string{}
	refused, partners, sweep := 0, 0, false
	for _, r := range rejected {
		if strings.HasPrefix(r.why, "its partner") {
			partners++
		} else {
			refused++
		}
		sweep = sweep || r.symbol == sweepSymbol
		names[r.prog] = r.why
		if coll.Programs[r.prog] != nil || keep[r.prog] {
			t.Errorf("%s rejected but loaded or kept", r.prog)
		}
	}
	// klp_enable_patch reads patch->mod->name: no struct klp_patch here.
	if w := names["klp_enable_patch"]; !strings.Contains(w, "rejected by the verifier") {
		t.Errorf("klp_enable_patch: %q; rejected: %v", w, names)
	}
	for name := range keep {
		if keep[name] && coll.Programs[name] == nil {
			t.Errorf("%s kept but not loaded", name)
		}
	}
	// Each program is loaded once: what loaded, what was refused, and at
	// most the partners loaded before their refused pair.
	if low, high := len(coll.Programs)+refused, len(coll.Programs)+refused+partners; loads < low || loads > high {
		t.Errorf("%d program loads, want %d to %d (%d loaded, %d refused)", loads, low, high, len(coll.Programs), refused)
	}
	// A refused sweep probe makes the maps again without sweep_probed.
	var probed bool
	if err := coll.Variables["sweep_probed"].Get(&probed); err != nil || probed == sweep {
		t.Errorf("sweep_probed %v (%v), sweep probe refused %v", probed, err, sweep)
	}
	t.Logf("%d of %d probe programs rejected here in %d loads; sweep probe refused: %v", len(rejected), len(probes), loads, sweep)
}

// Hand-made stacks: a read of the stacks after a change that finds
// klp_mutex held is owed, not retried on the spot; Read's next quiet
// wake-up takes it, held at its own time; past busyWait, or when the
// reading ends, what is found is taken.
func TestChangedFuncsDefersBusyRead(t *testing.T) {
	busy, reads := true, 0
	v := []event.FuncVersion{{Patch: "p"}}
	s := &Session{stacks: func(wait time.Duration) ([]FuncStack, bool, error) {
		if wait != 0 {
			t.Errorf("read waits %v for klp_mutex on Read's goroutine", wait)
		}
		reads++
		return []FuncStack{{Func: "f", Object: "vmlinux", Versions: v}}, busy, nil
	}}
	var got []event.Event
	fn := func(e event.Event) { got = append(got, e) }

	s.changedFuncs(0, false, fn)
	if reads != 0 {
		t.Fatal("a retry read the stacks with none owed")
	}
	s.changedFuncs(100, false, fn)
	if len(got) != 0 || len(s.held) != 0 || !s.waiting() {
		t.Fatalf("busy: events %v, held %v, waiting %v; want none, none, true", got, s.held, s.waiting())
	}
	busy = false
	s.changedFuncs(0, false, fn)
	if len(got) != 0 || len(s.held) != 1 || s.held[0].Time <= 100 || !s.funcsOwed.IsZero() {
		t.Fatalf("retry: events %v, held %v (owed since %v); want one held after the change", got, s.held, s.funcsOwed)
	}
	s.held = nil

	v = []event.FuncVersion{{Patch: "p"}, {Patch: "q"}}
	s.changedFuncs(200, false, fn)
	if len(got) != 1 || got[0].Time != 200 || len(got[0].Versions) != 2 {
		t.Fatalf("free mutex: events %v; want the changed stack at once, at the change's time", got)
	}

	busy, got = true, nil
	v = []event.FuncVersion{{Patch: "q"}}
	s.changedFuncs(300, false, fn)
	s.funcsOwed = s.funcsOwed.Add(-busyWait)
	s.changedFuncs(0, false, fn)
	if len(s.held) != 1 || !s.funcsOwed.IsZero() {
		t.Fatalf("busy past busyWait: held %v, owed %v; want the stack as found", s.held, s.funcsOwed)
	}
	s.held = nil
	v = nil
	s.changedFuncs(400, false, fn)
	s.changedFuncs(0, true, fn)
	if len(s.held) != 1 || len(s.held[0].Versions) != 0 {
		t.Fatalf("ending: held %v; want the stack gone, taken busy", s.held)
	}
}
