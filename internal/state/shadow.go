package state

import (
	"cmp"
	"maps"
	"slices"

	"github.com/klptop/klptop/internal/event"
)

// KlpState is one struct klp_state of a patch: what the patch declares it
// changes in the system, and at which version (the kernel refuses a patch
// that would downgrade a state an enabled patch holds).
type KlpState struct {
	ID      uint64
	Version int
}

// Shadow is what klptop saw of the shadow variables of one shadow id since
// it attached (event.Shadow carries cumulative counts).
type Shadow struct {
	ID     uint64
	Allocs uint64
	Frees  uint64
	// Live is Allocs - Frees: negative when variables allocated before
	// klptop attached were freed.
	Live int64
	// Calls of each klp_shadow_* function, by name.
	Calls map[string]uint64
	// Last is when the counts last changed (the event's time).
	Last uint64
}

// maxShadowIDs bounds Shadows against corrupt traces; the kernel side keeps
// at most 1024 ids.
const maxShadowIDs = 4096

// klpState adds one klp_state to its patch, replacing one of the same id.
func (s *State) klpState(e event.Event) {
	if e.Patch == "" || e.ID == 0 {
		return // id 0 ends the kernel's array: never a state
	}
	p := s.ensurePatch(e.Patch)
	st := KlpState{ID: e.ID, Version: e.Version}
	if i := slices.IndexFunc(p.States, func(k KlpState) bool { return k.ID == e.ID }); i >= 0 {
		p.States[i] = st
		return
	}
	p.States = append(p.States, st)
}

func (s *State) shadow(e event.Event) {
	sh := s.Shadows[e.ID]
	if sh == nil {
		if len(s.Shadows) >= maxShadowIDs {
			return
		}
		if s.Shadows == nil {
			s.Shadows = make(map[uint64]*Shadow)
		}
		sh = &Shadow{ID: e.ID}
		s.Shadows[e.ID] = sh
	}
	sh.Allocs, sh.Frees, sh.Live = e.Allocs, e.Frees, e.Live
	sh.Calls = maps.Clone(e.Calls)
	sh.Last = e.Time
}

// ShadowList returns the shadow ids seen, by id.
func (s *State) ShadowList() []*Shadow {
	out := slices.Collect(maps.Values(s.Shadows))
	slices.SortFunc(out, func(a, b *Shadow) int { return cmp.Compare(a.ID, b.ID) })
	return out
}
