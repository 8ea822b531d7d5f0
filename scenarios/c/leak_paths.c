/* Ground truth for stack attribution: two malloc call paths, one leaking.
 *
 *   main -> run_loop -> leak_here    mallocs 1-16 KiB chunks, writes every
 *                                    page itself, keeps them forever
 *                                    (--leak-kib-per-s)
 *   main -> run_loop -> churn_here   same kind of chunks, written and freed
 *                                    at once, far more often
 *                                    (--churn-kib-per-s)
 *
 * A tracer that samples page faults must blame leak_here (the pages are
 * first written in that frame, not in memset; glibc's own chunk headers fault
 * some in malloc); one that tracks malloc/free
 * must report leak_here's allocations as outstanding and churn_here's as
 * freed. Build with frame pointers (the Makefile does) so the kernel can
 * walk these stacks. */

/* common.h has a pacing helper called run_loop; here that name belongs to the
 * frame the tracers must see, so the helper is renamed (and not used). */
#define run_loop common_run_loop
#include "common.h"
#undef run_loop

#include <malloc.h>

#define PAGE_STRIDE 4096
#define MAX_CHUNK_KIB 16

struct state {
	double leak_rate;  /* bytes per second */
	double churn_rate; /* bytes per second */
	double leaked;
	double churned;
	size_t next_leak_size;
	size_t next_churn_size;
	void **kept; /* grows forever: the leaked pointers stay reachable */
	size_t n_kept;
	size_t cap_kept;
	uint64_t rng;
};

static uint64_t next_random(uint64_t *x)
{
	*x ^= *x << 13;
	*x ^= *x >> 7;
	*x ^= *x << 17;
	return *x;
}

/* 1..16 KiB, varied, so allocation sizes do not identify the path. */
static size_t random_chunk_size(uint64_t *rng)
{
	return (size_t)(1 + next_random(rng) % MAX_CHUNK_KIB) * 1024;
}

/* Its own frame, so the growing array is not mistaken for leak_here's chunks. */
static __attribute__((noinline)) void keep_pointer(struct state *s, void *p)
{
	if (s->n_kept == s->cap_kept) {
		size_t cap = s->cap_kept ? s->cap_kept * 2 : 1024;
		void **grown = realloc(s->kept, cap * sizeof(*grown));
		if (!grown)
			die("realloc");
		s->kept = grown;
		s->cap_kept = cap;
	}
	s->kept[s->n_kept++] = p;
}

/* The page-writing loops are spelled out in leak_here and churn_here rather
 * than shared: a helper, even inlined, would appear as a frame of its own in
 * debug-info symbolization. The last byte covers a chunk's last page. */
static __attribute__((noinline)) void leak_here(struct state *s, size_t size)
{
	volatile char *p = malloc(size);
	size_t off;

	if (!p)
		die("malloc");
	for (off = 0; off < size; off += PAGE_STRIDE)
		p[off] = (char)0xA5;
	p[size - 1] = (char)0xA5;
	keep_pointer(s, (void *)p);
}

static __attribute__((noinline)) void churn_here(size_t size)
{
	volatile char *p = malloc(size);
	size_t off;

	if (!p)
		die("malloc");
	for (off = 0; off < size; off += PAGE_STRIDE)
		p[off] = (char)0xA5;
	p[size - 1] = (char)0xA5;
	free((void *)p);
}

/* Paces both paths on absolute deadlines until --duration or a signal. Each
 * tick leaks first, then churns, then gives the freed pages back: glibc would
 * keep freed memory at the top of the heap resident, churn_here (far busier)
 * would fault those pages in before leak_here is handed them, and the leak's
 * page faults would land in churn_here. With the trim, each tick's leaked
 * chunks come from pages nobody has touched. (The calls are in this function,
 * not a helper, so that the stacks read main -> run_loop -> leak_here.) */
static __attribute__((noinline)) void run_loop(struct state *s, double duration, double tick)
{
	double t0 = now_secs();
	double next = t0;

	while (!g_stop) {
		double t = now_secs();
		double elapsed = t - t0;
		if (duration > 0 && elapsed >= duration)
			break;
		while (s->leaked + (double)s->next_leak_size <= s->leak_rate * elapsed) {
			leak_here(s, s->next_leak_size);
			s->leaked += (double)s->next_leak_size;
			s->next_leak_size = random_chunk_size(&s->rng);
		}
		while (s->churned + (double)s->next_churn_size <= s->churn_rate * elapsed) {
			churn_here(s->next_churn_size);
			s->churned += (double)s->next_churn_size;
			s->next_churn_size = random_chunk_size(&s->rng);
		}
		malloc_trim(0);
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
		{ "leak-kib-per-s", 256, OPT_RATE, "leaked through leak_here, KiB per second" },
		{ "churn-kib-per-s", 8192, OPT_RATE, "malloc+free through churn_here, KiB per second" },
		COMMON_OPTS,
	};
	struct state s;
	double tick;

	setup(argc, argv, "leak_paths",
	      "Leaks through leak_here(), churns (malloc+free) through churn_here().",
	      opts, NOPTS(opts));
	memset(&s, 0, sizeof(s));
	s.leak_rate = opt(opts, NOPTS(opts), "leak-kib-per-s") * KIB;
	s.churn_rate = opt(opts, NOPTS(opts), "churn-kib-per-s") * KIB;
	s.rng = UINT64_C(0x9E3779B97F4A7C15) ^ (uint64_t)(unsigned)getpid();
	s.next_leak_size = random_chunk_size(&s.rng);
	s.next_churn_size = random_chunk_size(&s.rng);
	tick = opt(opts, NOPTS(opts), "tick-ms") / 1000.0;
	if (tick < 0.001)
		tick = 0.001;
	run_loop(&s, opt(opts, NOPTS(opts), "duration"), tick);
	return 0;
}
