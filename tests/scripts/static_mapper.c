/* A static binary for the per-thread tests: no libc is mapped, so its memory calls can only be
 * probed in the binary itself, where its symbol table (unless stripped) names them.
 * Prints "ready", maps and touches 64 MiB when stdin says "go", prints "mapped", exits at
 * end of input. */
#include <stdio.h>
#include <string.h>
#include <sys/mman.h>

int main(void) {
    char line[64];
    setvbuf(stdout, NULL, _IONBF, 0);
    printf("ready\n");
    while (fgets(line, sizeof line, stdin)) {
        if (strncmp(line, "go", 2) == 0) {
            size_t len = 64u << 20;
            char *p = mmap(NULL, len, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
            if (p == MAP_FAILED)
                return 1;
            for (size_t off = 0; off < len; off += 4096)
                p[off] = 1;
            printf("mapped\n");
        }
    }
    return 0;
}
