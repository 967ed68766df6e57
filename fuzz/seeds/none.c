/* A seed of the stapsdt fuzz target without SDT notes. */
void _start(void)
{
    for (;;)
        ;
}
