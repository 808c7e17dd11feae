/* SPDX-License-Identifier: GPL-2.0 */
/*
 * Records the BPF programs hand to user space. internal/probes decodes them
 * by hand (decode.go): keep both in step, and keep every field naturally
 * aligned so the layout has no padding to disagree about.
 */
#ifndef __KLPTOP_EVENTS_H__
#define __KLPTOP_EVENTS_H__

#define KLPTOP_COMM_LEN 16
#define KLPTOP_PATCH_LEN 56 /* MODULE_NAME_LEN on 64-bit */
#define KLPTOP_FUNC_LEN 128 /* KSYM_NAME_LEN was 128 before 6.1; longer names are cut */
#define KLPTOP_MAX_STACK 32

enum klptop_event_type {
	EV_PATCH_ENABLE = 1,
	EV_TRANSITION_INIT,
	EV_TRANSITION_START,
	EV_TRANSITION_COMPLETE,
	EV_TRANSITION_REVERSE,
	EV_TRANSITION_CANCEL,
	EV_TRANSITION_FORCE,
	EV_SWEEP_START,
	EV_SWEEP_END,
	EV_TASK_CHECK,
	EV_TASK_SWITCH,
	/* Internal: a function stack may have changed; user space re-reads them. Never in a trace. */
	EV_FUNCS_CHANGED,
	EV_SIGNAL,
	EV_KLP_STATE, /* one struct klp_state of the patch of the EV_PATCH_ENABLE before it */
	EV_MODULE_COMING, /* func: the module */
	EV_MODULE_GOING,  /* func: the module */
	EV_MODULE_APPLY,  /* patch applied to the coming module (func) */
	EV_MODULE_REVERT, /* patch reverted on the going module (func) */
	EV_PATCH_REPLACE, /* patch unpatches the patches below it (EV_PATCH_REPLACED each, next) */
	EV_PATCH_REPLACED,
	EV_NOPS_DISCARD,  /* patch's nop functions discarded */
	EV_PATCH_FREE,    /* patch freed */
	EV_REPLACED_FREE, /* the patches patch replaced are freed */
	/* Internal: a callback of a patch: id its address, func "symbol [module]", version kind + 1; user space probes it. Never in a trace. */
	EV_CALLBACKS,
	/* A callback returned: id its address, func "symbol [module]", patch the object, duration, ret, version its kind + 1 when bracketed. */
	EV_CALLBACK,
	/* release_task() returned: the subject task left the thread list during a transition. */
	EV_TASK_EXIT,
};

enum klptop_path {
	PATH_NONE = 0,
	PATH_USER,
	PATH_IDLE,
	PATH_FORK,
	PATH_SCHED,
	PATH_WAKE,   /* signal: a kthread woken (wake_up_state) */
	PATH_SIGNAL, /* signal: a user task sent a fake signal (TIF_NOTIFY_SIGNAL) */
	PATH_SCHED_TRY_SWITCH, /* switched itself in __klp_sched_try_switch() from cond_resched() (6.4-6.15) */
	PATH_SCHEDULE,         /* switched itself from __schedule() (6.16+, via __klp_sched_try_switch() when not inlined) */
};

/* flags */
#define EVF_REPLACE 0x1    /* klp_patch.replace */
#define EVF_WANT_STACK 0x2 /* task_check: (pid, ret, func) differs from this task's last check */
#define EVF_BRACKET 0x4    /* callback: timed from the kernel's steps around it, not probed */
#define EVF_FAILED 0x8     /* callback: a pre-patch callback whose failure cancelled the enable */
/*
 * sweep_start, sweep_end: a successful check is sent only for a task that
 * failed one earlier in this transition; the others are counted in
 * sweep_end's aggregated.
 */
#define EVF_AGGREGATE 0x10

/* Callback kinds, in struct klp_callbacks order (version - 1 of EV_CALLBACKS and of a bracketed EV_CALLBACK) */
enum klptop_callback {
	CB_PRE_PATCH = 0,
	CB_POST_PATCH,
	CB_PRE_UNPATCH,
	CB_POST_UNPATCH,
	CB_MAX,
};

#define STATE_UNKNOWN (-2)

struct event {
	__u64 time; /* bpf_ktime_get_ns */
	__u64 duration;
	__u32 type;
	__u32 cpu;
	__u32 pid;
	__u32 tgid;
	__s32 ret;
	__s32 target;
	__s32 patch_state;
	__u32 pending;
	__u32 checked;
	__u8 flags;
	__u8 path;
	__u16 _pad;
	char comm[KLPTOP_COMM_LEN];
	char patch[KLPTOP_PATCH_LEN];
	char func[KLPTOP_FUNC_LEN];
	__u64 id;      /* EV_KLP_STATE: klp_state.id */
	__u32 version; /* EV_KLP_STATE: klp_state.version */
	__u32 aggregated; /* EV_SWEEP_END: successful checks counted, not sent */
};

/* One per task from the iter/task program, followed by stack_len u64 addresses. */
struct task_rec {
	__u32 pid;
	__u32 tgid;
	__s32 patch_state;
	__u32 stack_len;
	char comm[KLPTOP_COMM_LEN];
	/* On a CPU or runnable when read: its stack is no place it sleeps in. */
	__u32 running;
	__u32 pad;
};

/*
 * Function stacks, from the funcs iterator: records in the func_recs array
 * map, their number in a struct funcs_out written to the iterator's output.
 * Two walks fill it, joined in user space on the klp_func address: the
 * klp_ops list (stacks, newest first) and klp_patches (which patch and
 * object each klp_func belongs to: a klp_func has no pointer back).
 */
#define KLPTOP_MAX_FUNC_RECS 1024

enum klptop_func_rec_kind {
	FREC_STACK = 1, /* one entry of a klp_ops func_stack */
	FREC_PATCH,     /* one klp_func of a patch on klp_patches */
};

struct func_rec {
	__u64 func; /* klp_func address: the join key, never leaves klptop */
	__u64 old_func;
	__u64 new_func;
	__u32 kind;
	__u32 index; /* FREC_STACK: which klp_ops; FREC_PATCH: position on klp_patches, 0 = bottom */
	__u32 depth; /* FREC_STACK: position on func_stack, 0 = head */
	__u8 nop;
	__u8 patched;
	__u8 transition;
	__u8 obj_patched;
	char name[KLPTOP_FUNC_LEN];     /* klp_func.old_name */
	char patch[KLPTOP_PATCH_LEN];   /* FREC_PATCH */
	char object[KLPTOP_PATCH_LEN];  /* FREC_PATCH: klp_object.name, "" = vmlinux */
	char new_name[KLPTOP_FUNC_LEN]; /* FREC_STACK: new_func as the kernel names it, "func [module]" */
};

#define FUNCS_OVERFLOW 0x1 /* more records than KLPTOP_MAX_FUNC_RECS, or a list longer than its bound */
#define FUNCS_NO_HEADS 0x2 /* user space gave no list head addresses */
#define FUNCS_NO_BTF   0x4 /* the kernel's BTF lacks the livepatch types */
#define FUNCS_BUSY     0x8 /* klp_mutex was held during the read: a change may be half done */

struct funcs_out {
	__u32 n;
	__u32 flags;
};

/*
 * Shadow variables: counts per shadow id in the shadow_counts hash map,
 * read by user space (never one event per call: real patches allocate and
 * free them on hot paths).
 */
#define KLPTOP_MAX_SHADOW_IDS 1024

struct shadow_count {
	__u64 alloc_calls;        /* klp_shadow_alloc calls (returned) */
	__u64 get_or_alloc_calls; /* klp_shadow_get_or_alloc calls (returned) */
	__u64 free_calls;         /* klp_shadow_free calls */
	__u64 free_all_calls;     /* klp_shadow_free_all calls */
	__u64 allocs; /* shadow variables allocated: klp_shadow_alloc returning one, klp_shadow_get_or_alloc returning one where none existed at entry */
	__u64 frees;  /* shadow variables freed: those the two free calls found at entry */
};

/* One per klp_state of a patch on klp_patches, from the states iterator. */
struct state_rec {
	__u64 id;
	__u32 version;
	__u32 index; /* the patch's position on klp_patches, 0 = bottom */
	char patch[KLPTOP_PATCH_LEN];
};

#endif
