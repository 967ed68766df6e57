// SPDX-License-Identifier: (LGPL-2.1 OR BSD-2-Clause)
/*
 * vmwatch's kernel side: one BPF object with a program per source (QEMU USDT
 * probes, syscalls, KVM tracepoints), all counting into one per-CPU array so a
 * single drain reads every source of a VM in step. Userspace enables the
 * programs of the sources it counts (set_autoload) and sets the rodata below
 * once, in one place, for all of them.
 */
#include <linux/types.h>
#include <linux/bpf.h>
#include <bpf/bpf_helpers.h>

/* Only its address is used: registers are read at offsets userspace gives. */
struct pt_regs;

/*
 * Watched processes: tgid -> slot. A slot is a row of `counts`; userspace
 * reads a slot's counters as the baseline before it publishes the tgid here.
 */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 64); /* resized before load */
	__type(key, __u32);
	__type(value, __u32);
} watched SEC(".maps");

/*
 * Features per map value. A slot's counters are stored in
 * ceil(nr_features / CHUNK) values so a drain copies a few large values per
 * VM instead of thousands of small ones (per-element cost dominates batched
 * reads); 16 KiB stays below the kernel's 32 KiB per-CPU value limit.
 * Userspace takes CHUNK from `struct chunk` in the skeleton's BTF-generated
 * types, so this is its only definition.
 */
#define CHUNK_SHIFT 11
#define CHUNK (1u << CHUNK_SHIFT)

struct chunk {
	__u64 hits[CHUNK];
};

/*
 * Cumulative hit counters: key = slot * nr_chunks + feature / CHUNK.
 * Never reset while a slot is in use: userspace subtracts the previous
 * snapshot, so an event that races with a drain lands in exactly one window.
 */
struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1); /* resized before load */
	__type(key, __u32);
	__type(value, struct chunk);
} counts SEC(".maps");

/* Row width (all sources together) and chunks per row, set at load time. */
const volatile __u32 nr_features = 0;
const volatile __u32 nr_chunks = 1;

/* The calling process's tgid. */
static __always_inline __u32 current_tgid(void)
{
	return bpf_get_current_pid_tgid() >> 32;
}

/* The slot of process `tgid`, or NULL when it is not watched. */
static __always_inline __u32 *slot_of(__u32 tgid)
{
	return bpf_map_lookup_elem(&watched, &tgid);
}

/* The calling process's slot, or NULL when it is not watched. */
static __always_inline __u32 *watched_slot(void)
{
	return slot_of(current_tgid());
}

static __always_inline void count_in_slot(__u32 slot, __u64 feature)
{
	struct chunk *row;
	__u32 key;

	if (feature >= nr_features)
		return;
	key = slot * nr_chunks + ((__u32)feature >> CHUNK_SHIFT);
	row = bpf_map_lookup_elem(&counts, &key);
	if (!row)
		return;
	/*
	 * Per-CPU, but a task-context program can be preempted by another
	 * task hitting the same counter on this CPU: keep the add atomic.
	 */
	__sync_fetch_and_add(&row->hits[feature & (CHUNK - 1)], 1);
}

static __always_inline void count_feature(__u64 feature)
{
	__u32 *slot = watched_slot();

	if (slot)
		count_in_slot(*slot, feature);
}

/*
 * Switches of the uprobe links the cost governor turns on and off: a link's
 * sites carry (switch + 1) in their cookie's upper half (0: always counted)
 * and count only while their switch is nonzero. A switch flips with one map
 * write, exactly when it is timed; attaching a link takes a grace period
 * (~8 ms) before its sites trap and detaching one ~40 ms, so links are
 * attached before their switch turns on and detached after it turned off.
 */
#define MAX_SWITCHES 4096

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, MAX_SWITCHES);
	__type(key, __u32);
	__type(value, __u32);
} switches SEC(".maps");

/*
 * Hits on sites whose link's switch is off, per slot: what a duty-cycled
 * probe still costs while its link is being attached or detached, which
 * the cost governor charges though nothing is counted.
 */
struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1); /* resized before load */
	__type(key, __u32);
	__type(value, __u64);
} dark SEC(".maps");

static __always_inline void count_dark(void)
{
	__u32 *slot = watched_slot();
	__u64 *n;

	if (!slot)
		return;
	n = bpf_map_lookup_elem(&dark, slot);
	if (n)
		__sync_fetch_and_add(n, 1);
}

/*
 * A USDT site's BPF cookie: this struct is the one definition of its layout
 * (userspace builds cookies from the skeleton's generated type). `sw` is the
 * site's link switch + 1 (0: always counted), `site` the site's entry + 1
 * in `sites` (0: only counted). Little-endian, it reads as
 * column | sw << 32 | site << 48.
 */
struct usdt_cookie {
	__u32 column;
	__u16 sw;
	__u16 site;
};

_Static_assert(sizeof(struct usdt_cookie) == sizeof(__u64), "a cookie is 64 bits");

/* Carries `struct usdt_cookie` into the skeleton's types; never read. */
const volatile struct usdt_cookie usdt_cookie_layout = {};

/*
 * Where a USDT argument is, from its spec in `.note.stapsdt` (parsed by
 * userspace, src/attach/arguments.rs): a constant (`$5`), a register
 * (`%rdi`, `%eax`), or memory at a register plus a displacement
 * (`-20(%rbp)`). `reg` is the register's offset in struct pt_regs.
 */
enum arg_kind {
	ARG_NONE = 0,
	ARG_CONST = 1,
	ARG_REG = 2,
	ARG_DEREF = 3,
};

struct arg_loc {
	__s64 disp;	/* the constant, or the displacement */
	__u16 reg;
	__u8 kind;	/* enum arg_kind */
	__u8 size;	/* 1, 2, 4 or 8 bytes */
	__u8 is_signed;
	__u8 pad[3];
};

/* What a site does beyond counting its probe. */
enum site_role {
	ROLE_COUNT = 0,		/* nothing (a tracked probe only) */
	ROLE_BUCKET = 1,	/* buckets of arg[i] in family[i], i < nr_values */
	ROLE_QUEUE_BUCKET = 2,	/* the same, split by the kind of queue arg[2] */
	ROLE_QUEUE_KIND = 3,	/* learns the kind of queue arg[0] from arg[1], arg[2] */
};

#define SITE_ARGS 3
#define SITE_VALUES 2

/*
 * A site's extras, filled by userspace at attach: its probe's id among the
 * tracked probes (0: not tracked) and what its arguments feed.
 */
struct site_info {
	__u16 seq;
	__u8 role;	/* enum site_role */
	__u8 nr_values;	/* at most SITE_VALUES */
	__u32 family[SITE_VALUES];	/* rows of `arg_columns` */
	struct arg_loc arg[SITE_ARGS];
};

#define MAX_SITES 8192

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, MAX_SITES);
	__type(key, __u32);
	__type(value, struct site_info);
} sites SEC(".maps");

/*
 * Sequence features (`seq:<a>><b>`). The probes they name are tracked: each
 * has an id, 1 to nr_tracked, in its sites' cookies. Each thread keeps the
 * id of the tracked probe it hit last in its own BPF task storage (which
 * goes with the thread: no thread id is reused for it, nothing is evicted,
 * nothing to size). A hit of tracked probe b on a thread whose last one was
 * a counts the pair (a, b) if it is a column: `seq_pairs`, an array of
 * nr_tracked x nr_tracked entries (a lookup the verifier inlines, unlike a
 * hash's), key (a - 1) * nr_tracked + (b - 1) -> column + 1 (0: not counted),
 * filled at load. Userspace's half of that key is `seq_pair_key` in
 * src/bpf.rs.
 */
const volatile __u32 nr_tracked = 0;

struct {
	__uint(type, BPF_MAP_TYPE_TASK_STORAGE);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__type(key, int);
	__type(value, __u32);
} seq_last SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1); /* resized before load */
	__type(key, __u32);
	__type(value, __u32);
} seq_pairs SEC(".maps");

static __always_inline void count_transition(__u32 slot, __u16 id)
{
	__u32 *last, *column, key;

	/*
	 * NULL only when the thread has none yet and it cannot be made now
	 * (no memory, or another task was preempted inside a task storage
	 * call on this CPU): the thread starts afresh at its next hit.
	 */
	last = bpf_task_storage_get(&seq_last, bpf_get_current_task_btf(), 0,
				    BPF_LOCAL_STORAGE_GET_F_CREATE);
	if (!last)
		return;
	/* 0: the thread's first tracked hit. Only the thread writes it. */
	if (*last) {
		key = (*last - 1) * nr_tracked + (id - 1);
		column = bpf_map_lookup_elem(&seq_pairs, &key);
		if (column && *column)
			count_in_slot(slot, *column - 1);
	}
	*last = id;
}

/*
 * Argument features (`arg:`): a site whose role buckets an argument adds
 * one to the column of (family, split, bucket) in `arg_columns`, an array
 * of families x SPLITS x BUCKETS entries -> column + 1 (0: not counted),
 * filled at load; `table_key` of crates/core/src/arguments.rs computes the
 * same index, and its BUCKETS and SPLITS are set here at load. Splits: 0
 * none, then the queue kinds below.
 */
const volatile __u32 arg_buckets = 32;
const volatile __u32 arg_splits = 4;

/*
 * The kinds of queue, each its split: device-writable buffers only (rx),
 * driver-written only (tx), both (rw). Set at load from `Queue`.
 */
const volatile __u32 queue_rx = 1;
const volatile __u32 queue_tx = 2;
const volatile __u32 queue_rw = 3;

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1); /* resized before load */
	__type(key, __u32);
	__type(value, __u32);
} arg_columns SEC(".maps");

/*
 * The kind of each virtqueue seen popped, by (process, VirtQueue address):
 * LRU, so queues of processes gone are evicted, never a full map.
 */
struct queue_key {
	__u32 tgid;
	__u32 pad;
	__u64 vq;
};

struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 4096);
	__type(key, struct queue_key);
	__type(value, __u32);
} queue_kinds SEC(".maps");

/* A USDT argument's value (0 when it cannot be read). */
static __always_inline __u64 read_arg(struct pt_regs *regs, const struct arg_loc *a)
{
	__u64 v = 0, shift;

	switch (a->kind) {
	case ARG_CONST:
		return (__u64)a->disp;
	case ARG_REG:
		if (bpf_probe_read_kernel(&v, sizeof(v), (void *)regs + (a->reg & 0xff8)))
			return 0;
		break;
	case ARG_DEREF:
		if (bpf_probe_read_kernel(&v, sizeof(v), (void *)regs + (a->reg & 0xff8)))
			return 0;
		if (bpf_probe_read_user(&v, sizeof(v), (void *)(v + a->disp)))
			return 0;
		break;
	default:
		return 0;
	}
	/* Keep the argument's own bytes (little-endian), sign-extended if signed. */
	if (a->size >= 1 && a->size < 8) {
		shift = 64 - 8 * (__u64)a->size;
		v <<= shift;
		v = a->is_signed ? (__u64)((__s64)v >> shift) : v >> shift;
	}
	return v;
}

/* 0 for 0, else 1 + floor(log2 v), at most arg_buckets - 1. */
static __always_inline __u32 bucket_of(__u64 v)
{
	__u32 k = 0;

	if (v >> 32) { v >>= 32; k += 32; }
	if (v >> 16) { v >>= 16; k += 16; }
	if (v >> 8) { v >>= 8; k += 8; }
	if (v >> 4) { v >>= 4; k += 4; }
	if (v >> 2) { v >>= 2; k += 2; }
	if (v >> 1) { v >>= 1; k += 1; }
	k += v;
	return k < arg_buckets ? k : arg_buckets - 1;
}

static __always_inline void count_bucket(__u32 slot, __u32 family, __u32 split, __u64 v)
{
	__u32 key = (family * arg_splits + split) * arg_buckets + bucket_of(v), *column;

	column = bpf_map_lookup_elem(&arg_columns, &key);
	if (column && *column)
		count_in_slot(slot, *column - 1);
}

/* `tgid` keys the queues: only the queue roles use it. */
static __always_inline void count_args(struct pt_regs *regs, __u32 tgid, __u32 slot,
				       const struct site_info *info)
{
	struct queue_key q = { .tgid = tgid };
	__u32 *kind, k, split = 0, i;
	__u64 in, out;

	switch (info->role) {
	case ROLE_QUEUE_BUCKET:
		/* Not counted until the queue's kind is known (its first pop). */
		q.vq = read_arg(regs, &info->arg[2]);
		kind = bpf_map_lookup_elem(&queue_kinds, &q);
		if (!kind || *kind >= arg_splits)
			break;
		split = *kind;
		/* fallthrough */
	case ROLE_BUCKET:
		for (i = 0; i < SITE_VALUES; i++)
			if (i < info->nr_values)
				count_bucket(slot, info->family[i], split,
					     read_arg(regs, &info->arg[i]));
		break;
	case ROLE_QUEUE_KIND:
		q.vq = read_arg(regs, &info->arg[0]);
		in = read_arg(regs, &info->arg[1]);
		out = read_arg(regs, &info->arg[2]);
		if (!in && !out)
			break;
		k = in && out ? queue_rw : in ? queue_rx : queue_tx;
		kind = bpf_map_lookup_elem(&queue_kinds, &q);
		/* Written only when it changes: a pop is hot, an update costly. */
		if (!kind || *kind != k)
			bpf_map_update_elem(&queue_kinds, &q, &k, BPF_ANY);
		break;
	}
}

/*
 * QEMU's USDT probes: one uprobe_multi link per QEMU binary covers every
 * selected probe site (and, under a cost governor, per-process links for
 * the hot probes the binary's semaphores do not gate); each site's cookie
 * (`struct usdt_cookie`) carries its column, its link's switch and its
 * entry in `sites`, whose arguments are read only where a feature needs
 * them.
 */
SEC("uprobe.multi")
int count_usdt(struct pt_regs *ctx)
{
	__u64 raw = bpf_get_attach_cookie(ctx);
	struct usdt_cookie cookie;
	struct site_info *info;
	__u32 *slot, key, tgid;

	__builtin_memcpy(&cookie, &raw, sizeof(cookie));
	if (cookie.sw) {
		__u32 key = cookie.sw - 1, *on = bpf_map_lookup_elem(&switches, &key);

		if (!on || !*on) {
			count_dark();
			return 0;
		}
	}
	tgid = current_tgid();
	slot = slot_of(tgid);
	if (!slot)
		return 0;
	count_in_slot(*slot, cookie.column);
	if (!cookie.site)
		return 0;
	key = cookie.site - 1;
	info = bpf_map_lookup_elem(&sites, &key);
	if (!info)
		return 0;
	if (info->seq)
		count_transition(*slot, info->seq);
	if (info->role)
		count_args(ctx, tgid, *slot, info);
	return 0;
}

/*
 * System calls entered by any thread of a watched process, by number. Raw
 * tracepoint: no tracefs needed. While this is attached every syscall on the
 * host pays the feature lookup; only watched processes pay more.
 */
#define MAX_SYSCALLS 1024

/* Syscall number -> feature index + 1 (0: not counted). Filled by userspace. */
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, MAX_SYSCALLS);
	__type(key, __u32);
	__type(value, __u32);
} sys_feature SEC(".maps");

SEC("raw_tp/sys_enter")
int count_syscall(struct bpf_raw_tracepoint_args *ctx)
{
	long id = (long)ctx->args[1];
	__u32 key, *feature, *slot;

	if (id < 0 || id >= MAX_SYSCALLS)
		return 0;
	/*
	 * The feature first: an inlined array lookup, cheaper than the tgid
	 * hash, and it drops the syscalls that are not features (the uprobe
	 * syscall of every optimized probe hit) before any per-process work.
	 */
	key = (__u32)id;
	feature = bpf_map_lookup_elem(&sys_feature, &key);
	if (!feature || !*feature)
		return 0;
	slot = watched_slot();
	if (slot)
		count_in_slot(*slot, *feature - 1);
	return 0;
}

/*
 * KVM tracepoints: this program is attached once per tracepoint, its feature
 * index as BPF cookie. Exit reasons come from the classic `kvm_exit`
 * tracepoint record, whose layout userspace reads from tracefs, as kvm_stat
 * does.
 */
SEC("raw_tp")
int count_kvm(void *ctx)
{
	count_feature(bpf_get_attach_cookie(ctx));
	return 0;
}

/* Offset of exit_reason in the kvm_exit record; VMX masks it with 0xffff. */
const volatile __u32 exit_reason_off = 8;
const volatile __u32 exit_vmx = 0;
/* Feature index for reasons missing from exit_feature (>= nr_features: none). */
const volatile __u32 exit_other = 0;

/* Exit reason -> feature index + 1. Filled by userspace. */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 1024);
	__type(key, __u32);
	__type(value, __u32);
} exit_feature SEC(".maps");

SEC("tracepoint")
int count_kvm_exit(void *ctx)
{
	__u32 *slot = watched_slot();
	__u32 reason = 0, *feature;

	if (!slot)
		return 0;
	if (bpf_probe_read_kernel(&reason, sizeof(reason), ctx + exit_reason_off))
		return 0;
	if (exit_vmx)
		reason &= 0xffff;
	feature = bpf_map_lookup_elem(&exit_feature, &reason);
	count_in_slot(*slot, feature ? *feature - 1 : exit_other);
	return 0;
}

char LICENSE[] SEC("license") = "Dual BSD/GPL";
