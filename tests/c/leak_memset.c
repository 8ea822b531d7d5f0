/* A leak whose pages are first touched inside libc's memset: the leaking function mallocs a
 * block and fills it, and keeps it. Built by tests/tests/unwind.rs with and without frame
 * pointers; growth mode must charge the pages to leak_filled_block, not to main.
 *
 * Blocks are above the mmap threshold, so each is a fresh mapping whose pages memset touches
 * first. Prints "ready" once running; leaks `BLOCK` bytes every 20 ms for at most `LIMIT`
 * blocks (or until block `argv[1]`, then exits), then sleeps until killed. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <unistd.h>

#define BLOCK (256 * 1024)
#define LIMIT 1000

/* Not static, volatile: the compiler must not drop the blocks (and their fill) as unused. */
void *volatile kept[LIMIT];

__attribute__((noinline)) void leak_filled_block(int i) {
    char *p = malloc(BLOCK);
    if (p == NULL)
        abort();
    /* A non-zero fill: malloc + memset(0) may be folded into calloc. */
    memset(p, 1 + (i & 0x7f), BLOCK);
    kept[i] = p;
}

int main(int argc, char **argv) {
    int exit_after = argc > 1 ? atoi(argv[1]) : 0;
    /* Small pages: with transparent huge pages, one fault maps 2 MiB, taken by whichever
     * write comes first (often malloc's chunk header), and memset faults little. */
    prctl(PR_SET_THP_DISABLE, 1, 0, 0, 0);
    printf("ready\n");
    fflush(stdout);
    for (int i = 0; i < LIMIT; i++) {
        leak_filled_block(i);
        usleep(20000);
        if (exit_after > 0 && i == exit_after)
            return 0;
    }
    for (;;)
        pause();
}
