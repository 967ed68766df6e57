// SPDX-License-Identifier: (LGPL-2.1 OR BSD-2-Clause)
/*
 * Counts hits of QEMU's USDT probes. Attached with one uprobe_multi link
 * per QEMU binary covering every selected probe site; each site carries its
 * feature index as the BPF cookie, so no USDT argument parsing is needed.
 */
#include "vmwatch.h"

SEC("uprobe.multi")
int count_usdt(void *ctx)
{
	count_feature(bpf_get_attach_cookie(ctx));
	return 0;
}

char LICENSE[] SEC("license") = "Dual BSD/GPL";
