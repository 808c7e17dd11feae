package probes

import (
	"errors"
	"fmt"
	"strings"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/asm"
	"github.com/cilium/ebpf/btf"
	"github.com/cilium/ebpf/link"
)

// twin is the fentry program with the same body as p's kprobe one
// (bpf/klptop.bpf.c names them so); "" for a return probe, which has none
// (whyFexitStack).
func twin(p probe) string {
	if p.ret {
		return ""
	}
	return "fentry_" + p.prog
}

// Why texts of a probe that stays a kprobe under the fentry backend.
const (
	whyNoBTF       = "%s not in the kernel BTF"
	whyManySyms    = "on %s: an fentry program goes on one function"
	whyCloneNoBTF  = "compiler clone %s: clones have no BTF"
	whyFentryLoad  = "fentry refused: %s"
	whyFentryLink  = "fentry attach: %s"
	whyFentryProbe = "fentry probe on %s: %w"
	// An fexit trampoline calls the function, so its frame stays on the
	// stack of every task inside it, and the kernel's reliable unwinder
	// (what the transition's stack check uses) cannot walk through it:
	// such a task would never switch. Seen: a stall scenario under fexit
	// on 6.1 never completed, the sweeping kworker failing its own check
	// as "unreliable stack" inside klp_try_complete_transition's fexit.
	// A kretprobe's trampoline the unwinder does recover.
	whyFexitStack = "fexit would leave a BPF trampoline frame on the stack of a task inside %s, which the transition's reliable stack check rejects: kretprobe instead"
)

// fentryTargets splits the planned probes between fentry and kprobes: a
// probe gets its fentry twin when it goes on exactly one function and
// that function has BTF (what the kernel resolves an fentry target by).
// Compiler clones (.isra, .constprop, .part) never have BTF, and a probe on
// several clones would need one program per clone; both stay kprobes, with
// the reason in fallback (program -> why). So do all return probes: the
// backend is fentry for entries, kretprobes for returns (whyFexitStack).
func fentryTargets(attach map[string][]string, inBTF func(string) bool) (targets, fallback map[string]string) {
	targets = make(map[string]string)
	fallback = make(map[string]string)
	for _, p := range probes {
		syms, ok := attach[p.prog]
		if !ok {
			continue
		}
		switch {
		case p.ret:
			fallback[p.prog] = fmt.Sprintf(whyFexitStack, strings.Join(syms, ", "))
		case len(syms) != 1:
			fallback[p.prog] = fmt.Sprintf(whyManySyms, strings.Join(syms, ", "))
		case syms[0] != p.symbol && strings.HasPrefix(syms[0], p.symbol+"."):
			fallback[p.prog] = fmt.Sprintf(whyCloneNoBTF, syms[0])
		case !inBTF(syms[0]):
			fallback[p.prog] = fmt.Sprintf(whyNoBTF, syms[0])
		default:
			targets[p.prog] = syms[0]
		}
	}
	return targets, fallback
}

// kernelFuncs reports whether a function is described in the kernel's BTF
// (vmlinux or a loaded module's), as an fentry target must be. Two static
// functions of one name make the name ambiguous, and the loader refuses
// it: that counts as absent.
func kernelFuncs(cache *btf.Cache) func(string) bool {
	return func(name string) bool {
		spec, err := cache.Kernel()
		if err != nil {
			return false
		}
		var fn *btf.Func
		return spec.TypeByName(name, &fn) == nil
	}
}

// pickBackend resolves the --backend flag. Auto takes the cheapest backend
// the kernel accepts: fentry (one trampoline call, no breakpoint or
// ftrace_ops list walk per hit), else kprobe-multi (one link for many
// functions), else single kprobes. The checks are functions so that the
// choice can be tested without a kernel.
func pickBackend(want string, haveFentry, haveMulti func() error) (string, error) {
	switch want {
	case "", BackendAuto:
		if haveFentry() == nil {
			return BackendFentry, nil
		}
		if haveMulti() == nil {
			return BackendKprobeMulti, nil
		}
		return BackendKprobe, nil
	case BackendFentry:
		if err := haveFentry(); err != nil {
			return "", fmt.Errorf("%w: fentry: %v", ErrNoBPF, err)
		}
		return BackendFentry, nil
	case BackendKprobeMulti:
		if err := haveMulti(); err != nil {
			return "", fmt.Errorf("%w: kprobe-multi: %v", ErrNoBPF, err)
		}
		return BackendKprobeMulti, nil
	case BackendKprobe:
		return BackendKprobe, nil
	}
	return "", fmt.Errorf("unknown backend %q (auto, fentry, kprobe-multi, kprobe)", want)
}

// haveFentry loads and attaches an empty fentry program on target, a
// function klptop probes anyway. Loading alone is not enough: a kernel
// without ftrace direct calls (or an architecture without trampolines)
// verifies the program and refuses only the link.
func haveFentry(target string) error {
	if target == "" {
		return errors.New("no probed function has BTF")
	}
	prog, err := ebpf.NewProgram(&ebpf.ProgramSpec{
		Name:         "klptop_fentry",
		Type:         ebpf.Tracing,
		AttachType:   ebpf.AttachTraceFEntry,
		AttachTo:     target,
		License:      "GPL",
		Instructions: asm.Instructions{asm.Mov.Imm(asm.R0, 0), asm.Return()},
	})
	if err != nil {
		return fmt.Errorf(whyFentryProbe, target, err)
	}
	defer prog.Close()
	l, err := link.AttachTracing(link.TracingOptions{Program: prog, AttachType: ebpf.AttachTraceFEntry})
	if err != nil {
		return fmt.Errorf(whyFentryProbe, target, err)
	}
	return l.Close()
}

// probeTarget is the function the fentry feature check attaches to: the
// first planned probe that fentryTargets would give an fentry program.
func probeTarget(attach map[string][]string, inBTF func(string) bool) string {
	targets, _ := fentryTargets(attach, inBTF)
	for _, p := range probes {
		if sym, ok := targets[p.prog]; ok {
			return sym
		}
	}
	return ""
}

// twinOf finds the probe whose fentry twin is the named program.
func twinOf(prog string) (probe, bool) {
	for _, p := range probes {
		if tw := twin(p); tw != "" && tw == prog {
			return p, true
		}
	}
	return probe{}, false
}

// fallbackList is Info.Fallback: the attached probes that went on as
// kprobes under the fentry backend, one entry per probe point, in the order
// of the probe table. Probes that did not attach at all are in Missing
// instead.
func fallbackList(attach map[string][]string, why map[string]string, failed []Missing) []Missing {
	gone := make(map[string]bool)
	for _, m := range failed {
		gone[m.Symbol] = true
	}
	var out []Missing
	seen := make(map[string]bool)
	for _, p := range probes {
		w, ok := why[p.prog]
		syms, planned := attach[p.prog]
		if !ok || !planned || gone[probeName(p.symbol, p.ret)] {
			continue
		}
		for _, sym := range syms {
			name := probeName(sym, p.ret)
			if !seen[name] {
				seen[name] = true
				out = append(out, Missing{Symbol: name, Why: w})
			}
		}
	}
	return out
}

// firstLine of an error: a verifier's refusal carries its whole log.
func firstLine(err error) string {
	s, _, _ := strings.Cut(err.Error(), "\n")
	return s
}
