package sysfs

import (
	"os"
	"path/filepath"
	"reflect"
	"testing"
)

func write(t *testing.T, root, rel, content string) {
	t.Helper()
	p := filepath.Join(root, rel)
	if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(p, []byte(content), 0o644); err != nil {
		t.Fatal(err)
	}
}

func mkdir(t *testing.T, root, rel string) {
	t.Helper()
	if err := os.MkdirAll(filepath.Join(root, rel), 0o755); err != nil {
		t.Fatal(err)
	}
}

// fake61 builds a tree shaped like 6.1's: no replace, no stack_order.
func fake61(t *testing.T) string {
	root := t.TempDir()
	lp := "sys/kernel/livepatch/"
	write(t, root, lp+"zz_first/enabled", "1\n")
	write(t, root, lp+"zz_first/transition", "0\n")
	write(t, root, lp+"zz_first/vmlinux/patched", "1\n")
	mkdir(t, root, lp+"zz_first/vmlinux/cmdline_proc_show,1")
	write(t, root, lp+"aa_second/enabled", "0\n")
	write(t, root, lp+"aa_second/transition", "1\n")
	write(t, root, lp+"aa_second/test_klp_callbacks_busy/patched", "1\n")
	mkdir(t, root, lp+"aa_second/test_klp_callbacks_busy/busymod_work_func,1")
	write(t, root, "proc/modules", "aa_second 16384 1 - Live 0x0000000000000000 (K)\n"+
		"ext4 16384 0 - Live 0x0000000000000000\n"+
		"zz_first 16384 1 - Live 0x0000000000000000 (K)\n")
	return root
}

func TestPatches61(t *testing.T) {
	root := fake61(t)
	if !HasLivepatch(root) {
		t.Fatal("HasLivepatch = false")
	}
	ps, err := Patches(root)
	if err != nil {
		t.Fatal(err)
	}
	if len(ps) != 2 || ps[0].Name != "zz_first" || ps[1].Name != "aa_second" {
		t.Fatalf("order: %+v", ps)
	}
	want := Patch{Name: "aa_second", Transition: true, Objects: []Object{{
		Name: "test_klp_callbacks_busy", Patched: true, HasPatched: true,
		Funcs: []string{"busymod_work_func,1"},
	}}}
	if !reflect.DeepEqual(ps[1], want) {
		t.Errorf("got %+v\nwant %+v", ps[1], want)
	}
	if ps[1].Target() != 0 || ps[0].Target() != -1 {
		t.Errorf("targets %d %d", ps[0].Target(), ps[1].Target())
	}
}

func TestPatchesStackOrder(t *testing.T) {
	root := t.TempDir()
	lp := "sys/kernel/livepatch/"
	for name, order := range map[string]string{"a": "2", "b": "1", "c": "3"} {
		write(t, root, lp+name+"/enabled", "1")
		write(t, root, lp+name+"/transition", "0")
		write(t, root, lp+name+"/replace", "1")
		write(t, root, lp+name+"/stack_order", order)
	}
	ps, err := Patches(root)
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, p := range ps {
		names = append(names, p.Name)
		if !p.HasReplace || !p.Replace {
			t.Errorf("%s: replace not read", p.Name)
		}
	}
	if !reflect.DeepEqual(names, []string{"b", "a", "c"}) {
		t.Errorf("order %v", names)
	}
}

func TestNoLivepatch(t *testing.T) {
	root := t.TempDir()
	if HasLivepatch(root) {
		t.Fatal("HasLivepatch = true")
	}
	if _, err := Patches(root); !os.IsNotExist(err) {
		t.Fatalf("err = %v", err)
	}
}

func TestProc(t *testing.T) {
	root := t.TempDir()
	write(t, root, "proc/42/patch_state", "0\n")
	write(t, root, "proc/42/stack", "[<0>] busymod_work_func+0x2c/0x40 [test_klp_callbacks_busy]\n"+
		"[<0>] process_one_work+0x1c4/0x380\n[<0>] ret_from_fork+0x22/0x30\n")
	st, err := PatchState(root, 42)
	if err != nil || st != 0 {
		t.Fatalf("PatchState = %d, %v", st, err)
	}
	stack, err := Stack(root, 42)
	if err != nil {
		t.Fatal(err)
	}
	want := []string{"busymod_work_func+0x2c/0x40 [test_klp_callbacks_busy]",
		"process_one_work+0x1c4/0x380", "ret_from_fork+0x22/0x30"}
	if !reflect.DeepEqual(stack, want) {
		t.Errorf("stack %q", stack)
	}
	if _, err := PatchState(root, 43); err == nil {
		t.Error("want an error for a missing pid")
	}
}
