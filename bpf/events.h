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
};

enum klptop_path {
	PATH_NONE = 0,
	PATH_USER,
	PATH_IDLE,
	PATH_FORK,
	PATH_SCHED,
};

/* flags */
#define EVF_REPLACE 0x1    /* klp_patch.replace */
#define EVF_WANT_STACK 0x2 /* task_check: (pid, ret, func) differs from this task's last check */

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
};

/* One per task from the iter/task program, followed by stack_len u64 addresses. */
struct task_rec {
	__u32 pid;
	__u32 tgid;
	__s32 patch_state;
	__u32 stack_len;
	char comm[KLPTOP_COMM_LEN];
};

#endif
