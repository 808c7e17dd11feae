// Package sysfs reads what the kernel exposes about livepatches without BPF:
// /sys/kernel/livepatch, /proc/modules and /proc/<pid>/{patch_state,stack}.
// Every function takes the root directory ("/" on a live system) so tests can
// run against a fake tree.
package sysfs

import (
	"bufio"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
)

// LivepatchDir is the livepatch sysfs directory below the root.
const LivepatchDir = "sys/kernel/livepatch"

// Patch is one /sys/kernel/livepatch/<name> directory.
type Patch struct {
	Name       string
	Enabled    bool
	Transition bool
	// Replace is the "replace" attribute (6.11+); HasReplace says whether the
	// kernel has it at all.
	Replace    bool
	HasReplace bool
	// StackOrder is the kernel's 1-based position on klp_patches (6.14+),
	// 0 when the kernel has no stack_order attribute.
	StackOrder int
	Objects    []Object
}

// Object is one patched object of a patch: "vmlinux" or a module name.
type Object struct {
	Name string
	// Patched is the "patched" attribute; HasPatched whether it exists.
	Patched    bool
	HasPatched bool
	// Funcs are the function directories, "name,sympos".
	Funcs []string
}

// Target is the state the patch's transition heads for: the kernel keeps
// "enabled" equal to the target while a transition runs (a reversal flips
// it). -1 when no transition runs.
func (p Patch) Target() int {
	switch {
	case !p.Transition:
		return -1
	case p.Enabled:
		return 1
	}
	return 0
}

// HasLivepatch reports whether the kernel has livepatch support.
func HasLivepatch(root string) bool {
	fi, err := os.Stat(filepath.Join(root, LivepatchDir))
	return err == nil && fi.IsDir()
}

// Patches returns the loaded livepatches in stacking order, bottom first.
//
// The order comes from stack_order where the kernel has it (6.14+).
// Otherwise it is the module load order, which /proc/modules gives newest
// first: a patch enables from its module's init and cannot be re-enabled
// once disabled, so load order is the order patches were added to
// klp_patches. Patches /proc/modules does not list sort by name, after the
// others.
func Patches(root string) ([]Patch, error) {
	dir := filepath.Join(root, LivepatchDir)
	ents, err := os.ReadDir(dir)
	if err != nil {
		return nil, err
	}
	var ps []Patch
	for _, e := range ents {
		if !e.IsDir() && e.Type()&os.ModeSymlink == 0 {
			continue
		}
		p, err := readPatch(filepath.Join(dir, e.Name()))
		if err != nil {
			if errors.Is(err, os.ErrNotExist) {
				continue // removed while we read
			}
			return nil, err
		}
		ps = append(ps, p)
	}
	loadPos := modulesLoadOrder(root)
	rank := func(p Patch) (int, int) {
		if p.StackOrder > 0 {
			return 0, p.StackOrder
		}
		if i, ok := loadPos[p.Name]; ok {
			return 1, i
		}
		return 2, 0
	}
	sort.SliceStable(ps, func(i, j int) bool {
		ci, ri := rank(ps[i])
		cj, rj := rank(ps[j])
		if ci != cj {
			return ci < cj
		}
		if ri != rj {
			return ri < rj
		}
		return ps[i].Name < ps[j].Name
	})
	return ps, nil
}

func readPatch(dir string) (Patch, error) {
	p := Patch{Name: filepath.Base(dir)}
	var err error
	if p.Enabled, err = readBool(filepath.Join(dir, "enabled")); err != nil {
		return p, err
	}
	if p.Transition, err = readBool(filepath.Join(dir, "transition")); err != nil {
		return p, err
	}
	if v, err := readBool(filepath.Join(dir, "replace")); err == nil {
		p.Replace, p.HasReplace = v, true
	}
	if v, err := readInt(filepath.Join(dir, "stack_order")); err == nil {
		p.StackOrder = v
	}
	ents, err := os.ReadDir(dir)
	if err != nil {
		return p, err
	}
	for _, e := range ents {
		if !e.IsDir() {
			continue
		}
		o := Object{Name: e.Name()}
		if v, err := readBool(filepath.Join(dir, e.Name(), "patched")); err == nil {
			o.Patched, o.HasPatched = v, true
		}
		fents, _ := os.ReadDir(filepath.Join(dir, e.Name()))
		for _, f := range fents {
			if f.IsDir() {
				o.Funcs = append(o.Funcs, f.Name())
			}
		}
		p.Objects = append(p.Objects, o)
	}
	return p, nil
}

// modulesLoadOrder maps module name to load position, oldest = 0.
func modulesLoadOrder(root string) map[string]int {
	f, err := os.Open(filepath.Join(root, "proc/modules"))
	if err != nil {
		return nil
	}
	defer f.Close()
	var names []string
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		if fs := strings.Fields(sc.Text()); len(fs) > 0 {
			names = append(names, fs[0])
		}
	}
	m := make(map[string]int, len(names))
	for i, n := range names {
		m[n] = len(names) - 1 - i
	}
	return m
}

func readString(path string) (string, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return "", err
	}
	return strings.TrimSpace(string(b)), nil
}

func readInt(path string) (int, error) {
	s, err := readString(path)
	if err != nil {
		return 0, err
	}
	v, err := strconv.Atoi(s)
	if err != nil {
		return 0, fmt.Errorf("%s: %w", path, err)
	}
	return v, nil
}

func readBool(path string) (bool, error) {
	v, err := readInt(path)
	return v != 0, err
}

// PatchState reads /proc/<pid>/patch_state: -1 idle, 0 unpatched, 1 patched.
func PatchState(root string, pid int) (int, error) {
	return readInt(filepath.Join(root, "proc", strconv.Itoa(pid), "patch_state"))
}

// ThreadPatchState reads /proc/<tgid>/task/<tid>/patch_state.
func ThreadPatchState(root string, tgid, tid int) (int, error) {
	return readInt(filepath.Join(threadDir(root, tgid, tid), "patch_state"))
}

// ThreadStack reads /proc/<tgid>/task/<tid>/stack, as Stack does.
func ThreadStack(root string, tgid, tid int) ([]string, error) {
	b, err := os.ReadFile(filepath.Join(threadDir(root, tgid, tid), "stack"))
	if err != nil {
		return nil, err
	}
	return parseStack(b), nil
}

func threadDir(root string, tgid, tid int) string {
	return filepath.Join(root, "proc", strconv.Itoa(tgid), "task", strconv.Itoa(tid))
}

// Stack reads /proc/<pid>/stack (any thread id works) as "func+0x1c/0x40 [mod]"
// lines, innermost first, without the "[<0>] " address column (it is zeroed
// anyway unless kptr_restrict allows it).
func Stack(root string, pid int) ([]string, error) {
	b, err := os.ReadFile(filepath.Join(root, "proc", strconv.Itoa(pid), "stack"))
	if err != nil {
		return nil, err
	}
	return parseStack(b), nil
}

func parseStack(b []byte) []string {
	var out []string
	for _, l := range strings.Split(string(b), "\n") {
		l = strings.TrimSpace(l)
		if l == "" {
			continue
		}
		if strings.HasPrefix(l, "[<") {
			if i := strings.Index(l, "] "); i >= 0 {
				l = l[i+2:]
			}
		}
		out = append(out, l)
	}
	return out
}
