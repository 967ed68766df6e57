/* SPDX-License-Identifier: (LGPL-2.1 OR BSD-2-Clause) */
/*
 * Maps shared by every vmwatch BPF object. Each source (QEMU USDT probes,
 * syscalls, KVM tracepoints) owns a contiguous range of feature indices;
 * all of them count into one per-CPU array so a single drain reads every
 * source of a VM in step. Userspace loads the first object normally and
 * hands these maps to the others with reuse_fd.
 */
#ifndef VMWATCH_H
#define VMWATCH_H

#include <linux/types.h>
#include <linux/bpf.h>
#include <bpf/bpf_helpers.h>

/*
 * Watched processes: tgid -> slot. A slot is a row of `counts`; userspace
 * zeroes a slot's row before it publishes the tgid here.
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

/* The calling process's slot, or NULL when it is not watched. */
static __always_inline __u32 *watched_slot(void)
{
	__u32 tgid = bpf_get_current_pid_tgid() >> 32;

	return bpf_map_lookup_elem(&watched, &tgid);
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

#endif /* VMWATCH_H */
