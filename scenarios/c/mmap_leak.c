/* Ground truth for stack attribution without malloc: two anonymous-mmap
 * call paths, one leaking.
 *
 *   main -> run_loop -> map_and_keep      maps 64 KiB, writes every page,
 *                                         never unmaps (--leak-kib-per-s)
 *   main -> run_loop -> map_and_release   maps 64 KiB, writes every page,
 *                                         unmaps at once, more often
 *                                         (--churn-kib-per-s)
 *
 * An allocator probe sees nothing here; a tracer of mmap/munmap and page
 * faults must blame map_and_keep. Build with frame pointers (the Makefile
 * does) so the kernel can walk these stacks. */

/* common.h has a pacing helper called run_loop; here that name belongs to the
 * frame the tracers must see, so the helper is renamed (and not used). */
#define run_loop common_run_loop
#include "common.h"
#undef run_loop

#define PAGE_STRIDE 4096
#define REGION_BYTES ((size_t)64 * 1024)

struct state {
	double leak_rate;  /* bytes per second */
	double churn_rate; /* bytes per second */
	double leaked;
	double churned;
};

/* Both paths map and write in their own body rather than through a shared
 * helper: a helper, even inlined, would appear as a frame of its own in
 * debug-info symbolization. */

/* The leak: the mapping's address is dropped, it is never unmapped. */
static __attribute__((noinline)) void map_and_keep(void)
{
	volatile char *p = mmap(NULL, REGION_BYTES, PROT_READ | PROT_WRITE,
				MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	size_t off;

	if (p == MAP_FAILED)
		die("mmap");
	for (off = 0; off < REGION_BYTES; off += PAGE_STRIDE)
		p[off] = (char)0xA5;
}

static __attribute__((noinline)) void map_and_release(void)
{
	volatile char *p = mmap(NULL, REGION_BYTES, PROT_READ | PROT_WRITE,
				MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	size_t off;

	if (p == MAP_FAILED)
		die("mmap");
	for (off = 0; off < REGION_BYTES; off += PAGE_STRIDE)
		p[off] = (char)0xA5;
	if (munmap((void *)p, REGION_BYTES) != 0)
		die("munmap");
}

/* Paces both paths on absolute deadlines until --duration or a signal. (The
 * calls are in this function, not a helper, so that the stacks read
 * main -> run_loop -> map_and_keep.) */
static __attribute__((noinline)) void run_loop(struct state *s, double duration, double tick)
{
	double t0 = now_secs();
	double next = t0;

	while (!g_stop) {
		double t = now_secs();
		double elapsed = t - t0;
		if (duration > 0 && elapsed >= duration)
			break;
		while (s->leaked + (double)REGION_BYTES <= s->leak_rate * elapsed) {
			map_and_keep();
			s->leaked += (double)REGION_BYTES;
		}
		while (s->churned + (double)REGION_BYTES <= s->churn_rate * elapsed) {
			map_and_release();
			s->churned += (double)REGION_BYTES;
		}
		next += tick;
		/* After a stall (SIGSTOP, overload) resume from now, not in a burst. */
		if (next < t)
			next = t + tick;
		if (duration > 0 && next > t0 + duration)
			next = t0 + duration;
		sleep_until(next);
	}
}

int main(int argc, char **argv)
{
	struct opt opts[] = {
		{ "leak-kib-per-s", 256, OPT_RATE, "leaked through map_and_keep, KiB per second" },
		{ "churn-kib-per-s", 8192, OPT_RATE, "mmap+munmap through map_and_release, KiB per second" },
		COMMON_OPTS,
	};
	struct state s;
	double tick;

	setup(argc, argv, "mmap_leak",
	      "Leaks 64 KiB anonymous mappings through map_and_keep(), churns them "
	      "through map_and_release().",
	      opts, NOPTS(opts));
	memset(&s, 0, sizeof(s));
	s.leak_rate = opt(opts, NOPTS(opts), "leak-kib-per-s") * KIB;
	s.churn_rate = opt(opts, NOPTS(opts), "churn-kib-per-s") * KIB;
	tick = opt(opts, NOPTS(opts), "tick-ms") / 1000.0;
	if (tick < 0.001)
		tick = 0.001;
	run_loop(&s, opt(opts, NOPTS(opts), "duration"), tick);
	return 0;
}
