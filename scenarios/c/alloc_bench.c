/* Allocator-probe cost benchmark (not a leak scenario): --pairs malloc/free
 * pairs of pseudo-random 16..4096-byte sizes through a ring of --slots live
 * pointers, so every free hits an allocation made --slots iterations earlier.
 *
 * Handshake, so a tracer can attach before the measured loop:
 *   1. prints the usual JSON start line (libc is mapped by then);
 *   2. waits for one line on stdin (e.g. "go"; EOF also starts the run);
 *   3. runs, prints {"pairs":N,"elapsed_ns":T,"ns_per_pair":X};
 *   4. exits when stdin reaches EOF, so the tracer can be stopped while the
 *      process still exists (`echo go | alloc_bench` does it all at once).
 * SIGINT/SIGTERM or --duration end the loop early; "pairs" is what ran. */
#include "common.h"

#define MIN_SIZE 16
#define MAX_SIZE 4096
/* The stop flag and the clock are read this often, not on every pair. */
#define CHECK_EVERY 4096

static uint64_t next_random(uint64_t *x)
{
	*x ^= *x << 13;
	*x ^= *x >> 7;
	*x ^= *x << 17;
	return *x;
}

static size_t random_size(uint64_t *rng)
{
	return MIN_SIZE + (size_t)(next_random(rng) % (MAX_SIZE - MIN_SIZE + 1));
}

static char *malloc_touched_byte(size_t size, uint64_t i)
{
	char *p = malloc(size);
	if (!p)
		die("malloc");
	p[0] = (char)i;
	/* The pointer escapes, so the malloc/free pair cannot be elided. */
	__asm__ __volatile__("" : : "r"(p) : "memory");
	return p;
}

static void wait_for_go(void)
{
	char line[64];

	if (fgets(line, sizeof(line), stdin) || !ferror(stdin))
		return;
	if (g_stop) /* SIGINT/SIGTERM before the start: nothing to report */
		exit(0);
	die("reading stdin");
}

static void wait_for_eof(void)
{
	char line[64];

	while (fgets(line, sizeof(line), stdin))
		;
}

static uint64_t now_ns(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

/* Returns the pairs done: all of them unless stopped early. */
static uint64_t run_pairs(char **ring, size_t slots, uint64_t pairs, double duration,
			  uint64_t *rng)
{
	double deadline = duration > 0 ? now_secs() + duration : 0;
	size_t slot = 0;
	uint64_t i;

	for (i = 0; i < pairs; i++, slot = slot + 1 == slots ? 0 : slot + 1) {
		if (i % CHECK_EVERY == 0 && i > 0 &&
		    (g_stop || (deadline > 0 && now_secs() >= deadline)))
			break;
		free(ring[slot]);
		ring[slot] = malloc_touched_byte(random_size(rng), i);
	}
	return i;
}

int main(int argc, char **argv)
{
	struct opt opts[] = {
		{ "pairs", 2000000, OPT_PLAIN, "malloc/free pairs to run" },
		{ "slots", 64, OPT_PLAIN, "live allocations in the ring" },
		COMMON_OPTS,
	};
	uint64_t rng = UINT64_C(0x9E3779B97F4A7C15);
	uint64_t pairs, done, t0, elapsed;
	size_t slots, i;
	char **ring;

	setup(argc, argv, "alloc_bench",
	      "malloc/free microbenchmark; waits for a line on stdin before the timed loop.",
	      opts, NOPTS(opts));
	pairs = (uint64_t)opt(opts, NOPTS(opts), "pairs");
	slots = (size_t)opt(opts, NOPTS(opts), "slots");
	if (slots == 0)
		slots = 1;
	ring = calloc(slots, sizeof(*ring));
	if (!ring)
		die("calloc");
	/* Filled before the handshake, so every timed free releases a real block. */
	for (i = 0; i < slots; i++)
		ring[i] = malloc_touched_byte(random_size(&rng), i);

	wait_for_go();
	t0 = now_ns();
	done = run_pairs(ring, slots, pairs, opt(opts, NOPTS(opts), "duration"), &rng);
	elapsed = now_ns() - t0;

	printf("{\"pairs\":%llu,\"elapsed_ns\":%llu,\"ns_per_pair\":%.3f}\n",
	       (unsigned long long)done, (unsigned long long)elapsed,
	       done ? (double)elapsed / (double)done : 0.0);
	fflush(stdout);
	for (i = 0; i < slots; i++)
		free(ring[i]);
	free(ring);
	wait_for_eof();
	return 0;
}
