/* `cargo xtask bench overhead`, per-event cost: fires one trace point the
 * way QEMU's dtrace,ust build does (a USDT probe behind its semaphore, then
 * the LTTng-UST tracepoint behind its enabled check), N times on command.
 *
 * stdin: `run N`  -> `ns TOTAL N`  (wall time of the loop, CLOCK_MONOTONIC)
 *        `state`  -> `state USDT_SEMAPHORE LTTNG_ENABLED`
 * On start it prints `ready PID`.
 *
 * With -DBENCH_NOP5 the probe site is a 5-byte nop instead of sys/sdt.h's
 * 1-byte nop: Linux 6.18 turns such a site into a call to a trampoline and
 * the uprobe syscall ("optimized uprobe") instead of an int3 trap. */
#define _GNU_SOURCE
#define _SDT_HAS_SEMAPHORES 1
#include <stdio.h>
#include <stdint.h>
#include <string.h>
#include <time.h>
#include <unistd.h>
#include <sys/sdt.h>
#ifdef BENCH_NOP5
#undef _SDT_NOP
#define _SDT_NOP .byte 0x0f; .byte 0x1f; .byte 0x44; .byte 0x00; .byte 0x00
#endif
#include "tp.h"

__extension__ unsigned short qemu_bench_event_semaphore
    __attribute__((unused)) __attribute__((section(".probes")));

static __attribute__((noinline)) void trace_bench_event(void *tb, uintptr_t pc)
{
    if (__builtin_expect(qemu_bench_event_semaphore, 0))
        STAP_PROBE2(qemu, bench_event, tb, pc);
    if (lttng_ust_tracepoint_enabled(qemu, bench_event))
        lttng_ust_do_tracepoint(qemu, bench_event, tb, pc);
}

int main(void)
{
    char line[128];
    setvbuf(stdout, NULL, _IOLBF, 0);
    printf("ready %d\n", (int)getpid());
    while (fgets(line, sizeof line, stdin)) {
        unsigned long n;
        if (sscanf(line, "run %lu", &n) == 1) {
            struct timespec a, b;
            clock_gettime(CLOCK_MONOTONIC, &a);
            for (unsigned long i = 0; i < n; i++)
                trace_bench_event((void *)line, (uintptr_t)i);
            clock_gettime(CLOCK_MONOTONIC, &b);
            printf("ns %lld %lu\n",
                   (long long)(b.tv_sec - a.tv_sec) * 1000000000LL + (b.tv_nsec - a.tv_nsec), n);
        } else if (strncmp(line, "state", 5) == 0) {
            printf("state %u %d\n", qemu_bench_event_semaphore,
                   lttng_ust_tracepoint_enabled(qemu, bench_event) ? 1 : 0);
        }
    }
    return 0;
}
