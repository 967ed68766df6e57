/* Seeds of the stapsdt fuzz target: USDT probes as QEMU's dtrace backend
 * emits them (provider `qemu`, each behind a semaphore in `.probes`); with
 * -DNOP5 the sites are 5-byte nops, as in the lab's QEMU. plain.c adds a
 * probe of another provider without a semaphore. */
#define _SDT_HAS_SEMAPHORES 1
#include <sys/sdt.h>
#ifdef NOP5
#undef _SDT_NOP
#define _SDT_NOP .byte 0x0f; .byte 0x1f; .byte 0x44; .byte 0x00; .byte 0x00
#endif

__extension__ unsigned short qemu_tap_send_semaphore
    __attribute__((unused)) __attribute__((section(".probes")));
__extension__ unsigned short qemu_virtqueue_fill_semaphore
    __attribute__((unused)) __attribute__((section(".probes")));

void plain(long n);

#ifdef TINY
/* No libc: a static executable of about a page. */
void _start(void)
{
    for (long n = 0;; n++) {
        if (qemu_tap_send_semaphore)
            STAP_PROBE2(qemu, tap_send, &n, n);
        if (qemu_virtqueue_fill_semaphore)
            STAP_PROBE1(qemu, virtqueue_fill, n);
        plain(n);
    }
}
#else
int main(int argc, char **argv)
{
    if (qemu_tap_send_semaphore)
        STAP_PROBE2(qemu, tap_send, argv, argc);
    if (qemu_virtqueue_fill_semaphore)
        STAP_PROBE1(qemu, virtqueue_fill, argc);
    plain(argc);
    return 0;
}
#endif
