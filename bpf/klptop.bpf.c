// SPDX-License-Identifier: GPL-2.0
/*
 * klptop's kernel side: kprobes on the livepatch transition path that emit
 * one struct event per interesting call into a ring buffer, and a task
 * iterator for the start-up snapshot.
 *
 * Every program is attached (or deleted before load) by internal/probes, which
 * resolves the symbols at run time; the SEC() names only give the program type.
 * klp_ftrace_handler and the callback lookups are deliberately absent: they run
 * on hot paths (every call of a patched function, kallsyms walks).
 *
 * Every entry probe's logic is one static __always_inline body with two
 * entry points: a kprobe program and an fentry twin of the same name with an
 * "fentry_" prefix. User space loads one of the two per probe (fentry where
 * the function has BTF and the kernel accepts it). Return probes are
 * kretprobes only: an fexit trampoline keeps its frame on the stack of every
 * task inside the function, and the transition's reliable stack check
 * rejects such a stack (internal/probes/fentry.go).
 */
#include "vmlinux.h"
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_core_read.h>
#include <bpf/bpf_tracing.h>
#include "events.h"

char LICENSE[] SEC("license") = "GPL";

/* Keep the record types in the object's BTF, where a test checks the Go decoder against them. */
const struct event *unused_event __attribute__((unused));
const struct task_rec *unused_task_rec __attribute__((unused));
const struct func_rec *unused_func_rec __attribute__((unused));
const struct funcs_out *unused_funcs_out __attribute__((unused));
const struct shadow_count *unused_shadow_count __attribute__((unused));
const struct state_rec *unused_state_rec __attribute__((unused));

#define EADDRINUSE 98
#define PF_IDLE 0x00000002
#define PF_KTHREAD 0x00200000
#define TASK_INTERRUPTIBLE 0x0001

/* uapi enum values (include/uapi/linux/bpf.h); vmlinux.h here is trimmed. */
#define BPF_RB_NO_WAKEUP 1
#define BPF_RB_FORCE_WAKEUP 2
#define BPF_RB_AVAIL_DATA 0
#define BPF_RB_RING_SIZE 1

struct {
	__uint(type, BPF_MAP_TYPE_RINGBUF);
	__uint(max_entries, 2 << 20);
} events SEC(".maps");

/*
 * Events dropped because the ring buffer was full. A global, which user
 * space reads through its mmap: a map lookup syscall raises bpf_prog_active
 * on its CPU, and a kprobe program that runs there meanwhile (the reader
 * preempted in the syscall, another task in __schedule) is skipped.
 */
__u64 lost_events;

/* Kernel pointers as integers: bpf2go generates no Go type for pointers. */
struct check_args {
	__u64 task;
	__u64 oldname;
};

/*
 * Entry -> return hand-over. LRU so that an entry whose return probe never
 * fires (return probe not attached, kretprobe instances exhausted) cannot
 * fill the map for good.
 */
struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 4096);
	__type(key, __u64); /* pid_tgid of the sweeping task */
	__type(value, struct check_args);
} check_stash SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 4096);
	__type(key, __u64); /* current task_struct: idle tasks all have pid 0 */
	__type(value, __s32);
} update_stash SEC(".maps");

struct last_check {
	__u32 pid;
	__s32 ret;
	__u64 func; /* klp_func.old_name: one pointer per patched function */
	__u64 gen;  /* transition_gen: a new transition shows every stack again */
};

/* Per checked task, the outcome of its last failed check. */
struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 8192);
	__type(key, __u64); /* task_struct address */
	__type(value, struct last_check);
} last_checks SEC(".maps");

/*
 * The transition in progress. klp_mutex serializes the writers; readers on
 * other CPUs may see a torn name only while a new transition is initialised.
 * User space seeds them when it starts in the middle of a transition.
 */
char cur_patch[KLPTOP_PATCH_LEN];
volatile __s32 cur_target = -1;
/* Bumped by every init and reversal. */
__u64 transition_gen;

/* Set by user space when klp_try_complete_transition is probed: only then is sweep_task known. */
volatile const bool sweep_probed = false;

/*
 * Set by user space on 6.16+, where klp_sched_try_switch() is called from
 * __schedule() (on TASK_FREEZABLE sleeps) instead of from cond_resched().
 */
volatile const bool sched_in_schedule = false;

/* Tasks inside __klp_sched_try_switch(): entry sets, return clears. */
struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 4096);
	__type(key, __u64); /* current task_struct */
	__type(value, __u8);
} in_sched_try SEC(".maps");

/* The sweep in progress (klp_try_complete_transition runs under klp_mutex). */
__u64 sweep_task; /* task_struct running it */
__u64 sweep_start_ns;
__u32 sweep_pending;
__u32 sweep_checked;
__u32 sweep_aggregated;

/*
 * The reader's wake-ups are held from a transition's start (init, reverse)
 * and from a sweep's start until the sweep ends: a reader woken there would
 * run while the sweep checks it, fail the check (-EBUSY) and cost the
 * transition a sweep, about a second. The sweep's end wakes it once. A hold
 * not ended within HOLD_MAX_NS (its end missed) no longer holds, and a ring
 * half full wakes the reader anyway: a loss would cost more.
 */
#define HOLD_MAX_NS (3ULL * 1000 * 1000 * 1000)
__u64 hold_since_ns;
__u32 held; /* records submitted unannounced since the last forced wake-up */

static __always_inline void hold_wakeups(void)
{
	hold_since_ns = bpf_ktime_get_ns();
}

static __always_inline void submit(void *e)
{
	__u64 since = hold_since_ns;
	if (since && bpf_ktime_get_ns() - since < HOLD_MAX_NS &&
	    bpf_ringbuf_query(&events, BPF_RB_AVAIL_DATA) < bpf_ringbuf_query(&events, BPF_RB_RING_SIZE) / 2) {
		held = 1;
		bpf_ringbuf_submit(e, BPF_RB_NO_WAKEUP);
		return;
	}
	/* The default wakes only a reader that has read everything before. */
	if (held) {
		held = 0;
		bpf_ringbuf_submit(e, BPF_RB_FORCE_WAKEUP);
		return;
	}
	bpf_ringbuf_submit(e, 0);
}

/* Ends the hold with e (which may be 0: the ring is full). */
static __always_inline void release_wakeups(void *e)
{
	hold_since_ns = 0;
	held = 0;
	if (e)
		bpf_ringbuf_submit(e, BPF_RB_FORCE_WAKEUP);
}

static __always_inline int task_patch_state(struct task_struct *t)
{
	if (!bpf_core_field_exists(t->patch_state))
		return STATE_UNKNOWN;
	return BPF_CORE_READ(t, patch_state);
}

/*
 * On a CPU (the kernel's klp_check_and_switch_task says -EBUSY: its saved
 * stack is stale) or runnable (TASK_RUNNING: about to move off any frame).
 */
static __always_inline __u32 task_running(struct task_struct *t)
{
	/* int until 6.x, u8 since: read at the kernel's size. */
	if (bpf_core_field_exists(t->on_cpu) && BPF_CORE_READ_BITFIELD_PROBED(t, on_cpu))
		return 1;
	if (bpf_core_field_exists(t->__state))
		return BPF_CORE_READ(t, __state) == 0;
	struct task_struct___state *o = (void *)t;
	if (bpf_core_field_exists(o->state))
		return BPF_CORE_READ(o, state) == 0;
	return 0;
}

static __always_inline struct event *reserve(__u32 type)
{
	struct event *e = bpf_ringbuf_reserve(&events, sizeof(*e), 0);
	if (!e) {
		__sync_fetch_and_add(&lost_events, 1);
		return 0;
	}
	__builtin_memset(e, 0, sizeof(*e));
	e->time = bpf_ktime_get_ns();
	e->cpu = bpf_get_smp_processor_id();
	e->type = type;
	e->target = cur_target;
	e->patch_state = STATE_UNKNOWN;
	__builtin_memcpy(e->patch, cur_patch, sizeof(e->patch));
	return e;
}

static __always_inline void fill_task(struct event *e, struct task_struct *t)
{
	e->pid = BPF_CORE_READ(t, pid);
	e->tgid = BPF_CORE_READ(t, tgid);
	BPF_CORE_READ_STR_INTO(&e->comm, t, comm);
}

static __always_inline int emit_simple(__u32 type)
{
	struct event *e = reserve(type);
	if (e)
		submit(e);
	return 0;
}

/* Bound of a patch's klp_state array (klp_for_each_state stops at id 0). */
#define MAX_STATES 16

static __always_inline struct klp_state *state_at(struct klp_state *states, __u32 i)
{
	return (void *)states + i * bpf_core_type_size(struct klp_state);
}

static __always_inline int enable_patch(struct klp_patch *patch)
{
	struct event *e = reserve(EV_PATCH_ENABLE);
	if (!e)
		return 0;
	__builtin_memset(e->patch, 0, sizeof(e->patch));
	BPF_CORE_READ_STR_INTO(&e->patch, patch, mod, name);
	if (BPF_CORE_READ(patch, replace))
		e->flags |= EVF_REPLACE;
	e->target = 1;
	submit(e);

	/* patch->states, the array klp_for_each_state walks: one event each. */
	if (!bpf_core_field_exists(patch->states))
		return 0;
	struct klp_state *states = BPF_CORE_READ(patch, states);
	if (!states)
		return 0;
	for (__u32 i = 0; i < MAX_STATES; i++) {
		struct klp_state *st = state_at(states, i);
		unsigned long id = BPF_CORE_READ(st, id);
		if (!id)
			break;
		struct event *se = reserve(EV_KLP_STATE);
		if (!se)
			return 0;
		__builtin_memset(se->patch, 0, sizeof(se->patch));
		BPF_CORE_READ_STR_INTO(&se->patch, patch, mod, name);
		se->target = 0;
		se->id = id;
		se->version = BPF_CORE_READ(st, version);
		/*
		 * Announced by the enable's next event (transition_init, or
		 * module_going if the enable fails): submit() in this loop
		 * takes 6.1's verifier past its 1M instructions.
		 */
		held = 1;
		bpf_ringbuf_submit(se, BPF_RB_NO_WAKEUP);
	}
	return 0;
}

SEC("kprobe/klp_enable_patch")
int BPF_KPROBE(klp_enable_patch, struct klp_patch *patch)
{
	return enable_patch(patch);
}

SEC("fentry/klp_enable_patch")
int BPF_PROG(fentry_klp_enable_patch, struct klp_patch *patch)
{
	return enable_patch(patch);
}

static __always_inline int init_transition(struct klp_patch *patch, int state)
{
	BPF_CORE_READ_STR_INTO(&cur_patch, patch, mod, name);
	cur_target = state;
	transition_gen++;
	hold_wakeups();
	struct event *e = reserve(EV_TRANSITION_INIT);
	if (!e)
		return 0;
	if (BPF_CORE_READ(patch, replace))
		e->flags |= EVF_REPLACE;
	submit(e);
	return 0;
}

SEC("kprobe/klp_init_transition")
int BPF_KPROBE(klp_init_transition, struct klp_patch *patch, int state)
{
	return init_transition(patch, state);
}

SEC("fentry/klp_init_transition")
int BPF_PROG(fentry_klp_init_transition, struct klp_patch *patch, int state)
{
	return init_transition(patch, state);
}

SEC("kprobe/klp_start_transition")
int BPF_KPROBE(klp_start_transition)
{
	return emit_simple(EV_TRANSITION_START);
}

SEC("fentry/klp_start_transition")
int BPF_PROG(fentry_klp_start_transition)
{
	return emit_simple(EV_TRANSITION_START);
}

/*
 * On return: the kernel says "complete" at the end of it, after an RCU sync
 * and, for an atomic replace, unpatching the replaced patches, which under
 * emulation takes seconds.
 */
SEC("kretprobe/klp_complete_transition")
int BPF_KRETPROBE(klp_complete_transition)
{
	return emit_simple(EV_TRANSITION_COMPLETE);
}

static __always_inline int reverse_transition(void)
{
	/* The kernel flips klp_target_state inside; report the new target. */
	if (cur_target == 0 || cur_target == 1)
		cur_target = !cur_target;
	transition_gen++;
	hold_wakeups();
	return emit_simple(EV_TRANSITION_REVERSE);
}

SEC("kprobe/klp_reverse_transition")
int BPF_KPROBE(klp_reverse_transition)
{
	return reverse_transition();
}

SEC("fentry/klp_reverse_transition")
int BPF_PROG(fentry_klp_reverse_transition)
{
	return reverse_transition();
}

static __always_inline int cancel_transition(void)
{
	release_wakeups(reserve(EV_TRANSITION_CANCEL));
	return 0;
}

SEC("kprobe/klp_cancel_transition")
int BPF_KPROBE(klp_cancel_transition)
{
	return cancel_transition();
}

SEC("fentry/klp_cancel_transition")
int BPF_PROG(fentry_klp_cancel_transition)
{
	return cancel_transition();
}

SEC("kprobe/klp_force_transition")
int BPF_KPROBE(klp_force_transition)
{
	return emit_simple(EV_TRANSITION_FORCE);
}

SEC("fentry/klp_force_transition")
int BPF_PROG(fentry_klp_force_transition)
{
	return emit_simple(EV_TRANSITION_FORCE);
}

static __always_inline int sweep_start(void)
{
	sweep_task = bpf_get_current_task();
	sweep_start_ns = bpf_ktime_get_ns();
	sweep_pending = 0;
	sweep_checked = 0;
	sweep_aggregated = 0;
	hold_wakeups();
	struct event *e = reserve(EV_SWEEP_START);
	if (!e)
		return 0;
	e->flags |= EVF_AGGREGATE;
	submit(e);
	return 0;
}

SEC("kprobe/klp_try_complete_transition")
int BPF_KPROBE(klp_try_complete_transition)
{
	return sweep_start();
}

SEC("fentry/klp_try_complete_transition")
int BPF_PROG(fentry_klp_try_complete_transition)
{
	return sweep_start();
}

static __always_inline int sweep_end(void)
{
	struct event *e = reserve(EV_SWEEP_END);
	if (!e) {
		release_wakeups(0);
		return 0;
	}
	/* Started in the middle of a sweep: its start was not seen. */
	if (sweep_start_ns)
		e->duration = e->time - sweep_start_ns;
	e->pending = sweep_pending;
	e->checked = sweep_checked;
	e->aggregated = sweep_aggregated;
	e->flags |= EVF_AGGREGATE;
	sweep_start_ns = 0;
	sweep_task = 0;
	release_wakeups(e);
	return 0;
}

SEC("kretprobe/klp_try_complete_transition")
int BPF_KRETPROBE(klp_try_complete_transition_ret)
{
	return sweep_end();
}

static __always_inline int check_entry(struct task_struct *task, void *arg)
{
	__u64 id = bpf_get_current_pid_tgid();
	struct check_args a = { .task = (__u64)task, .oldname = (__u64)arg };
	bpf_map_update_elem(&check_stash, &id, &a, BPF_ANY);
	return 0;
}

SEC("kprobe/klp_check_and_switch_task")
int BPF_KPROBE(klp_check_and_switch_task, struct task_struct *task, void *arg)
{
	return check_entry(task, arg);
}

SEC("fentry/klp_check_and_switch_task")
int BPF_PROG(fentry_klp_check_and_switch_task, struct task_struct *task, void *arg)
{
	return check_entry(task, arg);
}

static __always_inline int check_return(long rc)
{
	__u64 id = bpf_get_current_pid_tgid();
	struct check_args *ap = bpf_map_lookup_elem(&check_stash, &id);
	if (!ap)
		return 0;
	struct task_struct *task = (struct task_struct *)ap->task;
	const char **oldname = (const char **)ap->oldname;
	bpf_map_delete_elem(&check_stash, &id);

	/* int in %eax: the upper half of %rax is not defined. */
	__s32 ret = (__s32)rc;

	/*
	 * Not from a sweep: a task checking itself from cond_resched() or
	 * __schedule() (__klp_sched_try_switch, 6.4+). That retries on every
	 * reschedule, so only a success is news.
	 */
	if (sweep_probed && bpf_get_current_task() != sweep_task) {
		if (ret != 0)
			return 0;
		struct event *e = reserve(EV_TASK_SWITCH);
		if (!e)
			return 0;
		fill_task(e, task);
		e->patch_state = task_patch_state(task);
		__u64 cur = bpf_get_current_task();
		if (bpf_map_lookup_elem(&in_sched_try, &cur))
			e->path = sched_in_schedule ? PATH_SCHEDULE : PATH_SCHED_TRY_SWITCH;
		else
			e->path = sched_in_schedule ? PATH_SCHEDULE : PATH_SCHED;
		submit(e);
		return 0;
	}

	sweep_checked++;
	if (ret)
		sweep_pending++;

	__u64 key = (__u64)task;
	__u32 pid = BPF_CORE_READ(task, pid);
	__u64 gen = transition_gen;
	struct last_check *lc = bpf_map_lookup_elem(&last_checks, &key);
	bool blocked = lc && lc->pid == pid && lc->gen == gen;

	/*
	 * A first sweep switches nearly every task: one record each would
	 * need a ring as large as the thread list. Only a task that blocked
	 * the transition has its switch told; sweep_end counts the others,
	 * and user space switches every pending task the sweep did not fail.
	 */
	if (ret == 0 && !blocked && sweep_probed) {
		sweep_aggregated++;
		if (lc)
			bpf_map_delete_elem(&last_checks, &key);
		return 0;
	}

	const char *fn = 0;
	if (ret == -EADDRINUSE)
		bpf_probe_read_kernel(&fn, sizeof(fn), oldname);

	struct event *e = reserve(EV_TASK_CHECK);
	if (!e)
		return 0;
	fill_task(e, task);
	e->ret = ret;
	e->patch_state = task_patch_state(task);
	if (fn)
		bpf_probe_read_kernel_str(&e->func, sizeof(e->func), fn);

	/*
	 * A stuck task fails the same way on every ~1 s retry: ask for its
	 * stack only when the outcome changes. bpf_get_task_stack() cannot be
	 * used here: it wants a BTF-typed task, which a kprobe does not have.
	 */
	if (ret == 0) {
		bpf_map_delete_elem(&last_checks, &key);
	} else if (!blocked || lc->ret != ret || lc->func != (__u64)fn) {
		struct last_check n = { .pid = pid, .ret = ret, .func = (__u64)fn, .gen = gen };
		bpf_map_update_elem(&last_checks, &key, &n, BPF_ANY);
		e->flags |= EVF_WANT_STACK;
	}
	submit(e);
	return 0;
}

SEC("kretprobe/klp_check_and_switch_task")
int BPF_KRETPROBE(klp_check_and_switch_task_ret, long rc)
{
	return check_return(rc);
}

/*
 * __klp_sched_try_switch(): a task checking itself from cond_resched()
 * (6.4-6.15) or __schedule() (6.16+). Only while its patch is pending does
 * it call klp_try_switch_task(current); the mark tells that check from a
 * sweep's.
 */
static __always_inline int sched_try_entry(void)
{
	__u64 cur = bpf_get_current_task();
	__u8 one = 1;
	bpf_map_update_elem(&in_sched_try, &cur, &one, BPF_ANY);
	return 0;
}

static __always_inline int sched_try_return(void)
{
	__u64 cur = bpf_get_current_task();
	bpf_map_delete_elem(&in_sched_try, &cur);
	return 0;
}

SEC("kprobe/__klp_sched_try_switch")
int BPF_KPROBE(klp_sched_try_switch)
{
	return sched_try_entry();
}

SEC("fentry/__klp_sched_try_switch")
int BPF_PROG(fentry_klp_sched_try_switch)
{
	return sched_try_entry();
}

SEC("kretprobe/__klp_sched_try_switch")
int BPF_KRETPROBE(klp_sched_try_switch_ret)
{
	return sched_try_return();
}

/*
 * klp_send_signals() is inlined into klp_try_complete_transition() on the
 * kernels klptop targets, so the signals are seen where they land: both of
 * its branches call wake_up_state(task, TASK_INTERRUPTIBLE), directly for a
 * kthread, through set_notify_signal() for a user task. wake_up_state is
 * called all over the kernel: anything but the sweeping task returns at
 * once, and nothing else in a sweep wakes with exactly that state.
 * set_notify_signal() skips the wake-up when TIF_NOTIFY_SIGNAL is still set
 * from a previous round: such a signal is not seen.
 */
static __always_inline int signal_sent(struct task_struct *task, unsigned int state)
{
	if (!sweep_task || bpf_get_current_task() != sweep_task)
		return 0;
	if (state != TASK_INTERRUPTIBLE)
		return 0;
	struct event *e = reserve(EV_SIGNAL);
	if (!e)
		return 0;
	fill_task(e, task);
	e->patch_state = task_patch_state(task);
	e->path = (BPF_CORE_READ(task, flags) & PF_KTHREAD) ? PATH_WAKE : PATH_SIGNAL;
	submit(e);
	return 0;
}

SEC("kprobe/wake_up_state")
int BPF_KPROBE(klp_signal, struct task_struct *task, unsigned int state)
{
	return signal_sent(task, state);
}

SEC("fentry/wake_up_state")
int BPF_PROG(fentry_klp_signal, struct task_struct *task, unsigned int state)
{
	return signal_sent(task, state);
}

static __always_inline int update_entry(struct task_struct *task)
{
	if (!bpf_core_field_exists(task->patch_state))
		return 0;
	__u64 key = bpf_get_current_task();
	__s32 st = BPF_CORE_READ(task, patch_state);
	bpf_map_update_elem(&update_stash, &key, &st, BPF_ANY);
	return 0;
}

SEC("kprobe/klp_update_patch_state")
int BPF_KPROBE(klp_update_patch_state, struct task_struct *task)
{
	return update_entry(task);
}

SEC("fentry/klp_update_patch_state")
int BPF_PROG(fentry_klp_update_patch_state, struct task_struct *task)
{
	return update_entry(task);
}

/* Every caller passes current: the return probe finds the task again by it. */
static __always_inline int update_return(void)
{
	__u64 key = bpf_get_current_task();
	__s32 *before = bpf_map_lookup_elem(&update_stash, &key);
	if (!before)
		return 0;
	__s32 was = *before;
	bpf_map_delete_elem(&update_stash, &key);

	struct task_struct *task = (struct task_struct *)key;
	int now = task_patch_state(task);
	if (now == was)
		return 0;
	struct event *e = reserve(EV_TASK_SWITCH);
	if (!e)
		return 0;
	fill_task(e, task);
	e->patch_state = now;
	e->path = (e->pid == 0 || (BPF_CORE_READ(task, flags) & PF_IDLE)) ? PATH_IDLE : PATH_USER;
	submit(e);
	return 0;
}

SEC("kretprobe/klp_update_patch_state")
int BPF_KRETPROBE(klp_update_patch_state_ret)
{
	return update_return();
}

/*
 * Called on every fork, transition or not: report only forks during a
 * transition, where the child inherits a state other than idle.
 */
static __always_inline int copy_process(struct task_struct *child)
{
	struct task_struct *parent = (struct task_struct *)bpf_get_current_task();
	int st = task_patch_state(parent);
	if (st < 0)
		return 0;
	struct event *e = reserve(EV_TASK_SWITCH);
	if (!e)
		return 0;
	e->pid = BPF_CORE_READ(child, pid);
	e->tgid = BPF_CORE_READ(child, tgid);
	/* The child's comm is set by exec later; now it is the parent's. */
	BPF_CORE_READ_STR_INTO(&e->comm, parent, comm);
	e->patch_state = st;
	e->path = PATH_FORK;
	submit(e);
	return 0;
}

SEC("kprobe/klp_copy_process")
int BPF_KPROBE(klp_copy_process, struct task_struct *child)
{
	return copy_process(child);
}

SEC("fentry/klp_copy_process")
int BPF_PROG(fentry_klp_copy_process, struct task_struct *child)
{
	return copy_process(child);
}

/*
 * release_task(): a task leaves the thread list (__unhash_process) under
 * tasklist_lock, which every sweep holds for reading. Its return comes
 * after any check of the task, so the event orders after every check in
 * the ring. Only during a transition (a patch_state other than idle), and
 * read at entry: the task_struct may be freed by the return.
 */
struct exit_rec {
	__u32 pid;
	__u32 tgid;
	__s32 patch_state;
	char comm[KLPTOP_COMM_LEN];
};

struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 4096);
	__type(key, __u64); /* current task_struct: the releasing task */
	__type(value, struct exit_rec);
} release_stash SEC(".maps");

static __always_inline int release_entry(struct task_struct *p)
{
	int st = task_patch_state(p);
	if (st < 0)
		return 0;
	struct exit_rec r = { .patch_state = st };
	r.pid = BPF_CORE_READ(p, pid);
	r.tgid = BPF_CORE_READ(p, tgid);
	BPF_CORE_READ_STR_INTO(&r.comm, p, comm);
	__u64 key = bpf_get_current_task();
	bpf_map_update_elem(&release_stash, &key, &r, BPF_ANY);
	return 0;
}

SEC("kprobe/release_task")
int BPF_KPROBE(task_release, struct task_struct *p)
{
	return release_entry(p);
}

SEC("fentry/release_task")
int BPF_PROG(fentry_task_release, struct task_struct *p)
{
	return release_entry(p);
}

SEC("kretprobe/release_task")
int BPF_KRETPROBE(task_release_ret)
{
	__u64 key = bpf_get_current_task();
	struct exit_rec *r = bpf_map_lookup_elem(&release_stash, &key);
	if (!r)
		return 0;
	struct event *e = reserve(EV_TASK_EXIT);
	if (e) {
		e->pid = r->pid;
		e->tgid = r->tgid;
		e->patch_state = r->patch_state;
		__builtin_memcpy(e->comm, r->comm, sizeof(e->comm));
		submit(e);
	}
	bpf_map_delete_elem(&release_stash, &key);
	return 0;
}

/* Scratch for the iterator's record: too big for the 512-byte BPF stack. */
struct task_out {
	struct task_rec rec;
	__u64 stack[KLPTOP_MAX_STACK];
};

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct task_out);
} iter_scratch SEC(".maps");

SEC("iter/task")
int snapshot_tasks(struct bpf_iter__task *ctx)
{
	struct seq_file *seq = ctx->meta->seq;
	struct task_struct *task = ctx->task;
	__u32 zero = 0;
	if (!task)
		return 0;
	struct task_out *o = bpf_map_lookup_elem(&iter_scratch, &zero);
	if (!o)
		return 0;
	__builtin_memset(&o->rec, 0, sizeof(o->rec));
	o->rec.pid = BPF_CORE_READ(task, pid);
	o->rec.tgid = BPF_CORE_READ(task, tgid);
	BPF_CORE_READ_STR_INTO(&o->rec.comm, task, comm);
	o->rec.patch_state = task_patch_state(task);
	o->rec.running = task_running(task);
	/* Stacks only matter while a transition waits for tasks. */
	long n = 0;
	if (o->rec.patch_state >= 0) {
		/*
		 * Unlike the kernel's check, nothing here keeps the task off a
		 * CPU while its stack is walked: a read it ran during is no
		 * place where it sleeps, and counts as running.
		 */
		__u64 csw = BPF_CORE_READ(task, nvcsw) + BPF_CORE_READ(task, nivcsw);
		n = bpf_get_task_stack(task, o->stack, sizeof(o->stack), 0);
		if (task_running(task) || csw != BPF_CORE_READ(task, nvcsw) + BPF_CORE_READ(task, nivcsw))
			o->rec.running = 1;
	}
	if (n < 0 || n > sizeof(o->stack))
		n = 0;
	o->rec.stack_len = n / sizeof(__u64);
	bpf_seq_write(seq, &o->rec, sizeof(o->rec));
	if (n > 0)
		bpf_seq_write(seq, o->stack, n);
	return 0;
}

/*
 * Function stacks changed, or may have: user space re-reads them when it sees
 * this. Return probes, because the functions change the lists inside
 * (klp_complete_transition unpatches and clears the transition flags).
 */
#define FUNCS_CHANGED(fn)                                 \
	SEC("kretprobe/" #fn)                             \
	int BPF_KRETPROBE(funcs_changed_##fn)             \
	{                                                 \
		return emit_simple(EV_FUNCS_CHANGED);     \
	}

FUNCS_CHANGED(klp_start_transition)
FUNCS_CHANGED(klp_complete_transition)
FUNCS_CHANGED(klp_reverse_transition)
FUNCS_CHANGED(klp_cancel_transition)
FUNCS_CHANGED(klp_patch_object)
FUNCS_CHANGED(klp_unpatch_objects)
FUNCS_CHANGED(klp_discard_nops)
FUNCS_CHANGED(klp_module_coming)
FUNCS_CHANGED(klp_module_going)

/*
 * Addresses of the list heads, from /proc/kallsyms: neither has BTF (6.1
 * describes no global variables), klp_ops is static.
 */
volatile const __u64 klp_patches_addr = 0;
volatile const __u64 klp_ops_addr = 0;
/* Optional (0: not checked): every change to the lists is made under it. */
volatile const __u64 klp_mutex_addr = 0;

/* Bounds of the walks; bpf_loop keeps the verifier's work independent of them. */
#define MAX_PATCHES 128
#define MAX_OBJS 128
#define MAX_FUNCS 1024
#define MAX_OPS 4096
#define MAX_DEPTH 128

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, KLPTOP_MAX_FUNC_RECS);
	__type(key, __u32);
	__type(value, struct func_rec);
} func_recs SEC(".maps");

struct walk {
	__u64 head; /* list head of the inner list being walked */
	__u64 pos;  /* its current node */
	__u64 patch;
	__u64 obj;
	__u32 index;
	__u32 n;
	__u32 flags;
	__u32 done; /* the inner walk reached its head */
};

static __always_inline __u64 next_node(__u64 pos)
{
	struct list_head *next = 0;
	bpf_probe_read_kernel(&next, sizeof(next), (void *)pos + bpf_core_field_offset(struct list_head, next));
	return (__u64)next;
}

static __always_inline struct func_rec *new_rec(struct walk *w, __u32 kind, struct klp_func *f)
{
	__u32 i = w->n;
	if (i >= KLPTOP_MAX_FUNC_RECS) {
		w->flags |= FUNCS_OVERFLOW;
		return 0;
	}
	struct func_rec *r = bpf_map_lookup_elem(&func_recs, &i);
	if (!r)
		return 0;
	__builtin_memset(r, 0, sizeof(*r));
	r->kind = kind;
	r->func = (__u64)f;
	r->old_func = (__u64)BPF_CORE_READ(f, old_func);
	r->new_func = (__u64)BPF_CORE_READ(f, new_func);
	r->nop = BPF_CORE_READ(f, nop);
	r->patched = BPF_CORE_READ(f, patched);
	r->transition = BPF_CORE_READ(f, transition);
	bpf_probe_read_kernel_str(r->name, sizeof(r->name), BPF_CORE_READ(f, old_name));
	w->n = i + 1;
	return r;
}

static const char new_func_fmt[] = "%ps";

static long stack_step(__u32 i, struct walk *w)
{
	__u64 next = next_node(w->pos);
	if (!next || next == w->head) {
		w->done = 1;
		return 1;
	}
	w->pos = next;
	struct klp_func *f = (void *)next - bpf_core_field_offset(struct klp_func, stack_node);
	struct func_rec *r = new_rec(w, FREC_STACK, f);
	if (!r)
		return 1;
	r->index = w->index;
	r->depth = i;
	/*
	 * Named here: naming it in user space meant rereading /proc/kallsyms
	 * for every new livepatch module, seconds of CPU each under emulation.
	 */
	if (r->new_func && !r->nop) {
		__u64 args[1] = { r->new_func };
		bpf_snprintf(r->new_name, sizeof(r->new_name), new_func_fmt, args, sizeof(args));
	}
	return 0;
}

static long ops_step(__u32 i, struct walk *w)
{
	__u64 next = next_node(w->pos);
	if (!next || next == klp_ops_addr)
		return 1;
	struct klp_ops *ops = (void *)next - bpf_core_field_offset(struct klp_ops, node);
	struct walk in = {
		.head = (__u64)ops + bpf_core_field_offset(struct klp_ops, func_stack),
		.index = i,
		.n = w->n,
	};
	in.pos = in.head;
	bpf_loop(MAX_DEPTH, stack_step, &in, 0);
	w->n = in.n;
	w->flags |= in.flags;
	if (!in.done)
		w->flags |= FUNCS_OVERFLOW;
	w->pos = next;
	return 0;
}

static long func_step(__u32 i, struct walk *w)
{
	__u64 next = next_node(w->pos);
	if (!next || next == w->head) {
		w->done = 1;
		return 1;
	}
	w->pos = next;
	struct klp_func *f = (void *)next - bpf_core_field_offset(struct klp_func, node);
	struct func_rec *r = new_rec(w, FREC_PATCH, f);
	if (!r)
		return 1;
	struct klp_patch *p = (void *)w->patch;
	struct klp_object *o = (void *)w->obj;
	r->index = w->index;
	BPF_CORE_READ_STR_INTO(&r->patch, p, mod, name);
	const char *on = BPF_CORE_READ(o, name);
	if (on)
		bpf_probe_read_kernel_str(r->object, sizeof(r->object), on);
	r->obj_patched = BPF_CORE_READ(o, patched);
	return 0;
}

static long obj_step(__u32 i, struct walk *w)
{
	__u64 next = next_node(w->pos);
	if (!next || next == w->head) {
		w->done = 1;
		return 1;
	}
	w->pos = next;
	struct klp_object *o = (void *)next - bpf_core_field_offset(struct klp_object, node);
	struct walk in = {
		.head = (__u64)o + bpf_core_field_offset(struct klp_object, func_list),
		.patch = w->patch,
		.obj = (__u64)o,
		.index = w->index,
		.n = w->n,
	};
	in.pos = in.head;
	bpf_loop(MAX_FUNCS, func_step, &in, 0);
	w->n = in.n;
	w->flags |= in.flags;
	if (!in.done)
		w->flags |= FUNCS_OVERFLOW;
	return 0;
}

static long patch_step(__u32 i, struct walk *w)
{
	__u64 next = next_node(w->pos);
	if (!next || next == klp_patches_addr)
		return 1;
	w->pos = next;
	struct klp_patch *p = (void *)next - bpf_core_field_offset(struct klp_patch, list);
	struct walk in = {
		.head = (__u64)p + bpf_core_field_offset(struct klp_patch, obj_list),
		.patch = (__u64)p,
		.index = i,
		.n = w->n,
	};
	in.pos = in.head;
	bpf_loop(MAX_OBJS, obj_step, &in, 0);
	w->n = in.n;
	w->flags |= in.flags;
	if (!in.done)
		w->flags |= FUNCS_OVERFLOW;
	return 0;
}

/* klp_mutex is held: a change to the lists may be half done. */
static __always_inline bool klp_mutex_held(void)
{
	if (!klp_mutex_addr || !bpf_core_field_exists(struct mutex, owner))
		return false;
	__u64 owner = 0;
	bpf_probe_read_kernel(&owner, sizeof(owner), (void *)klp_mutex_addr + bpf_core_field_offset(struct mutex, owner));
	return (owner & ~0x7ULL) != 0; /* the low bits are flags (waiters, handoff), set on a free mutex too */
}

/*
 * Reads every function stack once. An iterator only to get a program that
 * user space can run on demand with bpf_probe_read_kernel: it acts on the
 * first task and ignores the rest. Runs without klp_mutex, so a list may
 * change under it; the reads are fault-safe and every walk is bounded, so the
 * worst case is one inconsistent picture. A change is made under klp_mutex in
 * several steps (a klp_func is on its stack before it is marked patched; an
 * atomic replace unpatches the replaced patches one by one): FUNCS_BUSY says
 * the mutex was held before or after the walk, and user space reads again.
 */
SEC("iter/task")
int snapshot_funcs(struct bpf_iter__task *ctx)
{
	struct funcs_out out = {};
	if (ctx->meta->seq_num != 0 || !ctx->task)
		return 0;
	if (!bpf_core_type_exists(struct klp_ops) || !bpf_core_type_exists(struct klp_func)) {
		out.flags = FUNCS_NO_BTF;
	} else if (!klp_ops_addr || !klp_patches_addr) {
		out.flags = FUNCS_NO_HEADS;
	} else {
		bool busy = klp_mutex_held();
		struct walk w = { .pos = klp_ops_addr };
		bpf_loop(MAX_OPS, ops_step, &w, 0);
		struct walk pw = { .pos = klp_patches_addr, .n = w.n, .flags = w.flags };
		bpf_loop(MAX_PATCHES, patch_step, &pw, 0);
		out.n = pw.n;
		out.flags = pw.flags;
		if (busy || klp_mutex_held())
			out.flags |= FUNCS_BUSY;
	}
	bpf_seq_write(ctx->meta->seq, &out, sizeof(out));
	return 0;
}

/*
 * The klp_state array of every patch on klp_patches, for the start-up
 * snapshot (klp_enable_patch shows those of patches loaded later). Same
 * contract as snapshot_funcs: records in state_recs, a struct funcs_out.
 */
#define KLPTOP_MAX_STATE_RECS 512

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, KLPTOP_MAX_STATE_RECS);
	__type(key, __u32);
	__type(value, struct state_rec);
} state_recs SEC(".maps");

static long state_patch_step(__u32 i, struct walk *w)
{
	__u64 next = next_node(w->pos);
	if (!next || next == klp_patches_addr)
		return 1;
	w->pos = next;
	struct klp_patch *p = (void *)next - bpf_core_field_offset(struct klp_patch, list);
	struct klp_state *states = BPF_CORE_READ(p, states);
	if (!states)
		return 0;
	for (__u32 k = 0; k < MAX_STATES; k++) {
		struct klp_state *st = state_at(states, k);
		unsigned long id = BPF_CORE_READ(st, id);
		if (!id)
			return 0;
		__u32 n = w->n;
		if (n >= KLPTOP_MAX_STATE_RECS) {
			w->flags |= FUNCS_OVERFLOW;
			return 1;
		}
		struct state_rec *r = bpf_map_lookup_elem(&state_recs, &n);
		if (!r)
			return 1;
		__builtin_memset(r, 0, sizeof(*r));
		r->id = id;
		r->version = BPF_CORE_READ(st, version);
		r->index = i;
		BPF_CORE_READ_STR_INTO(&r->patch, p, mod, name);
		w->n = n + 1;
	}
	w->flags |= FUNCS_OVERFLOW; /* more than MAX_STATES */
	return 0;
}

SEC("iter/task")
int snapshot_states(struct bpf_iter__task *ctx)
{
	struct funcs_out out = {};
	if (ctx->meta->seq_num != 0 || !ctx->task)
		return 0;
	if (!bpf_core_field_exists(struct klp_patch, states)) {
		out.flags = FUNCS_NO_BTF;
	} else if (!klp_patches_addr) {
		out.flags = FUNCS_NO_HEADS;
	} else {
		struct walk w = { .pos = klp_patches_addr };
		bpf_loop(MAX_PATCHES, state_patch_step, &w, 0);
		out.n = w.n;
		out.flags = w.flags;
	}
	bpf_seq_write(ctx->meta->seq, &out, sizeof(out));
	return 0;
}

/*
 * Shadow variables. klp_shadow_get, the lookup real patches call on every
 * call of a patched function, is not probed. The kernel's own hash table
 * (static klp_shadow_hash, address from /proc/kallsyms) tells whether a
 * shadow variable existed at entry: klp_shadow_get_or_alloc allocates only
 * when none did, klp_shadow_free and klp_shadow_free_all free only those
 * that did. Racing callers on other CPUs can make one such answer stale.
 */
volatile const __u64 klp_shadow_hash_addr = 0;

/* DEFINE_HASHTABLE(klp_shadow_hash, 12), hash_min(obj): hash_64 on 64-bit. */
#define SHADOW_HASH_BITS 12
#define SHADOW_BUCKETS (1 << SHADOW_HASH_BITS)
#define GOLDEN_RATIO_64 0x61C8864680B583EBull
#define MAX_SHADOW_CHAIN 256

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, KLPTOP_MAX_SHADOW_IDS);
	__type(key, __u64); /* shadow id */
	__type(value, struct shadow_count);
} shadow_counts SEC(".maps");

struct shadow_args {
	__u64 id;
	__u64 found; /* a variable for (obj, id) existed at entry */
};

struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 4096);
	__type(key, __u64); /* pid_tgid */
	__type(value, struct shadow_args);
} shadow_stash SEC(".maps");

static __always_inline struct shadow_count *shadow_count_of(__u64 id)
{
	struct shadow_count *c = bpf_map_lookup_elem(&shadow_counts, &id);
	if (c)
		return c;
	struct shadow_count zero = {};
	bpf_map_update_elem(&shadow_counts, &id, &zero, BPF_NOEXIST);
	return bpf_map_lookup_elem(&shadow_counts, &id);
}

struct chain {
	__u64 pos; /* hlist_node */
	__u64 obj; /* 0: any object */
	__u64 id;
	__u64 found;
	__u32 first; /* stop at the first match */
};

static long chain_step(__u32 i, struct chain *c)
{
	if (!c->pos)
		return 1;
	struct klp_shadow *sh = (void *)c->pos - bpf_core_field_offset(struct klp_shadow, node);
	__u64 obj = (__u64)BPF_CORE_READ(sh, obj);
	__u64 id = BPF_CORE_READ(sh, id);
	if (id == c->id && (!c->obj || obj == c->obj)) {
		c->found++;
		if (c->first)
			return 1;
	}
	c->pos = (__u64)BPF_CORE_READ(sh, node.next);
	return 0;
}

static __always_inline __u64 bucket_first(__u32 b)
{
	__u64 first = 0;
	bpf_probe_read_kernel(&first, sizeof(first), (void *)klp_shadow_hash_addr + (__u64)b * sizeof(void *));
	return first;
}

/* Whether the kernel holds a shadow variable for (obj, id). */
static __always_inline bool shadow_exists(__u64 obj, __u64 id)
{
	struct chain c = { .obj = obj, .id = id, .first = 1 };
	__u32 b = (obj * GOLDEN_RATIO_64) >> (64 - SHADOW_HASH_BITS);
	c.pos = bucket_first(b);
	bpf_loop(MAX_SHADOW_CHAIN, chain_step, &c, 0);
	return c.found != 0;
}

/*
 * Every variable of an id, for klp_shadow_free_all: one flat loop over the
 * buckets and their chains. Its state lives in a map value, not on the
 * stack: the verifier (6.12) tracks stack counters exactly through every
 * callback round and gives up; a map value is opaque to it. Kprobe programs
 * do not nest on a CPU, so one per-CPU slot is enough. The fentry twin runs
 * preemptible (migration disabled only), but the kernel's per-program
 * recursion guard skips a second run on the same CPU instead of letting it
 * share the slot.
 */
struct sweep_all {
	__u64 pos; /* hlist_node, 0: go to the next bucket */
	__u64 id;
	__u64 found;
	__u32 bucket; /* the next bucket to start */
	__u32 chain;  /* nodes walked in the current bucket */
};

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct sweep_all);
} sweep_scratch SEC(".maps");

static long all_step(__u32 i, void *unused)
{
	__u32 zero = 0;
	struct sweep_all *w = bpf_map_lookup_elem(&sweep_scratch, &zero);
	if (!w)
		return 1;
	if (!w->pos || w->chain >= MAX_SHADOW_CHAIN) {
		if (w->bucket >= SHADOW_BUCKETS)
			return 1;
		w->pos = bucket_first(w->bucket);
		w->bucket++;
		w->chain = 0;
		return 0;
	}
	struct klp_shadow *sh = (void *)w->pos - bpf_core_field_offset(struct klp_shadow, node);
	if (BPF_CORE_READ(sh, id) == w->id)
		w->found++;
	w->pos = (__u64)BPF_CORE_READ(sh, node.next);
	w->chain++;
	return 0;
}

static __always_inline int shadow_stash_entry(__u64 id, __u64 found)
{
	__u64 key = bpf_get_current_pid_tgid();
	struct shadow_args a = { .id = id, .found = found };
	bpf_map_update_elem(&shadow_stash, &key, &a, BPF_ANY);
	return 0;
}

SEC("kprobe/klp_shadow_alloc")
int BPF_KPROBE(shadow_alloc, void *obj, unsigned long id)
{
	return shadow_stash_entry(id, 0);
}

SEC("fentry/klp_shadow_alloc")
int BPF_PROG(fentry_shadow_alloc, void *obj, unsigned long id)
{
	return shadow_stash_entry(id, 0);
}

/* Returns NULL when (obj, id) already exists or the allocation failed. */
static __always_inline int shadow_alloc_return(void *ret)
{
	__u64 key = bpf_get_current_pid_tgid();
	struct shadow_args *a = bpf_map_lookup_elem(&shadow_stash, &key);
	if (!a)
		return 0;
	__u64 id = a->id;
	bpf_map_delete_elem(&shadow_stash, &key);
	struct shadow_count *c = shadow_count_of(id);
	if (!c)
		return 0;
	__sync_fetch_and_add(&c->alloc_calls, 1);
	if (ret)
		__sync_fetch_and_add(&c->allocs, 1);
	return 0;
}

SEC("kretprobe/klp_shadow_alloc")
int BPF_KRETPROBE(shadow_alloc_ret, void *ret)
{
	return shadow_alloc_return(ret);
}

SEC("kprobe/klp_shadow_get_or_alloc")
int BPF_KPROBE(shadow_get_or_alloc, void *obj, unsigned long id)
{
	return shadow_stash_entry(id, shadow_exists((__u64)obj, id));
}

SEC("fentry/klp_shadow_get_or_alloc")
int BPF_PROG(fentry_shadow_get_or_alloc, void *obj, unsigned long id)
{
	return shadow_stash_entry(id, shadow_exists((__u64)obj, id));
}

static __always_inline int shadow_get_or_alloc_return(void *ret)
{
	__u64 key = bpf_get_current_pid_tgid();
	struct shadow_args *a = bpf_map_lookup_elem(&shadow_stash, &key);
	if (!a)
		return 0;
	__u64 id = a->id, found = a->found;
	bpf_map_delete_elem(&shadow_stash, &key);
	struct shadow_count *c = shadow_count_of(id);
	if (!c)
		return 0;
	__sync_fetch_and_add(&c->get_or_alloc_calls, 1);
	if (ret && !found)
		__sync_fetch_and_add(&c->allocs, 1);
	return 0;
}

SEC("kretprobe/klp_shadow_get_or_alloc")
int BPF_KRETPROBE(shadow_get_or_alloc_ret, void *ret)
{
	return shadow_get_or_alloc_return(ret);
}

static __always_inline int shadow_free_body(void *obj, unsigned long id)
{
	bool found = shadow_exists((__u64)obj, id);
	struct shadow_count *c = shadow_count_of(id);
	if (!c)
		return 0;
	__sync_fetch_and_add(&c->free_calls, 1);
	if (found)
		__sync_fetch_and_add(&c->frees, 1);
	return 0;
}

SEC("kprobe/klp_shadow_free")
int BPF_KPROBE(shadow_free, void *obj, unsigned long id)
{
	return shadow_free_body(obj, id);
}

SEC("fentry/klp_shadow_free")
int BPF_PROG(fentry_shadow_free, void *obj, unsigned long id)
{
	return shadow_free_body(obj, id);
}

static __always_inline int shadow_free_all_body(unsigned long id)
{
	__u32 zero = 0;
	struct sweep_all *w = bpf_map_lookup_elem(&sweep_scratch, &zero);
	if (!w)
		return 0;
	__builtin_memset(w, 0, sizeof(*w));
	w->id = id;
	bpf_loop(1 << 20, all_step, 0, 0);
	__u64 found = w->found;
	struct shadow_count *c = shadow_count_of(id);
	if (!c)
		return 0;
	__sync_fetch_and_add(&c->free_all_calls, 1);
	if (found)
		__sync_fetch_and_add(&c->frees, found);
	return 0;
}

SEC("kprobe/klp_shadow_free_all")
int BPF_KPROBE(shadow_free_all, unsigned long id)
{
	return shadow_free_all_body(id);
}

SEC("fentry/klp_shadow_free_all")
int BPF_PROG(fentry_shadow_free_all, unsigned long id)
{
	return shadow_free_all_body(id);
}

/*
 * Modules and atomic replace (core.c). Module names go in e->func.
 */
#define KLPTOP_MAX_REPLACED 16

static __always_inline int emit_module(__u32 type, struct module *mod)
{
	struct event *e = reserve(type);
	if (!e)
		return 0;
	e->patch[0] = 0; /* not the transition's */
	bpf_probe_read_kernel_str(e->func, sizeof(e->func), mod->name);
	/*
	 * A livepatch module's init enables its patch next, and the first
	 * sweep runs within the load: woken by this event, the reader would
	 * be running then.
	 */
	if (type == EV_MODULE_COMING && bpf_core_field_exists(mod->klp) && BPF_CORE_READ(mod, klp))
		hold_wakeups();
	/*
	 * A module goes under klp_mutex, never during a sweep; a patch that
	 * failed to enable ends its load's hold here.
	 */
	if (type == EV_MODULE_GOING)
		release_wakeups(e);
	else
		submit(e);
	return 0;
}

SEC("kprobe/klp_module_coming")
int BPF_KPROBE(klp_module_coming, struct module *mod)
{
	return emit_module(EV_MODULE_COMING, mod);
}

SEC("fentry/klp_module_coming")
int BPF_PROG(fentry_klp_module_coming, struct module *mod)
{
	return emit_module(EV_MODULE_COMING, mod);
}

SEC("kprobe/klp_module_going")
int BPF_KPROBE(klp_module_going, struct module *mod)
{
	return emit_module(EV_MODULE_GOING, mod);
}

SEC("fentry/klp_module_going")
int BPF_PROG(fentry_klp_module_going, struct module *mod)
{
	return emit_module(EV_MODULE_GOING, mod);
}

/* The patch an object belongs to: its kobject's parent is the patch's. */
static __always_inline struct klp_patch *obj_patch(struct klp_object *obj)
{
	struct kobject *parent = BPF_CORE_READ(obj, kobj.parent);
	if (!parent)
		return 0;
	return (void *)parent - bpf_core_field_offset(struct klp_patch, kobj);
}

/* An object of a module in the given state: klp_module_coming/_going's work. */
static __always_inline int emit_module_obj(__u32 type, struct klp_object *obj, int mstate)
{
	struct module *mod = BPF_CORE_READ(obj, mod);
	if (!mod || BPF_CORE_READ(mod, state) != mstate)
		return 0;
	struct klp_patch *p = obj_patch(obj);
	if (!p)
		return 0;
	struct event *e = reserve(type);
	if (!e)
		return 0;
	BPF_CORE_READ_STR_INTO(&e->patch, p, mod, name);
	bpf_probe_read_kernel_str(e->func, sizeof(e->func), BPF_CORE_READ(obj, name));
	submit(e);
	return 0;
}

SEC("kprobe/klp_patch_object")
int BPF_KPROBE(klp_module_apply, struct klp_object *obj)
{
	return emit_module_obj(EV_MODULE_APPLY, obj, MODULE_STATE_COMING);
}

SEC("fentry/klp_patch_object")
int BPF_PROG(fentry_klp_module_apply, struct klp_object *obj)
{
	return emit_module_obj(EV_MODULE_APPLY, obj, MODULE_STATE_COMING);
}

SEC("kprobe/klp_unpatch_object")
int BPF_KPROBE(klp_module_revert, struct klp_object *obj)
{
	return emit_module_obj(EV_MODULE_REVERT, obj, MODULE_STATE_GOING);
}

SEC("fentry/klp_unpatch_object")
int BPF_PROG(fentry_klp_module_revert, struct klp_object *obj)
{
	return emit_module_obj(EV_MODULE_REVERT, obj, MODULE_STATE_GOING);
}

static __always_inline int emit_patch(__u32 type, struct klp_patch *p)
{
	struct event *e = reserve(type);
	if (!e)
		return 0;
	BPF_CORE_READ_STR_INTO(&e->patch, p, mod, name);
	submit(e);
	return 0;
}

/*
 * klp_unpatch_replaced_patches(new): every patch below new on klp_patches
 * is disabled and unpatched. Named here, from the kernel's list.
 */
static __always_inline int unpatch_replaced(struct klp_patch *new_patch)
{
	emit_patch(EV_PATCH_REPLACE, new_patch);
	if (!klp_patches_addr)
		return 0;
	__u64 pos = klp_patches_addr;
	for (int i = 0; i < KLPTOP_MAX_REPLACED; i++) {
		__u64 next = next_node(pos);
		if (!next || next == klp_patches_addr)
			break;
		struct klp_patch *p = (void *)next - bpf_core_field_offset(struct klp_patch, list);
		if (p == new_patch)
			break;
		emit_patch(EV_PATCH_REPLACED, p);
		pos = next;
	}
	return 0;
}

SEC("kprobe/klp_unpatch_replaced_patches")
int BPF_KPROBE(klp_unpatch_replaced_patches, struct klp_patch *new_patch)
{
	return unpatch_replaced(new_patch);
}

SEC("fentry/klp_unpatch_replaced_patches")
int BPF_PROG(fentry_klp_unpatch_replaced_patches, struct klp_patch *new_patch)
{
	return unpatch_replaced(new_patch);
}

SEC("kprobe/klp_discard_nops")
int BPF_KPROBE(klp_discard_nops, struct klp_patch *new_patch)
{
	return emit_patch(EV_NOPS_DISCARD, new_patch);
}

SEC("fentry/klp_discard_nops")
int BPF_PROG(fentry_klp_discard_nops, struct klp_patch *new_patch)
{
	return emit_patch(EV_NOPS_DISCARD, new_patch);
}

SEC("kprobe/klp_free_patch_async")
int BPF_KPROBE(klp_free_patch_async, struct klp_patch *patch)
{
	return emit_patch(EV_PATCH_FREE, patch);
}

SEC("fentry/klp_free_patch_async")
int BPF_PROG(fentry_klp_free_patch_async, struct klp_patch *patch)
{
	return emit_patch(EV_PATCH_FREE, patch);
}

SEC("kprobe/klp_free_replaced_patches_async")
int BPF_KPROBE(klp_free_replaced_patches_async, struct klp_patch *new_patch)
{
	return emit_patch(EV_REPLACED_FREE, new_patch);
}

SEC("fentry/klp_free_replaced_patches_async")
int BPF_PROG(fentry_klp_free_replaced_patches_async, struct klp_patch *new_patch)
{
	return emit_patch(EV_REPLACED_FREE, new_patch);
}

/*
 * Callbacks (struct klp_callbacks of each klp_object). The kernel calls
 * them through inline wrappers, so there is no kernel function to probe:
 * user space learns each object's callback addresses (EV_CALLBACKS, from
 * klp_init_transition and from the start-up iterator) and attaches
 * klp_callback / klp_callback_ret to the callbacks themselves. The one
 * call it cannot be in time for is the pre-patch callback of the enable
 * that introduces the patch (it runs inside the module's init, before user
 * space can see it): that one is bracketed by the kernel's own steps, from
 * klp_init_transition's return (or the previous object's klp_patch_object)
 * to the next klp_patch_object, and its failure is seen as the cancel.
 */
/* The patch of the last klp_init_transition (0: attached mid-transition). */
__u64 cb_patch;

static const char cb_fmt[] = "%ps";

/*
 * One EV_CALLBACKS per callback: its address in id, kind + 1 in version,
 * and its name, "func [module]", in func, as the kernel has it now: user
 * space probes it by that name, which cannot land in another module that
 * took the address after this one went.
 */
static long cb_obj_step(__u32 i, struct walk *w)
{
	__u64 next = next_node(w->pos);
	if (!next || next == w->head) {
		w->done = 1;
		return 1;
	}
	w->pos = next;
	struct klp_object *o = (void *)next - bpf_core_field_offset(struct klp_object, node);
	__u64 cb[CB_MAX] = {
		(__u64)BPF_CORE_READ(o, callbacks.pre_patch),
		(__u64)BPF_CORE_READ(o, callbacks.post_patch),
		(__u64)BPF_CORE_READ(o, callbacks.pre_unpatch),
		(__u64)BPF_CORE_READ(o, callbacks.post_unpatch),
	};
	struct klp_patch *p = (void *)w->patch;
	for (int k = 0; k < CB_MAX; k++) {
		if (!cb[k])
			continue;
		struct event *e = reserve(EV_CALLBACKS);
		if (!e)
			return 1;
		BPF_CORE_READ_STR_INTO(&e->patch, p, mod, name);
		__u64 args[1] = { cb[k] };
		bpf_snprintf(e->func, sizeof(e->func), cb_fmt, args, sizeof(args));
		e->id = cb[k];
		e->version = k + 1;
		submit(e);
	}
	w->n++;
	return 0;
}

static __always_inline void emit_callbacks_of(struct klp_patch *p)
{
	struct walk in = {
		.head = (__u64)p + bpf_core_field_offset(struct klp_patch, obj_list),
		.patch = (__u64)p,
	};
	in.pos = in.head;
	bpf_loop(MAX_OBJS, cb_obj_step, &in, 0);
}

/* The callbacks of the patch entering a transition (it was just initialised). */
static __always_inline int callbacks_init_body(struct klp_patch *patch, int state)
{
	if (!bpf_core_field_exists(struct klp_object, callbacks))
		return 0;
	cb_patch = (__u64)patch;
	emit_callbacks_of(patch);
	return 0;
}

SEC("kprobe/klp_init_transition")
int BPF_KPROBE(callbacks_init, struct klp_patch *patch, int state)
{
	return callbacks_init_body(patch, state);
}

SEC("fentry/klp_init_transition")
int BPF_PROG(fentry_callbacks_init, struct klp_patch *patch, int state)
{
	return callbacks_init_body(patch, state);
}

static long cb_patch_step(__u32 i, struct walk *w)
{
	__u64 next = next_node(w->pos);
	if (!next || next == klp_patches_addr)
		return 1;
	w->pos = next;
	emit_callbacks_of((void *)next - bpf_core_field_offset(struct klp_patch, list));
	return 0;
}

/* The callbacks of every patch already loaded, into the ring buffer, once. */
SEC("iter/task")
int snapshot_callbacks(struct bpf_iter__task *ctx)
{
	struct funcs_out out = {};
	if (ctx->meta->seq_num != 0 || !ctx->task)
		return 0;
	if (!bpf_core_field_exists(struct klp_object, callbacks)) {
		out.flags = FUNCS_NO_BTF;
	} else if (!klp_patches_addr) {
		out.flags = FUNCS_NO_HEADS;
	} else {
		struct walk w = { .pos = klp_patches_addr };
		bpf_loop(MAX_PATCHES, cb_patch_step, &w, 0);
	}
	bpf_seq_write(ctx->meta->seq, &out, sizeof(out));
	return 0;
}

/*
 * The bracket of the enable's pre-patch callbacks, per enabling task:
 * present from klp_init_transition(patch, KLP_PATCHED) to
 * klp_start_transition or klp_enable_patch's return.
 */
struct cb_bracket {
	__u64 patch;
	__u64 since; /* 0: inside klp_patch_object */
	__u64 failed_obj;
	__u64 failed_dur;
};

struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 64);
	__type(key, __u64); /* pid_tgid */
	__type(value, struct cb_bracket);
} cb_brackets SEC(".maps");

/*
 * The post callbacks of a completion nothing probed: a transition that
 * completes in the enable's own first sweep runs them before user space
 * can attach. Then they are reported bracketed by klp_complete_transition
 * itself (entry to return: an upper bound, with the RCU sync and the
 * kernel's "complete" message in it).
 */
struct cb_complete {
	__u64 start;
	__u64 patch;
	__u32 probed;    /* callback probes that fired inside */
	__u32 cancelled; /* klp_cancel_transition: post-unpatch only where pre-patch succeeded */
};

struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 64);
	__type(key, __u64); /* pid_tgid */
	__type(value, struct cb_complete);
} cb_completes SEC(".maps");

struct cb_call {
	__u64 start;
	__u64 ip;
	__u64 obj;
};

struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 1024);
	__type(key, __u64); /* pid_tgid */
	__type(value, struct cb_call);
} cb_calls SEC(".maps");

/*
 * A callback event names its object in e->patch (object names are module
 * names) and the callback in e->func, symbolized here, "func [module]":
 * by the time user space reads the event, the module of a failed load is
 * gone from kallsyms.
 */
static __always_inline void name_callback(struct event *e, struct klp_object *o, __u64 fn)
{
	__builtin_memset(e->patch, 0, sizeof(e->patch));
	const char *on = BPF_CORE_READ(o, name);
	if (on)
		bpf_probe_read_kernel_str(e->patch, sizeof(e->patch), on);
	__u64 args[1] = { fn };
	bpf_snprintf(e->func, sizeof(e->func), cb_fmt, args, sizeof(args));
}

/* Attached by user space to each callback's address. */
SEC("kprobe/klp_callback")
int BPF_KPROBE(klp_callback, struct klp_object *obj)
{
	__u64 id = bpf_get_current_pid_tgid();
	/* Inside an enable's bracket the bracket reports it: not twice. */
	if (bpf_map_lookup_elem(&cb_brackets, &id))
		return 0;
	struct cb_complete *cc = bpf_map_lookup_elem(&cb_completes, &id);
	if (cc)
		cc->probed++;
	struct cb_call c = { .start = bpf_ktime_get_ns(), .ip = bpf_get_func_ip(ctx), .obj = (__u64)obj };
	bpf_map_update_elem(&cb_calls, &id, &c, BPF_ANY);
	return 0;
}

SEC("kretprobe/klp_callback")
int BPF_KRETPROBE(klp_callback_ret, long rc)
{
	__u64 id = bpf_get_current_pid_tgid();
	struct cb_call *c = bpf_map_lookup_elem(&cb_calls, &id);
	if (!c)
		return 0;
	struct cb_call call = *c;
	bpf_map_delete_elem(&cb_calls, &id);
	struct event *e = reserve(EV_CALLBACK);
	if (!e)
		return 0;
	e->duration = e->time - call.start;
	e->id = call.ip;
	e->ret = (__s32)rc;
	name_callback(e, (void *)call.obj, call.ip);
	submit(e);
	return 0;
}

static __always_inline int cb_bracket_init_body(struct klp_patch *patch, int state)
{
	__u64 id = bpf_get_current_pid_tgid();
	if (state != 1) {
		bpf_map_delete_elem(&cb_brackets, &id);
		return 0;
	}
	struct cb_bracket b = { .patch = (__u64)patch };
	bpf_map_update_elem(&cb_brackets, &id, &b, BPF_ANY);
	return 0;
}

SEC("kprobe/klp_init_transition")
int BPF_KPROBE(cb_bracket_init, struct klp_patch *patch, int state)
{
	return cb_bracket_init_body(patch, state);
}

SEC("fentry/klp_init_transition")
int BPF_PROG(fentry_cb_bracket_init, struct klp_patch *patch, int state)
{
	return cb_bracket_init_body(patch, state);
}

static __always_inline int cb_bracket_open_body(void)
{
	__u64 id = bpf_get_current_pid_tgid();
	struct cb_bracket *b = bpf_map_lookup_elem(&cb_brackets, &id);
	if (b)
		b->since = bpf_ktime_get_ns();
	return 0;
}

SEC("kretprobe/klp_init_transition")
int BPF_KRETPROBE(cb_bracket_open)
{
	return cb_bracket_open_body();
}

static __always_inline int cb_bracket_close_body(struct klp_object *obj)
{
	__u64 id = bpf_get_current_pid_tgid();
	struct cb_bracket *b = bpf_map_lookup_elem(&cb_brackets, &id);
	if (!b || !b->since)
		return 0;
	__u64 since = b->since;
	b->since = 0;
	__u64 pre = (__u64)BPF_CORE_READ(obj, callbacks.pre_patch);
	if (!pre)
		return 0;
	struct event *e = reserve(EV_CALLBACK);
	if (!e)
		return 0;
	e->duration = e->time - since;
	e->id = pre;
	e->flags |= EVF_BRACKET;
	e->version = CB_PRE_PATCH + 1;
	name_callback(e, obj, pre);
	submit(e);
	return 0;
}

SEC("kprobe/klp_patch_object")
int BPF_KPROBE(cb_bracket_close, struct klp_object *obj)
{
	return cb_bracket_close_body(obj);
}

SEC("fentry/klp_patch_object")
int BPF_PROG(fentry_cb_bracket_close, struct klp_object *obj)
{
	return cb_bracket_close_body(obj);
}

static __always_inline int cb_bracket_reopen_body(long rc)
{
	__u64 id = bpf_get_current_pid_tgid();
	struct cb_bracket *b = bpf_map_lookup_elem(&cb_brackets, &id);
	if (b && rc == 0)
		b->since = bpf_ktime_get_ns();
	return 0;
}

SEC("kretprobe/klp_patch_object")
int BPF_KRETPROBE(cb_bracket_reopen, long rc)
{
	return cb_bracket_reopen_body(rc);
}

static __always_inline int cb_bracket_done_body(void)
{
	__u64 id = bpf_get_current_pid_tgid();
	bpf_map_delete_elem(&cb_brackets, &id);
	return 0;
}

SEC("kprobe/klp_start_transition")
int BPF_KPROBE(cb_bracket_done)
{
	return cb_bracket_done_body();
}

SEC("fentry/klp_start_transition")
int BPF_PROG(fentry_cb_bracket_done)
{
	return cb_bracket_done_body();
}

/* The first loaded, unpatched object with a pre-patch callback: the one that failed. */
static long cb_failed_step(__u32 i, struct walk *w)
{
	__u64 next = next_node(w->pos);
	if (!next || next == w->head)
		return 1;
	w->pos = next;
	struct klp_object *o = (void *)next - bpf_core_field_offset(struct klp_object, node);
	bool loaded = !BPF_CORE_READ(o, name) || BPF_CORE_READ(o, mod);
	if (!loaded || BPF_CORE_READ(o, patched) || !BPF_CORE_READ(o, callbacks.pre_patch))
		return 0;
	w->obj = (__u64)o;
	return 1;
}

/*
 * A cancel while the bracket is open (not inside klp_patch_object): a
 * pre-patch callback failed. Its error is klp_enable_patch's return value.
 */
static __always_inline int cb_bracket_cancel_body(void)
{
	__u64 id = bpf_get_current_pid_tgid();
	struct cb_bracket *b = bpf_map_lookup_elem(&cb_brackets, &id);
	if (!b || !b->since)
		return 0;
	struct walk w = { .head = b->patch + bpf_core_field_offset(struct klp_patch, obj_list) };
	w.pos = w.head;
	bpf_loop(MAX_OBJS, cb_failed_step, &w, 0);
	b->failed_obj = w.obj;
	b->failed_dur = bpf_ktime_get_ns() - b->since;
	b->since = 0;
	return 0;
}

SEC("kprobe/klp_cancel_transition")
int BPF_KPROBE(cb_bracket_cancel)
{
	return cb_bracket_cancel_body();
}

SEC("fentry/klp_cancel_transition")
int BPF_PROG(fentry_cb_bracket_cancel)
{
	return cb_bracket_cancel_body();
}

static __always_inline int cb_bracket_ret_body(long rc)
{
	__u64 id = bpf_get_current_pid_tgid();
	struct cb_bracket *b = bpf_map_lookup_elem(&cb_brackets, &id);
	if (!b)
		return 0;
	struct cb_bracket br = *b;
	bpf_map_delete_elem(&cb_brackets, &id);
	if (!br.failed_obj)
		return 0;
	struct klp_object *o = (void *)br.failed_obj;
	struct event *e = reserve(EV_CALLBACK);
	if (!e)
		return 0;
	e->duration = br.failed_dur;
	e->id = (__u64)BPF_CORE_READ(o, callbacks.pre_patch);
	e->ret = (__s32)rc;
	e->flags |= EVF_BRACKET | EVF_FAILED;
	e->version = CB_PRE_PATCH + 1;
	name_callback(e, o, e->id);
	submit(e);
	return 0;
}

SEC("kretprobe/klp_enable_patch")
int BPF_KRETPROBE(cb_bracket_ret, long rc)
{
	return cb_bracket_ret_body(rc);
}

static __always_inline int cb_complete_entry_body(void)
{
	__u64 id = bpf_get_current_pid_tgid();
	struct cb_complete c = { .start = bpf_ktime_get_ns(), .patch = cb_patch };
	struct cb_complete *was = bpf_map_lookup_elem(&cb_completes, &id);
	if (was)
		c.cancelled = was->cancelled;
	bpf_map_update_elem(&cb_completes, &id, &c, BPF_ANY);
	return 0;
}

SEC("kprobe/klp_complete_transition")
int BPF_KPROBE(cb_complete_entry)
{
	return cb_complete_entry_body();
}

SEC("fentry/klp_complete_transition")
int BPF_PROG(fentry_cb_complete_entry)
{
	return cb_complete_entry_body();
}

static __always_inline int cb_complete_cancel_body(void)
{
	/* It calls klp_complete_transition: mark the cancel for it. */
	__u64 id = bpf_get_current_pid_tgid();
	struct cb_complete c = { .cancelled = 1 };
	bpf_map_update_elem(&cb_completes, &id, &c, BPF_ANY);
	return 0;
}

SEC("kprobe/klp_cancel_transition")
int BPF_KPROBE(cb_complete_cancel)
{
	return cb_complete_cancel_body();
}

SEC("fentry/klp_cancel_transition")
int BPF_PROG(fentry_cb_complete_cancel)
{
	return cb_complete_cancel_body();
}

struct cb_post_walk {
	__u64 head;
	__u64 pos;
	__u64 dur;
	__u32 kind; /* CB_POST_PATCH or CB_POST_UNPATCH */
};

static long cb_post_step(__u32 i, struct cb_post_walk *w)
{
	__u64 next = next_node(w->pos);
	if (!next || next == w->head)
		return 1;
	w->pos = next;
	struct klp_object *o = (void *)next - bpf_core_field_offset(struct klp_object, node);
	bool loaded = !BPF_CORE_READ(o, name) || BPF_CORE_READ(o, mod);
	__u64 fn = w->kind == CB_POST_PATCH ? (__u64)BPF_CORE_READ(o, callbacks.post_patch)
					    : (__u64)BPF_CORE_READ(o, callbacks.post_unpatch);
	if (!loaded || !fn)
		return 0;
	struct event *e = reserve(EV_CALLBACK);
	if (!e)
		return 1;
	e->duration = w->dur;
	e->id = fn;
	e->flags |= EVF_BRACKET;
	e->version = w->kind + 1;
	name_callback(e, o, fn);
	submit(e);
	return 0;
}

static __always_inline int cb_complete_ret_body(void)
{
	__u64 id = bpf_get_current_pid_tgid();
	struct cb_complete *cp = bpf_map_lookup_elem(&cb_completes, &id);
	if (!cp)
		return 0;
	struct cb_complete c = *cp;
	bpf_map_delete_elem(&cb_completes, &id);
	if (c.probed || c.cancelled || !c.patch || !c.start)
		return 0;
	struct cb_post_walk w = {
		.head = c.patch + bpf_core_field_offset(struct klp_patch, obj_list),
		.dur = bpf_ktime_get_ns() - c.start,
		.kind = cur_target == 0 ? CB_POST_UNPATCH : CB_POST_PATCH,
	};
	w.pos = w.head;
	bpf_loop(MAX_OBJS, cb_post_step, &w, 0);
	return 0;
}

SEC("kretprobe/klp_complete_transition")
int BPF_KRETPROBE(cb_complete_ret)
{
	return cb_complete_ret_body();
}

