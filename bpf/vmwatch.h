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
 * Cumulative hit counters, one row of `nr_features` per slot:
 * key = slot * nr_features + feature. Never reset while a slot is in use:
 * userspace subtracts the previous snapshot, so an event that races with a
 * drain lands in exactly one window.
 */
struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1); /* resized before load */
	__type(key, __u32);
	__type(value, __u64);
} counts SEC(".maps");

/* Row width of `counts` (all sources together), set at load time. */
const volatile __u32 nr_features = 0;

static __always_inline void count_feature(__u64 feature)
{
	__u32 tgid = bpf_get_current_pid_tgid() >> 32;
	__u32 *slot;
	__u64 *val;
	__u32 key;

	slot = bpf_map_lookup_elem(&watched, &tgid);
	if (!slot)
		return;
	if (feature >= nr_features)
		return;
	key = *slot * nr_features + (__u32)feature;
	val = bpf_map_lookup_elem(&counts, &key);
	/*
	 * Per-CPU, but a task-context program can be preempted by another
	 * task hitting the same counter on this CPU: keep the add atomic.
	 */
	if (val)
		__sync_fetch_and_add(val, 1);
}

#endif /* VMWATCH_H */
