// SPDX-License-Identifier: (LGPL-2.1 OR BSD-2-Clause)
/*
 * Counts KVM tracepoint hits per watched process (the QEMU whose vCPU or
 * I/O thread hit them). One raw-tracepoint program is attached once per
 * tracepoint, its feature index as BPF cookie. Exit reasons come from the
 * classic `kvm_exit` tracepoint record, whose layout userspace reads from
 * tracefs, as kvm_stat does.
 */
#include "vmwatch.h"

/* Offset of exit_reason in the kvm_exit record; VMX masks it with 0xffff. */
const volatile __u32 exit_reason_off = 8;
const volatile __u32 exit_vmx = 0;
/* Feature index for reasons missing from exit_feature. */
const volatile __u32 exit_other = 0;

/* Exit reason -> feature index + 1. Filled by userspace. */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 1024);
	__type(key, __u32);
	__type(value, __u32);
} exit_feature SEC(".maps");

SEC("raw_tp")
int count_kvm(void *ctx)
{
	count_feature(bpf_get_attach_cookie(ctx));
	return 0;
}

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
