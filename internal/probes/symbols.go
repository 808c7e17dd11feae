package probes

import (
	"bufio"
	"io"
	"os"
	"sort"
	"strings"

	"github.com/klptop/klptop/internal/event"
)

// probe is one BPF program and the kernel function it goes on.
type probe struct {
	prog   string // program (C function) name in the collection
	symbol string // kernel function, as in the source
	ret    bool   // kretprobe
	// args: the program reads the function's arguments. Compiler clones
	// (.isra, .constprop, .part) may take different arguments or none, so
	// such a probe only goes on the function itself.
	args bool
	// pair: the entry/return partner; one without the other is useless
	// (or, for an entry, fills its hand-over map).
	pair string
	// observes: the inlined kernel function this probe stands in for; when
	// the probe cannot be placed, that function is what goes unobserved.
	observes string
	// hot: the function runs all over the kernel (every fork, exit or
	// wake-up) and the program matters only while a transition runs: the
	// probe is attached only then (Session.armHot).
	hot bool
}

// probes lists every kprobe program. klp_ftrace_handler (notrace, and runs
// on every call of every patched function) and the callback lookups (tens
// of thousands of calls per transition) are left out on purpose.
var probes = []probe{
	{prog: "klp_enable_patch", symbol: "klp_enable_patch", args: true},
	{prog: "klp_init_transition", symbol: "klp_init_transition", args: true},
	{prog: "klp_start_transition", symbol: "klp_start_transition"},
	{prog: "klp_complete_transition", symbol: "klp_complete_transition", ret: true},
	{prog: "klp_reverse_transition", symbol: "klp_reverse_transition"},
	{prog: "klp_cancel_transition", symbol: "klp_cancel_transition"},
	{prog: "klp_force_transition", symbol: "klp_force_transition"},
	{prog: "klp_try_complete_transition", symbol: "klp_try_complete_transition", pair: "klp_try_complete_transition_ret"},
	{prog: "klp_try_complete_transition_ret", symbol: "klp_try_complete_transition", ret: true, pair: "klp_try_complete_transition"},
	{prog: "klp_check_and_switch_task", symbol: "klp_check_and_switch_task", args: true, pair: "klp_check_and_switch_task_ret"},
	{prog: "klp_check_and_switch_task_ret", symbol: "klp_check_and_switch_task", ret: true, args: true, pair: "klp_check_and_switch_task"},
	{prog: "klp_update_patch_state", symbol: "klp_update_patch_state", args: true, pair: "klp_update_patch_state_ret"},
	{prog: "klp_update_patch_state_ret", symbol: "klp_update_patch_state", ret: true, args: true, pair: "klp_update_patch_state"},
	{prog: "klp_copy_process", symbol: "klp_copy_process", args: true, hot: true},
	// Tasks leaving the thread list, on every exit.
	{prog: "task_release", symbol: "release_task", args: true, pair: "task_release_ret", hot: true},
	{prog: "task_release_ret", symbol: "release_task", ret: true, args: true, pair: "task_release", hot: true},
	// 6.4+: marks the checks a task makes of itself from the scheduler.
	{prog: "klp_sched_try_switch", symbol: event.SchedTrySwitchProbe, pair: "klp_sched_try_switch_ret"},
	{prog: "klp_sched_try_switch_ret", symbol: event.SchedTrySwitchProbe, ret: true, pair: "klp_sched_try_switch"},
	// Called all over the kernel; the program returns at once outside a sweep.
	{prog: "klp_signal", symbol: event.SignalProbe, args: true, pair: "klp_try_complete_transition", observes: event.SignalSymbol, hot: true},
	// Modules and atomic replace (core.c); the klp_patch_object and
	// klp_unpatch_object programs report only objects of a coming or going
	// module.
	{prog: "klp_module_coming", symbol: "klp_module_coming", args: true},
	{prog: "klp_module_going", symbol: "klp_module_going", args: true},
	{prog: "klp_module_apply", symbol: "klp_patch_object", args: true},
	{prog: "klp_module_revert", symbol: "klp_unpatch_object", args: true},
	{prog: "klp_unpatch_replaced_patches", symbol: "klp_unpatch_replaced_patches", args: true},
	{prog: "klp_discard_nops", symbol: "klp_discard_nops", args: true},
	{prog: "klp_free_patch_async", symbol: "klp_free_patch_async", args: true},
	{prog: "klp_free_replaced_patches_async", symbol: "klp_free_replaced_patches_async", args: true},
	// Shadow variables: counted in the shadow_counts map, never streamed.
	// klp_shadow_get, which real patches call on every call of a patched
	// function, is left out.
	{prog: "shadow_alloc", symbol: event.ShadowAlloc, args: true, pair: "shadow_alloc_ret"},
	{prog: "shadow_alloc_ret", symbol: event.ShadowAlloc, ret: true, args: true, pair: "shadow_alloc"},
	{prog: "shadow_get_or_alloc", symbol: event.ShadowGetOrAlloc, args: true, pair: "shadow_get_or_alloc_ret"},
	{prog: "shadow_get_or_alloc_ret", symbol: event.ShadowGetOrAlloc, ret: true, args: true, pair: "shadow_get_or_alloc"},
	{prog: "shadow_free", symbol: event.ShadowFree, args: true},
	{prog: "shadow_free_all", symbol: event.ShadowFreeAll, args: true},
	// Where function stacks change: user space re-reads them after each.
	// Callbacks: the objects' callback addresses, and the bracket of the
	// enable's pre-patch callbacks (bpf/klptop.bpf.c says why).
	{prog: "callbacks_init", symbol: "klp_init_transition", args: true},
	{prog: "cb_bracket_init", symbol: "klp_init_transition", args: true, pair: "cb_bracket_open"},
	{prog: "cb_bracket_open", symbol: "klp_init_transition", ret: true, pair: "cb_bracket_init"},
	{prog: "cb_bracket_close", symbol: "klp_patch_object", args: true, pair: "cb_bracket_open"},
	{prog: "cb_bracket_reopen", symbol: "klp_patch_object", ret: true, args: true, pair: "cb_bracket_open"},
	{prog: "cb_bracket_done", symbol: "klp_start_transition", pair: "cb_bracket_open"},
	{prog: "cb_bracket_cancel", symbol: "klp_cancel_transition", pair: "cb_bracket_open"},
	{prog: "cb_bracket_ret", symbol: "klp_enable_patch", ret: true, args: true, pair: "cb_bracket_open"},
	{prog: "cb_complete_entry", symbol: "klp_complete_transition", pair: "cb_complete_ret"},
	{prog: "cb_complete_ret", symbol: "klp_complete_transition", ret: true, pair: "cb_complete_entry"},
	{prog: "cb_complete_cancel", symbol: "klp_cancel_transition", pair: "cb_complete_ret"},
	{prog: "funcs_changed_klp_start_transition", symbol: "klp_start_transition", ret: true},
	{prog: "funcs_changed_klp_complete_transition", symbol: "klp_complete_transition", ret: true},
	{prog: "funcs_changed_klp_reverse_transition", symbol: "klp_reverse_transition", ret: true},
	{prog: "funcs_changed_klp_cancel_transition", symbol: "klp_cancel_transition", ret: true},
	{prog: "funcs_changed_klp_patch_object", symbol: "klp_patch_object", ret: true},
	{prog: "funcs_changed_klp_unpatch_objects", symbol: "klp_unpatch_objects", ret: true},
	{prog: "funcs_changed_klp_discard_nops", symbol: "klp_discard_nops", ret: true},
	{prog: "funcs_changed_klp_module_coming", symbol: "klp_module_coming", ret: true},
	{prog: "funcs_changed_klp_module_going", symbol: "klp_module_going", ret: true},
}

// iterProg is the task iterator of the start-up snapshot.
const iterProg = "snapshot_tasks"

// Why texts of Missing.
const (
	whyAbsent    = "not in available_filter_functions (inlined?)"
	whyCloneOnly = "only compiler clones traceable (%s): their arguments may differ"
	whyPartner   = "its entry/return partner is missing"
)

// traceable reads available_filter_functions: one function per line, with
// " [module]" for module functions.
func traceable(r io.Reader) (map[string]bool, error) {
	m := make(map[string]bool)
	sc := bufio.NewScanner(r)
	for sc.Scan() {
		f := strings.Fields(sc.Text())
		if len(f) > 0 {
			m[f[0]] = true
		}
	}
	return m, sc.Err()
}

func traceableFile() (map[string]bool, string, error) {
	var firstErr error
	for _, dir := range tracefsDirs {
		p := dir + "/available_filter_functions"
		f, err := os.Open(p)
		if err != nil {
			if firstErr == nil {
				firstErr = err
			}
			continue
		}
		defer f.Close()
		m, err := traceable(f)
		return m, p, err
	}
	return nil, "", firstErr
}

var tracefsDirs = []string{"/sys/kernel/tracing", "/sys/kernel/debug/tracing"}

// clones returns the traceable compiler clones of fn ("fn.isra.0",
// "fn.constprop.0", "fn.part.0", ...), sorted.
func clones(avail map[string]bool, fn string) []string {
	var out []string
	for name := range avail {
		if strings.HasPrefix(name, fn+".") && !strings.HasSuffix(name, ".cold") {
			out = append(out, name)
		}
	}
	sort.Strings(out)
	return out
}

// plan maps each program to the kernel symbols it attaches to, and lists
// the probes that cannot be placed.
//
// The function itself wins over its clones: every caller outside its
// translation unit enters through it, and when a clone is also traceable it
// is called from there (6.1: klp_start_transition calls
// klp_start_transition.part.0), so probing both would report one call twice.
// Clones are used only when the function itself is gone, and only by
// probes that read no arguments. The exception is a .part clone, the body
// after the function's early checks: callers in the same translation unit
// may call it directly (6.1: klp_reverse_transition calls
// klp_start_transition.part.0), so a probe that reads no arguments goes on
// it instead of the function.
func plan(avail map[string]bool) (map[string][]string, []Missing) {
	attach := make(map[string][]string)
	why := make(map[string]string)
	for _, p := range probes {
		cl := clones(avail, p.symbol)
		var parts []string
		for _, c := range cl {
			if strings.HasPrefix(c, p.symbol+".part.") {
				parts = append(parts, c)
			}
		}
		switch {
		case len(parts) > 0 && !p.args:
			attach[p.prog] = parts
		case avail[p.symbol]:
			attach[p.prog] = []string{p.symbol}
		case len(cl) > 0 && !p.args:
			attach[p.prog] = cl
		case len(cl) > 0:
			why[p.prog] = strings.Replace(whyCloneOnly, "%s", strings.Join(cl, ", "), 1)
		default:
			why[p.prog] = whyAbsent
		}
	}
	for _, p := range probes {
		if p.pair == "" {
			continue
		}
		if _, ok := attach[p.prog]; ok {
			if _, ok := attach[p.pair]; !ok {
				delete(attach, p.prog)
				why[p.prog] = whyPartner
			}
		}
	}
	var missing []Missing
	seen := make(map[string]bool)
	for _, p := range probes {
		w, ok := why[p.prog]
		if !ok {
			continue
		}
		m := Missing{Symbol: probeName(p.symbol, p.ret), Why: w}
		if p.observes != "" {
			m = Missing{Symbol: p.observes, Why: "inlined; " + p.symbol + ": " + w}
			if w == whyAbsent {
				m.Why = "inlined; " + p.symbol + " not traceable"
			}
		}
		if !seen[m.Symbol] {
			seen[m.Symbol] = true
			missing = append(missing, m)
		}
	}
	return attach, missing
}

// probeName names a probe point the way perf does: "fn" or "fn%return".
func probeName(symbol string, ret bool) string {
	if ret {
		return symbol + "%return"
	}
	return symbol
}
