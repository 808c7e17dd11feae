// Package ksym turns kernel addresses into the names /proc/<pid>/stack shows,
// from /proc/kallsyms, so that no raw address (KASLR) leaves klptop.
package ksym

import (
	"bufio"
	"errors"
	"fmt"
	"io"
	"os"
	"sort"
	"strconv"
	"strings"
	"sync"
	"time"
)

// Sym is one kallsyms entry.
type Sym struct {
	Addr   uint64
	Name   string
	Module string // "" for vmlinux
}

// Parse reads /proc/kallsyms text. Every symbol with an address is kept, data
// included: the kernel sizes a function by the next symbol of any kind, and
// so must we to print the same "+off/size". Absolute and undefined symbols
// are not in memory and are dropped.
func Parse(r io.Reader) ([]Sym, error) {
	var syms []Sym
	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, 64*1024), 1024*1024)
	nonzero := false
	for sc.Scan() {
		line := sc.Text()
		// "ffffffff81000000 T _text" or "ffffffffc0201000 t fn\t[mod]"
		f := strings.Fields(line)
		if len(f) < 3 {
			continue
		}
		switch f[1] {
		case "a", "A", "U", "u":
			continue
		}
		addr, err := strconv.ParseUint(f[0], 16, 64)
		if err != nil {
			return nil, fmt.Errorf("kallsyms: %q: %w", line, err)
		}
		if addr != 0 {
			nonzero = true
		}
		s := Sym{Addr: addr, Name: f[2]}
		if len(f) >= 4 && strings.HasPrefix(f[3], "[") {
			s.Module = strings.Trim(f[3], "[]")
		}
		syms = append(syms, s)
	}
	if err := sc.Err(); err != nil {
		return nil, err
	}
	if len(syms) > 0 && !nonzero {
		return nil, errors.New("kallsyms: all addresses are zero (not root, or kptr_restrict)")
	}
	sort.SliceStable(syms, func(i, j int) bool { return syms[i].Addr < syms[j].Addr })
	return syms, nil
}

// Table symbolizes against a kallsyms file, reloading it when an address is
// not covered: modules (livepatches among them) load after start-up.
type Table struct {
	path string
	// Yield, if set, runs before each read(2) of the file, which goes in
	// readChunk pieces: a caller that must not be in the kernel at some
	// moments (a livepatch sweep checking it) waits there.
	Yield func()

	mu         sync.Mutex
	syms       []Sym
	loaded     bool
	lastReload time.Time
}

// New returns a table over path (normally /proc/kallsyms), read on first use.
func New(path string) *Table { return &Table{path: path} }

// Reload rereads the file now.
func (t *Table) Reload() error {
	t.mu.Lock()
	defer t.mu.Unlock()
	return t.reloadLocked()
}

func (t *Table) reloadLocked() error {
	t.lastReload = time.Now()
	f, err := os.Open(t.path)
	if err != nil {
		return err
	}
	defer f.Close()
	var r io.Reader = f
	if t.Yield != nil {
		r = yielding{f, t.Yield}
	}
	syms, err := Parse(r)
	if err != nil {
		return err
	}
	t.syms, t.loaded = syms, true
	return nil
}

// readChunk bounds one read(2) of kallsyms under Table.Yield: the kernel
// formats about a hundred symbols for it.
const readChunk = 4096

type yielding struct {
	r     io.Reader
	yield func()
}

func (y yielding) Read(p []byte) (int, error) {
	y.yield()
	return y.r.Read(p[:min(len(p), readChunk)])
}

// A hit this far past its symbol is more likely code of a module loaded
// after the table was read than a real offset.
const suspectOffset = 1 << 20

// minReload bounds rereads of kallsyms (tens of thousands of lines) when
// addresses keep missing for good, e.g. BPF JIT images.
const minReload = time.Second

func (t *Table) lookup(addr uint64) (s Sym, size uint64, ok bool) {
	i := sort.Search(len(t.syms), func(i int) bool { return t.syms[i].Addr > addr }) - 1
	if i < 0 {
		return Sym{}, 0, false
	}
	s = t.syms[i]
	// Aliases share an address; the next distinct address bounds the size.
	j := i + 1
	for j < len(t.syms) && t.syms[j].Addr == s.Addr {
		j++
	}
	if j == len(t.syms) {
		return s, 0, addr-s.Addr < suspectOffset
	}
	next := t.syms[j]
	if next.Module != s.Module && s.Module != "" {
		// The last symbol of a module: its end is unknown.
		return s, 0, addr-s.Addr < suspectOffset
	}
	return s, next.Addr - s.Addr, addr-s.Addr < suspectOffset
}

func (t *Table) resolve(addr uint64) (Sym, uint64, bool) {
	t.mu.Lock()
	defer t.mu.Unlock()
	if !t.loaded {
		if err := t.reloadLocked(); err != nil {
			return Sym{}, 0, false
		}
	}
	s, size, ok := t.lookup(addr)
	if !ok && time.Since(t.lastReload) >= minReload {
		if t.reloadLocked() == nil {
			s, size, ok = t.lookup(addr)
		}
	}
	return s, size, ok
}

// Vmlinux returns the address of the vmlinux symbol name (data included),
// reading kallsyms on first use: 0 when it is absent or hidden. One read of
// kallsyms serves these lookups and the symbolizing after them: under
// emulation each read of /proc/kallsyms costs a second.
func (t *Table) Vmlinux(name string) (uint64, error) {
	t.mu.Lock()
	defer t.mu.Unlock()
	if !t.loaded {
		if err := t.reloadLocked(); err != nil {
			return 0, err
		}
	}
	for _, s := range t.syms {
		if s.Name == name && s.Module == "" && s.Addr != 0 {
			return s.Addr, nil
		}
	}
	return 0, nil
}

// Symbolize returns "func+0xoff/0xsize [mod]" for addr, like %pS, or "?"
// when no symbol covers it (never the address itself).
func (t *Table) Symbolize(addr uint64) string {
	return t.format(addr, addr)
}

// Name returns the symbol addr is in and its module ("" for vmlinux).
func (t *Table) Name(addr uint64) (name, module string, ok bool) {
	s, _, ok := t.resolve(addr)
	if !ok {
		return "", "", false
	}
	return s.Name, s.Module, true
}

// At returns the symbol that starts exactly at addr, as a function pointer
// (klp_func.new_func) names it, and its module. Unlike Name it never settles
// for a symbol before addr: with a table older than a module, that is
// another module's last symbol, or the stale kallsyms entry of an init
// section whose freed memory the new module now uses (seen on 6.12). On a
// miss it does not reread kallsyms: call Fresh first.
func (t *Table) At(addr uint64) (name, module string, ok bool) {
	t.mu.Lock()
	defer t.mu.Unlock()
	if !t.loaded {
		if err := t.reloadLocked(); err != nil {
			return "", "", false
		}
	}
	s, ok := t.atLocked(addr)
	if !ok {
		return "", "", false
	}
	return s.Name, s.Module, true
}

func (t *Table) atLocked(addr uint64) (Sym, bool) {
	i := sort.Search(len(t.syms), func(i int) bool { return t.syms[i].Addr > addr }) - 1
	if i < 0 || t.syms[i].Addr != addr {
		return Sym{}, false
	}
	return t.syms[i], true
}

// Fresh makes sure that every address in addrs has a symbol starting at it,
// rereading kallsyms (once, whatever the time since the last reread) when
// one does not: they are function pointers of modules that may have loaded
// since the table was read.
func (t *Table) Fresh(addrs []uint64) {
	t.mu.Lock()
	defer t.mu.Unlock()
	if !t.loaded {
		_ = t.reloadLocked()
		return
	}
	for _, a := range addrs {
		if _, ok := t.atLocked(a); !ok {
			_ = t.reloadLocked()
			return
		}
	}
}

// Frame symbolizes a return address from a stack trace, like %pB: the call
// may be the last instruction of a noreturn function, so the lookup uses
// addr-1 while the offset printed is addr's.
func (t *Table) Frame(addr uint64) string {
	if addr == 0 {
		return "?"
	}
	return t.format(addr-1, addr)
}

func (t *Table) format(lookup, addr uint64) string {
	s, size, ok := t.resolve(lookup)
	if !ok {
		return "?"
	}
	out := fmt.Sprintf("%s+%#x", s.Name, addr-s.Addr)
	if addr == s.Addr {
		out = s.Name + "+0x0"
	}
	if size > 0 {
		out += fmt.Sprintf("/%#x", size)
	}
	if s.Module != "" {
		out += " [" + s.Module + "]"
	}
	return out
}
