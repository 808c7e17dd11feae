// Package probes is klptop's kernel side: it loads the BPF programs of
// bpf/klptop.bpf.c, attaches them to the livepatch functions the running
// kernel has, and turns what they report into event.Events.
package probes

import (
	"cmp"
	"errors"
	"fmt"
	"io"
	"maps"
	"os"
	"path/filepath"
	"slices"
	"sort"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/btf"
	"github.com/cilium/ebpf/features"
	"github.com/cilium/ebpf/link"
	"github.com/cilium/ebpf/ringbuf"
	"github.com/cilium/ebpf/rlimit"
	"golang.org/x/sys/unix"

	"github.com/klptop/klptop/internal/event"
	"github.com/klptop/klptop/internal/ksym"
	"github.com/klptop/klptop/internal/sysfs"
)

// Backends.
const (
	BackendAuto        = "auto"
	BackendFentry      = "fentry"
	BackendKprobeMulti = "kprobe-multi"
	BackendKprobe      = "kprobe"
)

// Options configure Open.
type Options struct {
	Backend string // "auto" (or ""), "fentry", "kprobe-multi", "kprobe"
	// Warn, if set, hears what goes wrong after Open (a callback that
	// cannot be probed), from Read's goroutine.
	Warn func(string)
	// RingBytes, if not 0, sizes the events ring instead of the task
	// count (a power of two, at least a page).
	RingBytes uint32
}

// Reasons Open fails; the returned errors wrap them with detail.
var (
	ErrNoLivepatch = errors.New("kernel has no livepatch support")
	ErrNotRoot     = errors.New("klptop needs root")
	ErrNoBPF       = errors.New("BPF not usable")
)

// Missing is a probe the running kernel cannot have.
type Missing struct{ Symbol, Why string }

// Info describes what Open attached.
type Info struct {
	Backend string
	// Attached are the probe points, "fn" or "fn%return" for a return probe.
	Attached []string
	// OnDemand are those of Attached on functions that run all over the
	// kernel (forks, exits, wake-ups): attached only while a transition runs.
	OnDemand []string
	Missing  []Missing
	// Fallback: with Backend fentry, the probes attached as kprobes
	// instead (Symbol as in Attached), and why.
	Fallback   []Missing
	AttachTime time.Duration // from Open's start to all probes attached
	LoadTime   time.Duration // of which loading the programs (the verifier, CO-RE against the kernel's BTF)
	// Phases are Open's steps in order, with their times; Loads is how
	// many programs it asked the kernel to load (each once, but for a
	// refused fentry twin's kprobe program).
	Phases []Phase
	Loads  int
	Kernel string // uname -r
	// Tasks is the number of tasks (threads) when klptop started, and
	// RingBytes the size of the events ring it chose for them.
	Tasks     int
	RingBytes uint32
	// LossCounted are the causes of loss (event.Lost*) counted here;
	// losses of another cause would go unseen.
	LossCounted []string
	// FuncsWhy says why function stacks cannot be read here; "" when they can.
	FuncsWhy string
	// StatesWhy says why the snapshot cannot read the klp_state arrays of
	// patches already loaded; "" when it can.
	StatesWhy string
}

// Session is the loaded and attached probes.
type Session struct {
	coll  *ebpf.Collection
	links []io.Closer
	rd    *ringbuf.Reader
	syms  *ksym.Table
	info  Info
	root  string

	closeOnce sync.Once
	closeErr  error

	lostSeen    uint64
	lostChecked time.Time
	// counted are the probes whose misses the kernel counts, if it does
	// (countMissed, countRecursion); undecodable counts the ring records
	// Read could not decode, undecodableSeen those reported.
	counted                      []counted
	countMissed, countRecursion  bool
	undecodable, undecodableSeen uint64
	resync                       resync
	held                         []event.Event // see hold
	// needStack: tasks sleeping on a function whose stack could not be
	// read at the check that asked for it (it was running for a moment):
	// read again at their next check.
	needStack map[int]bool

	funcsWhy    string
	funcsMu     sync.Mutex
	funcsReadAt uint64 // CLOCK_MONOTONIC when the last read of the stacks began
	lastFuncs   map[string]FuncStack

	// funcsOwed: since when a read of the stacks after a change waits
	// for klp_mutex (see changedFuncs); stacks, if set, reads them instead
	// of the iterator (tests).
	funcsOwed time.Time
	stacks    func(wait time.Duration) ([]FuncStack, bool, error)

	lastShadow map[uint64]shadowCount // shadow_counts as last reported

	cb   callbacks
	warn func(string)

	onDrained func() // see OnDrained
	// holdSince is the programs' hold_since_ns, looked up once: Read
	// checks it for every record.
	holdSince *ebpf.Variable

	// hot are the probes attached only during a transition; hotOn says
	// they are, transition that the events read so far say one runs.
	hot               []hotProbe
	hotOn, transition bool
	endedAt           time.Time // when the events last said a transition ended
}

// OnDrained sets f to run on Read's goroutine each time Read found the ring
// empty: where a writer flushes without a timer of its own, which would
// wake klptop during a sweep. Call it before Read.
func (s *Session) OnDrained(f func()) { s.onDrained = f }

// Open checks that this machine can run klptop, then loads and attaches the
// probes. Functions the kernel lacks are reported in Info().Missing, not as
// errors.
func Open(opts Options) (*Session, error) {
	if os.Geteuid() != 0 {
		return nil, fmt.Errorf("%w (BPF and /proc/kallsyms addresses)", ErrNotRoot)
	}
	const root = "/"
	if !sysfs.HasLivepatch(root) {
		return nil, fmt.Errorf("%w: no /%s (CONFIG_LIVEPATCH)", ErrNoLivepatch, sysfs.LivepatchDir)
	}
	if _, err := os.Stat("/sys/kernel/btf/vmlinux"); err != nil {
		return nil, fmt.Errorf("%w: no kernel BTF (CONFIG_DEBUG_INFO_BTF): %v", ErrNoBPF, err)
	}
	start := time.Now()
	w := newStopwatch()
	avail, err := openTraceable()
	if err != nil {
		return nil, err
	}
	attach, missing := plan(avail)
	w.lap("available_filter_functions")
	_ = rlimit.RemoveMemlock() // kernels before 5.11 charge BPF memory to RLIMIT_MEMLOCK, the fentry check's too
	// One decoding of the kernel's BTF for the target checks and every load.
	cache := btf.NewCache()
	_, _ = cache.Kernel()
	w.lap("kernel BTF")
	inBTF := kernelFuncs(cache)
	backend, err := pickBackend(opts.Backend,
		func() error { return haveFentry(probeTarget(attach, inBTF)) }, features.HaveBPFLinkKprobeMulti)
	if err != nil {
		return nil, err
	}
	w.lap("backend check")
	// How the kprobe programs attach: under fentry, those of the probes
	// that fall back.
	kmode := backend
	if backend == BackendFentry {
		kmode = BackendKprobe
		if features.HaveBPFLinkKprobeMulti() == nil {
			kmode = BackendKprobeMulti
		}
	}

	spec, err := loadKlptop()
	if err != nil {
		return nil, fmt.Errorf("%w: %v", ErrNoBPF, err)
	}
	w.lap("BPF object")
	syms := ksym.New("/proc/kallsyms")
	missing = append(missing, setShadowHash(spec, syms, attach)...)
	w.lap("kallsyms")
	running, err := seedTransition(spec, root)
	if err != nil {
		return nil, fmt.Errorf("%w: %v", ErrNoBPF, err)
	}
	_, sweep := attach["klp_try_complete_transition"]
	if err := spec.Variables["sweep_probed"].Set(sweep); err != nil {
		return nil, fmt.Errorf("%w: %v", ErrNoBPF, err)
	}
	if err := spec.Variables["sched_in_schedule"].Set(schedInSchedule(kernelRelease())); err != nil {
		return nil, fmt.Errorf("%w: %v", ErrNoBPF, err)
	}
	keep := map[string]bool{iterProg: true}
	fallback := map[string]string{}
	if backend == BackendFentry {
		var targets map[string]string
		targets, fallback = fentryTargets(attach, inBTF)
		for _, p := range probes {
			if sym, ok := targets[p.prog]; ok {
				spec.Programs[twin(p)].AttachTo = sym
				keep[twin(p)] = true
			}
		}
	}
	for _, p := range probes {
		if _, ok := attach[p.prog]; ok && !keep[twin(p)] {
			keep[p.prog] = true
		}
	}
	funcsOK, funcsWhy := setHeads(spec, syms)
	keep[funcsProg] = funcsOK
	keep[statesProg] = funcsOK // walks klp_patches too
	keep[callbacksIterPrg] = funcsOK
	keep[callbackProg], keep[callbackRetProg] = true, true
	if kmode == BackendKprobeMulti {
		for _, p := range probes {
			if ps := spec.Programs[p.prog]; ps != nil {
				ps.AttachType = ebpf.AttachTraceKprobeMulti
			}
		}
	}
	tasks := threadCount(root)
	ring := sizeMaps(spec, tasks, opts.RingBytes)
	w.lap("plan")
	coll, funcsWhy, statesWhy, rejected, loads, err := loadCollection(spec, keep, funcsWhy, cache)
	if err != nil {
		return nil, fmt.Errorf("%w: %v", ErrNoBPF, err)
	}
	loadTook := w.lap("load")
	cbWhy := callbacksWhy(keep)
	for _, r := range rejected {
		if r.fellBack {
			fallback[r.prog] = r.why
			continue
		}
		if r.prog == "" {
			cbWhy = r.why
			continue
		}
		delete(attach, r.prog)
		missing = append(missing, Missing{Symbol: probeName(r.symbol, r.ret), Why: r.why})
	}
	s := &Session{coll: coll, syms: syms, root: root, funcsWhy: funcsWhy, warn: opts.Warn,
		holdSince: coll.Variables["hold_since_ns"]}
	// Naming a new patch module's functions rereads kallsyms, for a second
	// or more right after its enable: no piece of it while a transition
	// starts or a sweep runs.
	syms.Yield = s.sleepThroughHold
	s.info = Info{Backend: backend, Kernel: kernelRelease(), FuncsWhy: funcsWhy, StatesWhy: statesWhy, LoadTime: loadTook, Tasks: tasks, RingBytes: ring, Loads: loads}
	s.countMissed, s.countRecursion = lossCounters(cache)
	s.info.LossCounted = s.lossCounted()

	attached, failed, linkFallback, loads := s.attachAll(spec, attach, kmode, cache)
	s.info.Loads += loads
	w.lap("attach")
	if cbWhy == "" {
		if err := readKprobePMU(); err != nil {
			cbWhy = err.Error()
		}
	}
	s.cb.why = cbWhy
	if cbWhy == "" {
		attached = append(attached, CallbacksPoint)
		if !keep[callbacksIterPrg] {
			failed = append(failed, Missing{Symbol: CallbacksPoint, Why: "callbacks of patches loaded before klptop not observable: " + funcsWhy})
		}
	} else {
		failed = append(failed, Missing{Symbol: CallbacksPoint, Why: "callbacks not observable: " + cbWhy})
	}
	s.info.Attached = attached
	s.info.Missing = append(missing, failed...)
	for _, h := range s.hot {
		s.info.OnDemand = append(s.info.OnDemand, h.point)
	}
	// Attached once above, so that Info tells what can be attached; kept
	// only while a transition runs.
	s.transition, s.hotOn = running, true
	if !running {
		s.parkHot()
		w.lap("park")
	}
	for prog, why := range linkFallback {
		fallback[prog] = why
	}
	if backend == BackendFentry {
		s.info.Fallback = fallbackList(attach, fallback, failed)
	}
	if len(s.links) == 0 {
		s.Close()
		return nil, fmt.Errorf("%w: no livepatch function could be probed: %v", ErrNoBPF, s.info.Missing)
	}
	if s.rd, err = ringbuf.NewReader(coll.Maps["events"]); err != nil {
		s.Close()
		return nil, fmt.Errorf("%w: ring buffer: %v", ErrNoBPF, err)
	}
	w.lap("ring")
	s.info.Phases = w.phases
	s.info.AttachTime = time.Since(start)
	return s, nil
}

// callbacksWhy: why the callbacks cannot be observed, when the programs
// were not loaded. Without the iterator (no klp_patches head) only the
// callbacks of patches loaded before klptop are unseen.
func callbacksWhy(keep map[string]bool) string {
	if !keep[callbackProg] || !keep[callbackRetProg] {
		return "callback programs not loaded"
	}
	return ""
}

// rejectedProbe is a program the kernel refused: a kprobe one (the probe
// is lost), an fentry twin (fellBack: its kprobe program was loaded
// instead), or (prog "") a callback program, which is not in the probes
// table.
type rejectedProbe struct {
	probe
	why      string
	fellBack bool
}

// loadCollection loads the maps, then each program in keep on its own over
// them: the kernel verifies every program once, and a refusal costs only
// that program. A refused funcs or states iterator is named in funcsWhy and
// statesWhy; a refused kprobe program is dropped with its partner
// (returned, for the list of what is not observable). A refused fentry twin
// (a target the kernel will not trampoline, a verifier difference of typed
// arguments) is replaced by its kprobe program. The task iterator is
// needed: its refusal is the error. loads counts the programs the kernel
// was asked to load.
func loadCollection(spec *ebpf.CollectionSpec, keep map[string]bool, funcsWhy string, cache *btf.Cache) (coll *ebpf.Collection, _, statesWhy string, rejected []rejectedProbe, loads int, err error) {
	statesWhy = funcsWhy
	if !keep[statesProg] && statesWhy == "" {
		statesWhy = "states iterator not loaded"
	}
	if coll, err = newMaps(spec, cache); err != nil {
		return nil, "", "", nil, 0, err
	}
	queue := loadOrder(keep)
	// drop closes what was loaded of the programs no longer kept.
	drop := func() {
		for name, prog := range coll.Programs {
			if !keep[name] {
				prog.Close()
				delete(coll.Programs, name)
			}
		}
	}
	for len(queue) > 0 {
		name := queue[0]
		queue = queue[1:]
		if !keep[name] || coll.Programs[name] != nil {
			continue
		}
		loads++
		prog, lerr := loadProgram(spec, name, coll.Maps, cache)
		if lerr == nil {
			coll.Programs[name] = prog
			continue
		}
		first, _, _ := strings.Cut(lerr.Error(), "\n")
		msg := strings.TrimPrefix(first, "program "+name+": ")
		switch name {
		case iterProg:
			coll.Close()
			return nil, "", "", nil, loads, lerr
		case funcsProg:
			keep[funcsProg] = false
			funcsWhy = "funcs iterator rejected: " + msg
		case statesProg:
			keep[statesProg] = false
			if statesWhy == "" {
				statesWhy = "states iterator rejected: " + msg
			}
		case callbackProg, callbackRetProg, callbacksIterPrg:
			// The callbacks go unobserved, and only they.
			keep[callbackProg], keep[callbackRetProg], keep[callbacksIterPrg] = false, false, false
			rejected = append(rejected, rejectedProbe{why: name + " rejected by the verifier: " + msg})
		default:
			if p, ok := twinOf(name); ok {
				keep[name] = false
				keep[p.prog] = true
				queue = append([]string{p.prog}, queue...)
				rejected = append(rejected, rejectedProbe{p, fmt.Sprintf(whyFentryLoad, msg), true})
				continue
			}
			sweep := false
			for _, p := range probes {
				if (p.prog == name || p.pair == name) && (keep[p.prog] || keep[twin(p)]) {
					keep[p.prog] = false
					keep[twin(p)] = false
					why := "rejected by the verifier: " + msg
					if p.prog != name {
						why = "its partner was " + why
					}
					rejected = append(rejected, rejectedProbe{p, why, false})
					sweep = sweep || p.symbol == sweepSymbol
				}
			}
			if sweep {
				// The programs must not wait for sweeps that never come.
				// sweep_probed is a constant of the maps: they are made
				// again, and what was loaded over them (only the task
				// iterator and the sweep's programs, which go first) with
				// them.
				drop()
				again := slices.Sorted(maps.Keys(coll.Programs))
				coll.Close()
				if v := spec.Variables["sweep_probed"]; v != nil {
					_ = v.Set(false)
				}
				if coll, err = newMaps(spec, cache); err != nil {
					return nil, "", "", nil, loads, err
				}
				queue = append(again, queue...)
			}
		}
		drop()
	}
	return coll, funcsWhy, statesWhy, rejected, loads, nil
}

// sweepSymbol is the function of the sweep, whose probes tell the others
// (sweep_probed) whether a sweep will be seen.
const sweepSymbol = "klp_try_complete_transition"

// loadOrder is the order the programs in keep are loaded in: the task
// iterator, whose refusal ends the load, then the sweep's programs, whose
// refusal changes a constant of the others, then the rest by name.
func loadOrder(keep map[string]bool) []string {
	rank := func(name string) int {
		if name == iterProg {
			return 0
		}
		for _, p := range probes {
			if p.symbol == sweepSymbol && (name == p.prog || name == twin(p)) {
				return 1
			}
		}
		return 2
	}
	var order []string
	for name, ok := range keep {
		if ok {
			order = append(order, name)
		}
	}
	slices.SortFunc(order, func(a, b string) int {
		return cmp.Or(cmp.Compare(rank(a), rank(b)), strings.Compare(a, b))
	})
	return order
}

// loadProgram loads one program of spec over the maps of a loaded
// collection.
func loadProgram(spec *ebpf.CollectionSpec, name string, over map[string]*ebpf.Map, cache *btf.Cache) (*ebpf.Program, error) {
	ps := spec.Programs[name]
	if ps == nil {
		return nil, fmt.Errorf("program %s: not in the BPF object", name)
	}
	one := &ebpf.CollectionSpec{Maps: spec.Maps, Programs: map[string]*ebpf.ProgramSpec{name: ps}, Types: spec.Types, ByteOrder: spec.ByteOrder}
	c, err := newCollection(one, ebpf.CollectionOptions{MapReplacements: over, Cache: cache})
	if err != nil {
		return nil, err
	}
	prog := c.Programs[name]
	delete(c.Programs, name)
	c.Close()
	return prog, nil
}

// OpenIterators loads only the iterators, attaching no probe: enough for
// Snapshot and FuncStacks (klptop status). Read must not be called.
func OpenIterators() (*Session, error) {
	if os.Geteuid() != 0 {
		return nil, fmt.Errorf("%w (BPF and /proc/kallsyms addresses)", ErrNotRoot)
	}
	const root = "/"
	if !sysfs.HasLivepatch(root) {
		return nil, fmt.Errorf("%w: no /%s (CONFIG_LIVEPATCH)", ErrNoLivepatch, sysfs.LivepatchDir)
	}
	if _, err := os.Stat("/sys/kernel/btf/vmlinux"); err != nil {
		return nil, fmt.Errorf("%w: no kernel BTF (CONFIG_DEBUG_INFO_BTF): %v", ErrNoBPF, err)
	}
	spec, err := loadKlptop()
	if err != nil {
		return nil, fmt.Errorf("%w: %v", ErrNoBPF, err)
	}
	syms := ksym.New("/proc/kallsyms")
	funcsOK, funcsWhy := setHeads(spec, syms)
	_ = rlimit.RemoveMemlock()
	coll, funcsWhy, statesWhy, _, _, err := loadCollection(spec, map[string]bool{iterProg: true, funcsProg: funcsOK, statesProg: funcsOK}, funcsWhy, nil)
	if err != nil {
		return nil, fmt.Errorf("%w: %v", ErrNoBPF, err)
	}
	s := &Session{coll: coll, syms: syms, root: root, funcsWhy: funcsWhy}
	s.info = Info{Kernel: kernelRelease(), FuncsWhy: funcsWhy, StatesWhy: statesWhy}
	return s, nil
}

// openTraceable reads available_filter_functions, mounting tracefs first if
// nothing has (minimal systems, containers).
func openTraceable() (map[string]bool, error) {
	avail, _, err := traceableFile()
	if err == nil {
		return avail, nil
	}
	if merr := unix.Mount("tracefs", tracefsDirs[0], "tracefs", 0, ""); merr != nil {
		return nil, fmt.Errorf("%w: no available_filter_functions (%v) and mounting tracefs failed: %v", ErrNoBPF, err, merr)
	}
	avail, _, err = traceableFile()
	if err != nil {
		return nil, fmt.Errorf("%w: %v", ErrNoBPF, err)
	}
	return avail, nil
}

// seedTransition tells the programs about a transition already running, so
// that events before the next klp_init_transition name the patch and target;
// true if one runs.
func seedTransition(spec *ebpf.CollectionSpec, root string) (bool, error) {
	ps, err := sysfs.Patches(root)
	if err != nil {
		return false, nil // snapshot will report it; the probes work without
	}
	for _, p := range ps {
		if !p.Transition {
			continue
		}
		var name [patchLen]byte
		copy(name[:patchLen-1], p.Name)
		if err := spec.Variables["cur_patch"].Set(name); err != nil {
			return true, err
		}
		return true, spec.Variables["cur_target"].Set(int32(p.Target()))
	}
	return false, nil
}

// newMaps loads the maps of spec and its variables, no program.
func newMaps(spec *ebpf.CollectionSpec, cache *btf.Cache) (*ebpf.Collection, error) {
	return newCollection(&ebpf.CollectionSpec{Maps: spec.Maps, Variables: spec.Variables, Types: spec.Types, ByteOrder: spec.ByteOrder},
		ebpf.CollectionOptions{Cache: cache})
}

func newCollection(spec *ebpf.CollectionSpec, opts ebpf.CollectionOptions) (*ebpf.Collection, error) {
	coll, err := ebpf.NewCollectionWithOptions(spec, opts)
	if err != nil {
		var ve *ebpf.VerifierError
		if errors.As(err, &ve) {
			// The first line names the program; the log follows.
			return nil, fmt.Errorf("%v\n%+v", err, ve)
		}
		return nil, err
	}
	return coll, nil
}

// attachAll attaches the planned programs, and detaches a probe whose
// partner failed to attach. An fentry twin the kernel loaded but will not
// link (no trampoline for that function) is replaced by its kprobe program,
// loaded on the spot over the same maps; those are returned in fellBack
// (program -> why).
func (s *Session) attachAll(spec *ebpf.CollectionSpec, attach map[string][]string, kmode string, cache *btf.Cache) (attached []string, failed []Missing, fellBack map[string]string, loads int) {
	links := make(map[string]io.Closer)
	progs := make(map[string]*ebpf.Program)
	points := make(map[string][]string)
	// How each probe attaches again: the hot ones come and go (armHot).
	again := make(map[string]func() (io.Closer, error))
	fellBack = make(map[string]string)
	place := func(p probe, prog *ebpf.Program) bool {
		syms := attach[p.prog]
		again[p.prog] = func() (io.Closer, error) { return attachOne(prog, syms, p.ret, kmode) }
		l, err := again[p.prog]()
		if err != nil {
			failed = append(failed, Missing{Symbol: probeName(p.symbol, p.ret), Why: "attach: " + err.Error()})
			return false
		}
		links[p.prog], progs[p.prog] = l, prog
		for _, sym := range attach[p.prog] {
			points[p.prog] = append(points[p.prog], probeName(sym, p.ret))
		}
		return true
	}
	var retry []probe
	for _, p := range probes {
		if _, ok := attach[p.prog]; !ok {
			continue
		}
		if tw := s.coll.Programs[twin(p)]; tw != nil {
			at := ebpf.AttachTraceFEntry
			if p.ret {
				at = ebpf.AttachTraceFExit
			}
			opts := link.TracingOptions{Program: tw, AttachType: at}
			again[p.prog] = func() (io.Closer, error) { return link.AttachTracing(opts) }
			l, err := again[p.prog]()
			if err != nil {
				fellBack[p.prog] = fmt.Sprintf(whyFentryLink, err)
				retry = append(retry, p)
				continue
			}
			links[p.prog], progs[p.prog] = l, tw
			points[p.prog] = append(points[p.prog], probeName(attach[p.prog][0], p.ret))
			continue
		}
		if prog := s.coll.Programs[p.prog]; prog != nil {
			place(p, prog)
		}
	}
	for _, p := range retry {
		loads++
		prog, err := loadProgram(spec, p.prog, s.coll.Maps, cache)
		if err != nil {
			failed = append(failed, Missing{Symbol: probeName(p.symbol, p.ret), Why: fellBack[p.prog] + "; kprobe: " + firstLine(err)})
			delete(fellBack, p.prog)
			continue
		}
		s.coll.Programs[p.prog] = prog
		if !place(p, prog) {
			delete(fellBack, p.prog)
		}
	}
	for _, p := range probes {
		l, ok := links[p.prog]
		if !ok {
			continue
		}
		if p.pair != "" && links[p.pair] == nil {
			l.Close()
			failed = append(failed, Missing{Symbol: probeName(p.symbol, p.ret), Why: whyPartner})
			delete(fellBack, p.prog)
			continue
		}
		if p.hot {
			s.hot = append(s.hot, hotProbe{point: probeName(p.symbol, p.ret), attach: again[p.prog], link: l, counted: len(s.counted)})
		} else {
			s.links = append(s.links, l)
		}
		s.counted = append(s.counted, counted{point: probeName(p.symbol, p.ret), link: l, prog: progs[p.prog]})
		attached = append(attached, points[p.prog]...)
	}
	sort.Strings(attached)
	return attached, failed, fellBack, loads
}

func attachOne(prog *ebpf.Program, syms []string, ret bool, backend string) (io.Closer, error) {
	if backend == BackendKprobeMulti {
		opts := link.KprobeMultiOptions{Symbols: syms}
		if ret {
			return link.KretprobeMulti(prog, opts)
		}
		return link.KprobeMulti(prog, opts)
	}
	var ls multiLink
	for _, sym := range syms {
		var l link.Link
		var err error
		if ret {
			l, err = link.Kretprobe(sym, prog, nil)
		} else {
			l, err = link.Kprobe(sym, prog, nil)
		}
		if err != nil {
			ls.Close()
			return nil, err
		}
		ls = append(ls, l)
	}
	if len(ls) == 1 {
		return ls[0], nil
	}
	return ls, nil
}

// multiLink is one program on several clones with single kprobes.
type multiLink []io.Closer

func (m multiLink) Close() error {
	var errs []error
	for _, l := range m {
		errs = append(errs, l.Close())
	}
	return errors.Join(errs...)
}

func kernelRelease() string {
	var u unix.Utsname
	if unix.Uname(&u) != nil {
		return ""
	}
	return unix.ByteSliceToString(u.Release[:])
}

// Info reports what Open attached.
func (s *Session) Info() Info { return s.info }

// Close detaches everything; a blocked Read returns.
func (s *Session) Close() error {
	s.closeOnce.Do(func() {
		var errs []error
		if s.rd != nil {
			errs = append(errs, s.rd.Close())
		}
		for _, l := range s.links {
			errs = append(errs, l.Close())
		}
		for _, h := range s.hot {
			if h.link != nil {
				errs = append(errs, h.link.Close())
			}
		}
		errs = append(errs, s.closeCallbacks())
		if s.coll != nil {
			s.coll.Close()
		}
		s.closeErr = errors.Join(errs...)
	})
	return s.closeErr
}

func monotonicNow() uint64 {
	var ts unix.Timespec
	_ = unix.ClockGettime(unix.CLOCK_MONOTONIC, &ts)
	return uint64(ts.Nano())
}

// schedInSchedule: from 6.16 on, klp_sched_try_switch() runs in
// __schedule() (on TASK_FREEZABLE sleeps) instead of cond_resched()
// (the kernel's "sched,livepatch: Untangle cond_resched() and
// live-patching").
func schedInSchedule(release string) bool {
	var major, minor int
	if _, err := fmt.Sscanf(release, "%d.%d", &major, &minor); err != nil {
		return false
	}
	return major > 6 || major == 6 && minor >= 16
}

// A record in the events ring: struct event and the ring's 8-byte header,
// rounded up to 8 as the kernel does.
const ringRecord = (eventSize + 8 + 7) &^ 7

// ringBytes is the events ring for tasks tasks: a sweep emits up to one
// record per task, and a reader busy with one sweep's records may see the
// next sweep begin: room for two records per task and some slack, as a
// power of two (the kernel's rule), from 2 MiB up to 1 GiB.
func ringBytes(tasks int) uint32 {
	const lo, hi = 2 << 20, 1 << 30
	want := uint64(2*tasks+4096) * ringRecord
	n := uint64(lo)
	for n < want && n < hi {
		n <<= 1
	}
	return uint32(n)
}

// sizeMaps sizes the maps that hold a record per task for tasks tasks,
// and the ring (ring bytes, or from tasks when 0), and returns its size.
func sizeMaps(spec *ebpf.CollectionSpec, tasks int, ring uint32) uint32 {
	if ring == 0 {
		ring = ringBytes(tasks)
	}
	spec.Maps["events"].MaxEntries = ring
	// Every pending task's last failed check: an evicted one asks for
	// its stack again at every sweep.
	if m := spec.Maps["last_checks"]; m != nil {
		m.MaxEntries = max(m.MaxEntries, uint32(2*tasks))
	}
	return ring
}

// threadCount is the kernel's nr_threads, from /proc/loadavg ("1/123":
// runnable/all); sysinfo(2) has it in 16 bits only.
func threadCount(root string) int {
	b, err := os.ReadFile(filepath.Join(root, "proc/loadavg"))
	if err != nil {
		return 0
	}
	f := strings.Fields(string(b))
	if len(f) < 4 {
		return 0
	}
	_, all, ok := strings.Cut(f[3], "/")
	if !ok {
		return 0
	}
	n, err := strconv.Atoi(all)
	if err != nil || n < 0 {
		return 0
	}
	return n
}
