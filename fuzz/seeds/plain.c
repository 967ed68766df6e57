#include <sys/sdt.h>

void plain(long n)
{
    STAP_PROBE1(other, unguarded, n);
}
