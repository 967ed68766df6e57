// SPDX-License-Identifier: (LGPL-2.1 OR BSD-2-Clause)
/*
 * Counts system calls entered by any thread of a watched process, by
 * syscall number. Raw tracepoint: no tracefs needed. Every syscall on the
 * host pays the feature and watched-tgid lookups; only watched processes
 * pay more.
 */
#include "vmwatch.h"

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

char LICENSE[] SEC("license") = "Dual BSD/GPL";
