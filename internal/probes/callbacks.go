package probes

import (
	"errors"
	"fmt"
	"io"
	"os"
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
	module      string    // where the function lives: the patch's module
	closer      io.Closer // nil: the attach failed (why in err)
	err         error
}

// callbacks is the Session's view of the patches' callbacks.
type callbacks struct {
	why   string // "" when callbacks are observable
	mu    sync.Mutex
	sites map[uint64]*callbackSite // by address
}

// maxEntryOffset: how far past a function's address the kernel may put a
// kprobe on its entry (after an ENDBR64 with IBT), and so what
// bpf_get_func_ip reports.
const maxEntryOffset = 16

// site finds the callback a probed or bracketed address belongs to.
func (c *callbacks) site(addr uint64) *callbackSite {
	for d := uint64(0); d <= maxEntryOffset && d <= addr; d++ {
		if s := c.sites[addr-d]; s != nil {
			return s
		}
	}
	return nil
}

// forgetModule drops the callbacks of an unloading module: the kernel
// removes kprobes on its text, and another module may load at the address.
func (s *Session) forgetModule(mod string) {
	s.cb.mu.Lock()
	defer s.cb.mu.Unlock()
	for a, site := range s.cb.sites {
		if site.module == mod {
			if site.closer != nil {
				site.closer.Close()
			}
			delete(s.cb.sites, a)
		}
	}
}

// learnCallbacks probes each new callback of an object, as early as it can:
// the callbacks that run before the probes are in place are missed (the
// post-patch ones of a transition that completes at once are bracketed by
// the kernel side instead).
func (s *Session) learnCallbacks(raw rawEvent) {
	if s.cb.why != "" {
		return
	}
	s.cb.mu.Lock()
	defer s.cb.mu.Unlock()
	if s.cb.sites == nil {
		s.cb.sites = make(map[uint64]*callbackSite)
	}
	for i, a := range raw.cb {
		if a == 0 || s.cb.sites[a] != nil {
			continue // one probe per function, whatever objects share it
		}
		// The module: the patch's own (its callbacks are its functions),
		// so that its unload forgets them even before they are named.
		site := &callbackSite{kind: callbackKinds[i], patch: raw.Patch, module: raw.Patch}
		site.closer, site.err = s.attachCallback(a)
		// ENOENT: the module is gone already (its load failed): nothing
		// more of it to see.
		if site.err != nil && !errors.Is(site.err, unix.ENOENT) && s.warn != nil {
			s.warn(fmt.Sprintf("cannot probe a %s callback of %s: %v", site.kind, raw.Patch, site.err))
		}
		s.cb.sites[a] = site
	}
}

// attachCallback puts klp_callback and klp_callback_ret on the function at
// addr. By address, not name: callbacks are static functions whose names
// (pre_patch_callback...) several loaded patches share.
func (s *Session) attachCallback(addr uint64) (io.Closer, error) {
	entry, err := perfKprobeAddr(s.coll.Programs[callbackProg], addr, false)
	if err != nil {
		return nil, err
	}
	ret, err := perfKprobeAddr(s.coll.Programs[callbackRetProg], addr, true)
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
	site := s.cb.site(raw.addr)
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

// The kprobe PMU, for probes by address (cilium/ebpf's link.Kprobe takes a
// symbol name, and a callback's name need not be unique).
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

// perfKprobeAddr attaches prog as a k(ret)probe at addr, through
// perf_event_open with kprobe_func NULL and kprobe_addr set.
func perfKprobeAddr(prog *ebpf.Program, addr uint64, ret bool) (io.Closer, error) {
	if prog == nil {
		return nil, errors.New("callback program not loaded")
	}
	if err := readKprobePMU(); err != nil {
		return nil, err
	}
	attr := unix.PerfEventAttr{
		Type:        kprobePMU.typ,
		Size:        uint32(unsafe.Sizeof(unix.PerfEventAttr{})),
		Sample_type: unix.PERF_SAMPLE_RAW,
		Sample:      1,
		Wakeup:      1,
		Ext1:        0,    // kprobe_func: none, by address
		Ext2:        addr, // kprobe_addr
	}
	if ret {
		attr.Config = kprobePMU.retBit
	}
	fd, err := unix.PerfEventOpen(&attr, -1, 0, -1, unix.PERF_FLAG_FD_CLOEXEC)
	if err != nil {
		return nil, fmt.Errorf("perf_event_open kprobe at a callback: %w", err)
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
