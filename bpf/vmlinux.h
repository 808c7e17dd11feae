/* SPDX-License-Identifier: GPL-2.0 */
/*
 * A hand-written stand-in for a bpftool-generated vmlinux.h: only what
 * klptop reads. Build machines' BTF need not describe livepatch types (the
 * development kernel has no CONFIG_LIVEPATCH), so the structs are declared
 * here and relocated against the running kernel's BTF by CO-RE: offsets and
 * sizes below do not matter, field names and types do.
 */
#ifndef __KLPTOP_VMLINUX_H__
#define __KLPTOP_VMLINUX_H__
/* Tells bpf_tracing.h to use the kernel's pt_regs field names (di, not rdi). */
#define __VMLINUX_H__

typedef unsigned char __u8;
typedef signed char __s8;
typedef unsigned short __u16;
typedef short __s16;
typedef unsigned int __u32;
typedef int __s32;
typedef unsigned long long __u64;
typedef long long __s64;
typedef __u16 __be16;
typedef __u32 __be32;
typedef __u32 __wsum;
typedef _Bool bool;
#define true 1
#define false 0
typedef int pid_t;

enum bpf_map_type {
	BPF_MAP_TYPE_HASH = 1,
	BPF_MAP_TYPE_ARRAY = 2,
	BPF_MAP_TYPE_PERCPU_ARRAY = 6,
	BPF_MAP_TYPE_LRU_HASH = 9,
	BPF_MAP_TYPE_RINGBUF = 27,
};

enum {
	BPF_ANY = 0,
	BPF_NOEXIST = 1,
};

/* x86-64 struct pt_regs: the kprobe context, a fixed kernel ABI. */
struct pt_regs {
	unsigned long r15, r14, r13, r12, bp, bx, r11, r10, r9, r8;
	unsigned long ax, cx, dx, si, di, orig_ax, ip, cs, flags, sp, ss;
};

struct task_struct {
	unsigned int flags;
	pid_t pid;
	pid_t tgid;
	char comm[16];
	int patch_state; /* CONFIG_LIVEPATCH only: guard with bpf_core_field_exists */
	unsigned int __state; /* 5.14+; before, "long state" (task_struct___state) */
	int on_cpu; /* CONFIG_SMP only; u8 on later kernels */
	unsigned long nvcsw; /* context switches: a change means it ran */
	unsigned long nivcsw;
} __attribute__((preserve_access_index));

struct task_struct___state {
	long state;
} __attribute__((preserve_access_index));

enum module_state {
	MODULE_STATE_LIVE,
	MODULE_STATE_COMING,
	MODULE_STATE_GOING,
	MODULE_STATE_UNFORMED,
};

struct module {
	enum module_state state;
	char name[56];
	_Bool klp;
} __attribute__((preserve_access_index));

struct kobject {
	const char *name;
	struct kobject *parent;
} __attribute__((preserve_access_index));

struct list_head {
	struct list_head *next, *prev;
} __attribute__((preserve_access_index));

/* Only its owner word: nonzero while someone holds it. PREEMPT_RT has none. */
typedef struct {
	__s64 counter;
} atomic64_t;
typedef atomic64_t atomic_long_t;

struct mutex {
	atomic_long_t owner;
} __attribute__((preserve_access_index));

struct klp_state {
	unsigned long id;
	unsigned int version;
	void *data;
} __attribute__((preserve_access_index));

struct klp_patch {
	struct module *mod;
	struct klp_state *states;
	struct list_head list;
	struct list_head obj_list;
	struct kobject kobj;
	bool enabled;
	bool replace;
	bool forced;
} __attribute__((preserve_access_index));

/* Function pointers as void *: CO-RE only asks that both sides be pointers. */
struct klp_callbacks {
	void *pre_patch;
	void *post_patch;
	void *pre_unpatch;
	void *post_unpatch;
} __attribute__((preserve_access_index));

struct klp_object {
	const char *name;
	struct klp_callbacks callbacks;
	struct kobject kobj;
	struct module *mod;
	struct list_head func_list;
	struct list_head node;
	bool patched;
} __attribute__((preserve_access_index));

struct klp_func {
	const char *old_name;
	void *new_func;
	unsigned long old_sympos;
	void *old_func;
	struct list_head node;
	struct list_head stack_node;
	bool nop;
	bool patched;
	bool transition;
} __attribute__((preserve_access_index));

/* Private to kernel/livepatch/patch.h, but described by the kernel's BTF. */
struct klp_ops {
	struct list_head node;
	struct list_head func_stack;
} __attribute__((preserve_access_index));

struct hlist_node {
	struct hlist_node *next, **pprev;
} __attribute__((preserve_access_index));

/* Private to kernel/livepatch/shadow.c, but described by the kernel's BTF. */
struct klp_shadow {
	struct hlist_node node;
	void *obj;
	unsigned long id;
} __attribute__((preserve_access_index));

struct seq_file;

struct bpf_iter_meta {
	struct seq_file *seq;
	__u64 session_id;
	__u64 seq_num;
} __attribute__((preserve_access_index));

struct bpf_iter__task {
	struct bpf_iter_meta *meta;
	struct task_struct *task;
} __attribute__((preserve_access_index));

#endif
