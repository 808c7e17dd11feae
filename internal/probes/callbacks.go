package probes

import (
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"unsafe"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/link"
	"golang.org/x/sys/unix"

	"github.com/klptop/klptop/internal/event"
)

// The callback programs: attached by address to each callback function,
// not through the probes table.
const (
	callbackProg     = "klp_callback"
	callbackRetProg  = "klp_callback_ret"
	callbacksIterPrg = "snapshot_callbacks"
)

// callbacksSeen is the internal event of an object's callback addresses.
const callbacksSeen event.Type = "callbacks_seen"

// CallbacksPoint is how the header's attached list names the callback probes.
const CallbacksPoint = event.CallbacksPoint

// callbackSite is one callback function klptop probes.
type callbackSite struct {
	kind, patch string
	module      string    // where the function lives
	target      string    // what the kprobe goes on: "module:func"
	pending     bool      // waiting for its module to be live
	closer      io.Closer // nil: not attached (why in err, unless pending)
	err         error
}

// callbacks is the Session's view of the patches' callbacks.
type callbacks struct {
	why   string // "" when callbacks are observable
	pins  bool   // probing a module pins it here: bracketed callbacks only
	mu    sync.Mutex
	sites map[string]*callbackSite // by the kernel's name, "func [module]"
}

// forgetModule drops the callbacks of an unloading module: the kernel
// removes kprobes on its text, and when it loads again its callbacks are
// probed anew.
func (s *Session) forgetModule(mod string) {
	s.cb.mu.Lock()
	defer s.cb.mu.Unlock()
	for k, site := range s.cb.sites {
		if site.module == mod {
			if site.closer != nil {
				site.closer.Close()
			}
			delete(s.cb.sites, k)
		}
	}
}

// learnCallbacks probes a patch's callback, as early as it can: the
// callbacks that run before the probes are in place are missed (the
// enable's pre-patch ones and the post-patch ones of a transition that
// completes at once are bracketed by the kernel side instead).
func (s *Session) learnCallbacks(raw rawEvent) {
	if s.cb.why != "" || raw.sym == "" || raw.Callback == "" || strings.HasPrefix(raw.sym, "0x") {
		return
	}
	s.cb.mu.Lock()
	defer s.cb.mu.Unlock()
	if s.cb.sites == nil {
		s.cb.sites = make(map[string]*callbackSite)
	}
	if s.cb.sites[raw.sym] != nil {
		return // one probe per function, whatever objects share it
	}
	name, mod, _ := strings.Cut(raw.sym, " [")
	mod = strings.TrimSuffix(mod, "]")
	site := &callbackSite{kind: raw.Callback, patch: raw.Patch, module: mod, target: name}
	// By "module:func", as the kernel named it when it saw the patch: an
	// address could by now be another module's (the events are read
	// late), and a static function's name alone is ambiguous.
	if mod != "" {
		site.target = mod + ":" + name
	}
	s.cb.sites[raw.sym] = site
	s.placeLocked(raw.sym, site)
}

// placeLocked attaches a site's probes once its module is live. While the
// module is still coming (its init enables the patch) the site waits: a
// load that fails takes the module down again, and the kernel answers a
// probe on a module it is tearing down with "trace_kprobe: Could not probe
// notrace function module:func" in its log, which the livepatch selftests
// compare. A module gone already leaves nothing to probe.
func (s *Session) placeLocked(sym string, site *callbackSite) {
	site.pending = false
	if site.module != "" {
		switch state := moduleState(s.root, site.module); state {
		case "live":
		case "coming":
			site.pending = true
			return
		default:
			site.err = fmt.Errorf("module %s is %s", site.module, orGone(state))
			return
		}
	}
	if s.cb.pins {
		site.err = errPins
		return
	}
	// A patch already freed (the events are read late) lets its module
	// go: a probe being placed then holds the module for a moment, and an
	// rmmod at that moment fails "in use" (seen in the selftests on 7.x).
	// While the patch is registered, the kernel holds its module anyway.
	if site.patch != "" {
		if _, err := os.Stat(filepath.Join(s.root, "sys/kernel/livepatch", site.patch)); err != nil {
			site.err = fmt.Errorf("patch %s is gone", site.patch)
			return
		}
	}
	before := moduleRefs(s.root, site.module)
	site.closer, site.err = s.attachCallback(site.target)
	if site.err == nil && site.module != "" && before >= 0 && moduleRefs(s.root, site.module) > before {
		// This kernel holds the module while a kprobe is on it: the
		// patch module could not be unloaded after its unpatching.
		// Off at once; from now on only the bracketed callbacks.
		site.closer.Close()
		site.closer, site.err = nil, errPins
		s.cb.pins = true
		if s.warn != nil {
			s.warn("callbacks: " + errPins.Error())
		}
		return
	}
	if site.err != nil && !errors.Is(site.err, unix.ENOENT) && s.warn != nil {
		s.warn(fmt.Sprintf("cannot probe the %s callback %s: %v", site.kind, sym, site.err))
	}
}

// errPins: on this kernel a kprobe on a module takes a reference to it.
var errPins = errors.New("a kprobe on a patch module holds the module here (it could not be unloaded): only the callbacks klptop brackets from the kernel's own steps are seen (the enable's pre-patch, the post ones at a completion)")

// moduleRefs is /sys/module/MOD/refcnt, -1 when unknown.
func moduleRefs(root, mod string) int {
	b, err := os.ReadFile(filepath.Join(root, "sys/module", mod, "refcnt"))
	if err != nil {
		return -1
	}
	n, err := strconv.Atoi(strings.TrimSpace(string(b)))
	if err != nil {
		return -1
	}
	return n
}

// anyPending: some site waits for its module to come live.
func (c *callbacks) anyPending() bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	for _, site := range c.sites {
		if site.pending {
			return true
		}
	}
	return false
}

// placePending attaches the sites whose module has come live since.
func (s *Session) placePending() {
	s.cb.mu.Lock()
	defer s.cb.mu.Unlock()
	for sym, site := range s.cb.sites {
		if site.pending {
			s.placeLocked(sym, site)
		}
	}
}

// moduleState is /sys/module/MOD/initstate: "live", "coming", "going", or
// "" when there is no such module.
func moduleState(root, mod string) string {
	b, err := os.ReadFile(filepath.Join(root, "sys/module", mod, "initstate"))
	if err != nil {
		return ""
	}
	return strings.TrimSpace(string(b))
}

func orGone(state string) string {
	if state == "" {
		return "gone"
	}
	return state
}

// attachCallback puts klp_callback and klp_callback_ret on a callback.
func (s *Session) attachCallback(target string) (io.Closer, error) {
	entry, err := perfKprobe(s.coll.Programs[callbackProg], target, false)
	if err != nil {
		return nil, err
	}
	ret, err := perfKprobe(s.coll.Programs[callbackRetProg], target, true)
	if err != nil {
		entry.Close()
		return nil, err
	}
	return multiLink{entry, ret}, nil
}

// callbackEvent completes a callback's return: its kind (from the probe's
// site, unless the kernel side bracketed it and said) and its patch (the
// site's, else the callback's module). The kernel side named it.
func (s *Session) callbackEvent(raw rawEvent) (event.Event, bool) {
	e := raw.Event
	s.cb.mu.Lock()
	site := s.cb.sites[raw.sym]
	s.cb.mu.Unlock()
	if site != nil {
		e.Patch = site.patch
		if !raw.Bracketed || e.Callback == "" {
			e.Callback = site.kind
		}
	}
	if e.Callback == "" || e.Func == "" || strings.HasPrefix(e.Func, "0x") {
		return e, false // unknown kind, or no symbol: traces carry names, never addresses
	}
	if e.Callback != event.CallbackPrePatch {
		e.Ret = 0 // the others return void: rax is whatever was left in it
	}
	e.Target = 0
	return e, true
}

// snapshotCallbacks runs the callbacks iterator once: it writes the
// callbacks of every loaded patch into the ring buffer, where Read finds
// them before any later event.
func (s *Session) snapshotCallbacks() error {
	prog := s.coll.Programs[callbacksIterPrg]
	if prog == nil {
		return nil
	}
	it, err := link.AttachIter(link.IterOptions{Program: prog})
	if err != nil {
		return fmt.Errorf("callbacks iterator: %w", err)
	}
	defer it.Close()
	r, err := it.Open()
	if err != nil {
		return fmt.Errorf("callbacks iterator: %w", err)
	}
	defer r.Close()
	_, err = io.ReadAll(r)
	return err
}

// The kprobe PMU, for probes on "module:func".
var kprobePMU struct {
	typ    uint32
	retBit uint64
	err    error
	read   bool
}

func readKprobePMU() error {
	if kprobePMU.read {
		return kprobePMU.err
	}
	kprobePMU.read = true
	const dir = "/sys/bus/event_source/devices/kprobe/"
	b, err := os.ReadFile(dir + "type")
	if err != nil {
		kprobePMU.err = fmt.Errorf("no kprobe PMU: %w", err)
		return kprobePMU.err
	}
	t, err := strconv.ParseUint(strings.TrimSpace(string(b)), 10, 32)
	if err != nil {
		kprobePMU.err = fmt.Errorf("kprobe PMU type %q: %w", b, err)
		return kprobePMU.err
	}
	kprobePMU.typ = uint32(t)
	// "config:0": the bit of attr.config that makes it a kretprobe.
	b, err = os.ReadFile(dir + "format/retprobe")
	if err != nil {
		kprobePMU.err = fmt.Errorf("kprobe PMU has no retprobe format: %w", err)
		return kprobePMU.err
	}
	bit, err := strconv.ParseUint(strings.TrimPrefix(strings.TrimSpace(string(b)), "config:"), 10, 6)
	if err != nil {
		kprobePMU.err = fmt.Errorf("kprobe PMU retprobe format %q: %w", b, err)
		return kprobePMU.err
	}
	kprobePMU.retBit = 1 << bit
	return nil
}

// perfFD is an attached perf event: closing it detaches the program.
type perfFD int

func (f perfFD) Close() error { return unix.Close(int(f)) }

// perfKprobe attaches prog as a k(ret)probe on target ("module:func" or
// "func") through perf_event_open: cilium/ebpf's link.Kprobe refuses the
// module-qualified form the kernel's kallsyms lookup takes.
func perfKprobe(prog *ebpf.Program, target string, ret bool) (io.Closer, error) {
	if prog == nil {
		return nil, errors.New("callback program not loaded")
	}
	if err := readKprobePMU(); err != nil {
		return nil, err
	}
	name, err := unix.BytePtrFromString(target)
	if err != nil {
		return nil, err
	}
	attr := unix.PerfEventAttr{
		Type:        kprobePMU.typ,
		Size:        uint32(unsafe.Sizeof(unix.PerfEventAttr{})),
		Sample_type: unix.PERF_SAMPLE_RAW,
		Sample:      1,
		Wakeup:      1,
		Ext1:        uint64(uintptr(unsafe.Pointer(name))), // kprobe_func
		Ext2:        0,                                     // probe_offset
	}
	if ret {
		attr.Config = kprobePMU.retBit
	}
	fd, err := unix.PerfEventOpen(&attr, -1, 0, -1, unix.PERF_FLAG_FD_CLOEXEC)
	runtime.KeepAlive(name)
	if err != nil {
		return nil, fmt.Errorf("perf_event_open kprobe on %s: %w", target, err)
	}
	if err := unix.IoctlSetInt(fd, unix.PERF_EVENT_IOC_SET_BPF, prog.FD()); err != nil {
		unix.Close(fd)
		return nil, fmt.Errorf("PERF_EVENT_IOC_SET_BPF: %w", err)
	}
	if err := unix.IoctlSetInt(fd, unix.PERF_EVENT_IOC_ENABLE, 0); err != nil {
		unix.Close(fd)
		return nil, fmt.Errorf("PERF_EVENT_IOC_ENABLE: %w", err)
	}
	return perfFD(fd), nil
}

// closeCallbacks detaches every callback probe.
func (s *Session) closeCallbacks() error {
	s.cb.mu.Lock()
	defer s.cb.mu.Unlock()
	var errs []error
	for _, site := range s.cb.sites {
		if site.closer != nil {
			errs = append(errs, site.closer.Close())
		}
	}
	return errors.Join(errs...)
}
