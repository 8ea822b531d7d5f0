/* A leak whose pages are first touched inside libc's memset: the leaking function mallocs a
 * block and fills it, and keeps it. Built by tests/tests/unwind.rs with and without frame
 * pointers; growth mode must charge the pages to leak_filled_block, not to main.
 *
 * Blocks are above the mmap threshold, so each is a fresh mapping whose pages memset touches
 * first. Prints "ready" once running; leaks `BLOCK` bytes every 20 ms for at most `LIMIT`
 * blocks (or until block `argv[1]`, then exits), then sleeps until killed. With `argv[2]` =
 * N, each block is leaked N calls deep (256 bytes of stack each), so the stack at the leak
 * is larger than the slice the kernel copies for unwinding. */
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

/* Recurses `depth` times before leaking; the buffer keeps each frame 256 bytes and the use
 * after the call keeps it from being a tail call. */
__attribute__((noinline)) int leak_deep(int depth, int i) {
    volatile char pad[256];
    pad[0] = (char)depth;
    if (depth == 0) {
        leak_filled_block(i);
        return pad[0];
    }
    return leak_deep(depth - 1, i) + pad[0];
}

int main(int argc, char **argv) {
    int exit_after = argc > 1 ? atoi(argv[1]) : 0;
    int depth = argc > 2 ? atoi(argv[2]) : 0;
    /* Small pages: with transparent huge pages, one fault maps 2 MiB, taken by whichever
     * write comes first (often malloc's chunk header), and memset faults little. */
    prctl(PR_SET_THP_DISABLE, 1, 0, 0, 0);
    printf("ready\n");
    fflush(stdout);
    for (int i = 0; i < LIMIT; i++) {
        if (depth > 0)
            leak_deep(depth, i);
        else
            leak_filled_block(i);
        usleep(20000);
        if (exit_after > 0 && i == exit_after)
            return 0;
    }
    for (;;)
        pause();
}
