package ksym

import (
	"fmt"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
)

// handMadeKallsyms is a hand-made kallsyms text in the kernel's format, not a
// copy of any machine's: a few vmlinux symbols (text and data, aliases) and a
// module.
const handMadeKallsyms = `0000000000000000 A fixed_percpu_data
ffffffff81000000 T _stext
ffffffff81000000 T startup_64
ffffffff81000100 t secondary_startup_64
ffffffff81000200 T klp_check_and_switch_task
ffffffff81000260 t klp_try_switch_task
ffffffff810002c0 D some_data
ffffffffc0200000 t busymod_work_func	[test_klp_callbacks_busy]
ffffffffc0200040 t busymod_init	[test_klp_callbacks_busy]
`

func writeKallsyms(t *testing.T, text string) string {
	t.Helper()
	p := filepath.Join(t.TempDir(), "kallsyms")
	if err := os.WriteFile(p, []byte(text), 0o644); err != nil {
		t.Fatal(err)
	}
	return p
}

func TestParse(t *testing.T) {
	syms, err := Parse(strings.NewReader(handMadeKallsyms))
	if err != nil {
		t.Fatal(err)
	}
	if len(syms) != 8 {
		t.Fatalf("got %d symbols, want 8 (absolute dropped)", len(syms))
	}
	if syms[6].Module != "test_klp_callbacks_busy" {
		t.Errorf("module = %q", syms[6].Module)
	}
}

func TestParseAllZero(t *testing.T) {
	_, err := Parse(strings.NewReader("0000000000000000 T _stext\n0000000000000000 t foo\n"))
	if err == nil {
		t.Fatal("want an error for hidden addresses")
	}
}

func TestSymbolize(t *testing.T) {
	tab := New(writeKallsyms(t, handMadeKallsyms))
	for _, c := range []struct {
		addr uint64
		want string
	}{
		{0xffffffff81000210, "klp_check_and_switch_task+0x10/0x60"},
		{0xffffffff81000200, "klp_check_and_switch_task+0x0/0x60"},
		{0xffffffff81000050, "startup_64+0x50/0x100"},
		{0xffffffff81000270, "klp_try_switch_task+0x10/0x60"},
		{0xffffffffc0200010, "busymod_work_func+0x10/0x40 [test_klp_callbacks_busy]"},
		{0xffffffffc0200050, "busymod_init+0x10 [test_klp_callbacks_busy]"},
		{0xffffffff80000000, "?"},
	} {
		if got := tab.Symbolize(c.addr); got != c.want {
			t.Errorf("Symbolize(%#x) = %q, want %q", c.addr, got, c.want)
		}
	}
}

func TestFrame(t *testing.T) {
	tab := New(writeKallsyms(t, handMadeKallsyms))
	// A return address right after a call that ends klp_check_and_switch_task.
	if got, want := tab.Frame(0xffffffff81000260), "klp_check_and_switch_task+0x60/0x60"; got != want {
		t.Errorf("Frame = %q, want %q", got, want)
	}
}

func TestReloadOnMiss(t *testing.T) {
	p := writeKallsyms(t, handMadeKallsyms)
	tab := New(p)
	const late = 0xffffffffc0400010
	if got := tab.Symbolize(0xffffffff81000210); !strings.HasPrefix(got, "klp_check_and_switch_task") {
		t.Fatal(got)
	}
	// A module loaded after the first read.
	more := handMadeKallsyms + "ffffffffc0400000 t livepatch_cmdline_proc_show\t[livepatch_sample]\n"
	if err := os.WriteFile(p, []byte(more), 0o644); err != nil {
		t.Fatal(err)
	}
	tab.lastReload = tab.lastReload.Add(-2 * minReload)
	if got, want := tab.Symbolize(late), "livepatch_cmdline_proc_show+0x10 [livepatch_sample]"; got != want {
		t.Errorf("after module load: %q, want %q", got, want)
	}
}

func TestProcKallsyms(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("kallsyms addresses are hidden from non-root")
	}
	f, err := os.Open("/proc/kallsyms")
	if err != nil {
		t.Skip(err)
	}
	defer f.Close()
	syms, err := Parse(f)
	if err != nil {
		t.Fatal(err)
	}
	if len(syms) < 1000 {
		t.Fatalf("only %d symbols", len(syms))
	}
}

// TestAtStale: a table read before a livepatch module loaded. The module's
// text reuses the freed init memory of a module loaded earlier, whose
// kallsyms still lists an init-data symbol there (6.12 does): Name settles
// for that symbol, At never does, and Fresh rereads until the function is
// there.
func TestAtStale(t *testing.T) {
	const before = `ffffffff81000000 T _stext
ffffffffc0477060 t livepatch_cmdline_proc_show	[livepatch_sample]
ffffffffc047e000 d __UNIQUE_ID___addressable_init_module498	[livepatch_sample]
`
	p := writeKallsyms(t, before)
	tab := New(p)
	const fn = 0xffffffffc047e060
	if n, _, ok := tab.Name(fn); !ok || n != "__UNIQUE_ID___addressable_init_module498" {
		t.Fatalf("Name = %q %v: the test no longer shows the stale-table case", n, ok)
	}
	if n, m, ok := tab.At(fn); ok {
		t.Errorf("At on a stale table = %q [%s], want no symbol", n, m)
	}
	tab.Fresh([]uint64{0xffffffffc0477060}) // known: no reread
	if err := os.WriteFile(p, []byte(before+"ffffffffc047e060 t livepatch_cmdline_proc_show\t[test_klp_livepatch]\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	if _, _, ok := tab.At(fn); ok {
		t.Error("At reread kallsyms by itself")
	}
	tab.Fresh([]uint64{0xffffffffc0477060, fn})
	if n, m, ok := tab.At(fn); !ok || n != "livepatch_cmdline_proc_show" || m != "test_klp_livepatch" {
		t.Errorf("At after Fresh = %q [%s] %v", n, m, ok)
	}
}

// Hand-made: with Yield set, kallsyms is read in pieces of at most
// readChunk bytes, Yield before each, and the table is the same.
func TestReloadYields(t *testing.T) {
	var b strings.Builder
	b.WriteString(handMadeKallsyms)
	for i := range 500 {
		fmt.Fprintf(&b, "ffffffffc03%05x t filler_%d\t[big]\n", i*16, i)
	}
	p := writeKallsyms(t, b.String())
	plain, yielded := New(p), New(p)
	yields := 0
	yielded.Yield = func() { yields++ }
	if err := plain.Reload(); err != nil {
		t.Fatal(err)
	}
	if err := yielded.Reload(); err != nil {
		t.Fatal(err)
	}
	if min := b.Len() / readChunk; yields <= min {
		t.Errorf("%d yields for %d bytes, want more than %d", yields, b.Len(), min)
	}
	if !reflect.DeepEqual(plain.syms, yielded.syms) {
		t.Errorf("the table read in pieces differs: %d symbols, want %d", len(yielded.syms), len(plain.syms))
	}
}
