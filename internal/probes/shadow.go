package probes

import (
	"cmp"
	"encoding/binary"
	"fmt"
	"io"
	"slices"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/link"

	"github.com/klptop/klptop/internal/event"
	"github.com/klptop/klptop/internal/ksym"
)

// statesProg is the iterator that reads the klp_state array of every patch
// on klp_patches, for the start-up snapshot.
const statesProg = "snapshot_states"

// Layout of struct state_rec (bpf/events.h).
const stateRecSize = 16 + patchLen

// shadowHashSym is the kernel's shadow variable hash table (static, so its
// address comes from kallsyms: CONFIG_KALLSYMS_ALL).
const shadowHashSym = "klp_shadow_hash"

// whyNoShadowHash: the probes that must look a shadow variable up in the
// kernel's table to count what a call allocated or freed.
const whyNoShadowHash = shadowHashSym + " not in /proc/kallsyms (CONFIG_KALLSYMS_ALL): which calls allocate or free cannot be told"

// shadowHashProgs need klp_shadow_hash; shadow_alloc does not (a non-NULL
// return of klp_shadow_alloc is always a new variable).
var shadowHashProgs = map[string]bool{
	"shadow_get_or_alloc": true, "shadow_get_or_alloc_ret": true,
	"shadow_free": true, "shadow_free_all": true,
}

// shadowCount is struct shadow_count (bpf/events.h).
type shadowCount struct {
	AllocCalls, GetOrAllocCalls, FreeCalls, FreeAllCalls uint64
	Allocs, Frees                                        uint64
}

// setShadowHash gives the programs the address of klp_shadow_hash and drops
// the probes that need it when it is unknown.
func setShadowHash(spec *ebpf.CollectionSpec, syms *ksym.Table, attach map[string][]string) []Missing {
	addr, _ := syms.Vmlinux(shadowHashSym)
	if v := spec.Variables["klp_shadow_hash_addr"]; v != nil && addr != 0 {
		if err := v.Set(addr); err != nil {
			addr = 0
		}
	}
	return planShadow(attach, addr != 0)
}

// planShadow removes the probes that need klp_shadow_hash from attach when
// it is not known, and names them.
func planShadow(attach map[string][]string, haveHash bool) []Missing {
	if haveHash {
		return nil
	}
	var missing []Missing
	for _, p := range probes {
		if !shadowHashProgs[p.prog] {
			continue
		}
		if _, ok := attach[p.prog]; ok {
			delete(attach, p.prog)
			missing = append(missing, Missing{Symbol: probeName(p.symbol, p.ret), Why: whyNoShadowHash})
		}
	}
	return missing
}

// shadowEvents reads the shadow_counts map and returns a Shadow event for
// each id whose counts changed since the last read, ordered by id.
func (s *Session) shadowEvents(now uint64) []event.Event {
	m := s.coll.Maps["shadow_counts"]
	if m == nil {
		return nil
	}
	var (
		id  uint64
		c   shadowCount
		out []event.Event
	)
	it := m.Iterate()
	for it.Next(&id, &c) {
		if old, ok := s.lastShadow[id]; ok && old == c {
			continue
		}
		if s.lastShadow == nil {
			s.lastShadow = make(map[uint64]shadowCount)
		}
		s.lastShadow[id] = c
		out = append(out, shadowEvent(now, id, c))
	}
	slices.SortFunc(out, func(a, b event.Event) int { return cmp.Compare(a.ID, b.ID) })
	return out
}

// shadowEvent turns one id's counts into its event.
func shadowEvent(now, id uint64, c shadowCount) event.Event {
	calls := map[string]uint64{}
	for name, n := range map[string]uint64{
		event.ShadowAlloc: c.AllocCalls, event.ShadowGetOrAlloc: c.GetOrAllocCalls,
		event.ShadowFree: c.FreeCalls, event.ShadowFreeAll: c.FreeAllCalls,
	} {
		if n != 0 {
			calls[name] = n
		}
	}
	return event.Event{Time: now, Type: event.Shadow, ID: id, Allocs: c.Allocs, Frees: c.Frees,
		Live: int64(c.Allocs) - int64(c.Frees), Calls: calls}
}

// reportShadow emits the shadow variable counts that changed: on Read's
// poll tick and when it drains at the end.
func (s *Session) reportShadow(fn func(event.Event)) {
	for _, e := range s.shadowEvents(monotonicNow()) {
		fn(e)
	}
}

// stateEvents reads the klp_state array of every patch on klp_patches: one
// KlpState event per state, bottom patch first. nil where the iterator is
// not loaded (the reason is in Info.StatesWhy).
func (s *Session) stateEvents(now uint64) ([]event.Event, error) {
	prog := s.coll.Programs[statesProg]
	if prog == nil {
		return nil, nil
	}
	it, err := link.AttachIter(link.IterOptions{Program: prog})
	if err != nil {
		return nil, fmt.Errorf("states iterator: %w", err)
	}
	defer it.Close()
	r, err := it.Open()
	if err != nil {
		return nil, fmt.Errorf("states iterator: %w", err)
	}
	b, err := io.ReadAll(r)
	r.Close()
	if err != nil || len(b) < funcsOutSize {
		return nil, fmt.Errorf("states iterator: %d bytes of output (%v)", len(b), err)
	}
	n, flags := binary.LittleEndian.Uint32(b[0:]), binary.LittleEndian.Uint32(b[4:])
	if flags&(funcsNoBTF|funcsNoHeads) != 0 {
		return nil, nil
	}
	m := s.coll.Maps["state_recs"]
	buf := make([]byte, stateRecSize)
	var out []event.Event
	for i := uint32(0); i < n; i++ {
		if err := m.Lookup(i, &buf); err != nil {
			return out, fmt.Errorf("state_recs[%d]: %w", i, err)
		}
		out = append(out, decodeStateRec(now, buf))
	}
	if flags&funcsOverflow != 0 {
		err = fmt.Errorf("klp_state records truncated at %d", n)
	}
	return out, err
}

func decodeStateRec(now uint64, b []byte) event.Event {
	le := binary.LittleEndian
	return event.Event{Time: now, Type: event.KlpState, ID: le.Uint64(b[0:]),
		Version: int(le.Uint32(b[8:])), Patch: cstr(b[16 : 16+patchLen])}
}
