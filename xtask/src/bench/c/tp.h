/* LTTng-UST provider of `cargo xtask bench overhead`'s per-event test:
 * one event shaped like QEMU's exec_tb (a pointer and a pc). */
#undef LTTNG_UST_TRACEPOINT_PROVIDER
#define LTTNG_UST_TRACEPOINT_PROVIDER qemu

#undef LTTNG_UST_TRACEPOINT_INCLUDE
#define LTTNG_UST_TRACEPOINT_INCLUDE "./tp.h"

#if !defined(BENCH_TP_H) || defined(LTTNG_UST_TRACEPOINT_HEADER_MULTI_READ)
#define BENCH_TP_H

#include <stdint.h>
#include <lttng/tracepoint.h>

LTTNG_UST_TRACEPOINT_EVENT(
    qemu, bench_event,
    LTTNG_UST_TP_ARGS(void *, tb, uintptr_t, pc),
    LTTNG_UST_TP_FIELDS(
        lttng_ust_field_integer_hex(uintptr_t, tb, (uintptr_t)tb)
        lttng_ust_field_integer_hex(uintptr_t, pc, pc)))

#endif

#include <lttng/tracepoint-event.h>
