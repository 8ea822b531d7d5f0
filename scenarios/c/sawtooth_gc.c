/* Ground truth: a garbage-collected heap. Garbage is allocated steadily up
 * to --amplitude-mib above the floor, then "collected" all at once (munmap,
 * so RSS really drops), every --period-secs. The floor (live data) rises at
 * --floor-rise-mib-per-min: 0 is NOT a leak, anything above is one. */
#include "common.h"

struct state {
	double amplitude;    /* bytes of garbage at the end of a cycle */
	double period;       /* seconds per GC cycle */
	size_t chunk;        /* bytes per garbage mapping */
	void **garbage;      /* live garbage mappings */
	size_t n_garbage;
	size_t cap_garbage;
	long cycle;
	double floor_rate;   /* bytes per second retained forever */
	size_t floor_chunk;
	double floor_leaked;
};

static void collect(struct state *s)
{
	size_t i;
	for (i = 0; i < s->n_garbage; i++)
		if (munmap(s->garbage[i], s->chunk) != 0)
			die("munmap");
	s->n_garbage = 0;
}

static void grow_floor(struct state *s, double elapsed)
{
	double target = s->floor_rate * elapsed;
	while (s->floor_leaked + (double)s->floor_chunk <= target) {
		xmalloc_touched(s->floor_chunk);
		s->floor_leaked += (double)s->floor_chunk;
	}
}

static int step(double elapsed, void *ctx)
{
	struct state *s = ctx;
	long cycle = (long)(elapsed / s->period);
	double target;

	grow_floor(s, elapsed);
	if (cycle != s->cycle) {
		collect(s);
		s->cycle = cycle;
	}
	target = s->amplitude * (elapsed - (double)cycle * s->period) / s->period;
	while (s->n_garbage < s->cap_garbage &&
	       (double)(s->n_garbage + 1) * (double)s->chunk <= target)
		s->garbage[s->n_garbage++] = xmmap_touched(s->chunk);
	return 0;
}

int main(int argc, char **argv)
{
	struct opt opts[] = {
		{ "floor-mib", 64, OPT_PLAIN, "live data retained from the start" },
		{ "amplitude-mib", 64, OPT_PLAIN, "garbage accumulated per GC cycle" },
		{ "period-secs", 30, OPT_DURATION, "seconds per GC cycle" },
		{ "floor-rise-mib-per-min", 0, OPT_RATE, "leak under the sawtooth (0 = none)" },
		{ "chunk-kib", 1024, OPT_PLAIN, "size of each garbage mapping" },
		COMMON_OPTS,
	};
	struct state s;
	long page = sysconf(_SC_PAGESIZE);

	setup(argc, argv, "sawtooth_gc", "GC-like sawtooth with an optional rising floor.",
	      opts, NOPTS(opts));
	memset(&s, 0, sizeof(s));
	s.amplitude = opt(opts, NOPTS(opts), "amplitude-mib") * MIB;
	s.period = opt(opts, NOPTS(opts), "period-secs");
	s.floor_rate = opt(opts, NOPTS(opts), "floor-rise-mib-per-min") * MIB / 60.0;
	s.floor_chunk = 64 * 1024;
	if (page <= 0)
		page = 4096;
	s.chunk = (size_t)(opt(opts, NOPTS(opts), "chunk-kib") * KIB);
	s.chunk = (s.chunk + (size_t)page - 1) / (size_t)page * (size_t)page;
	if (s.chunk == 0)
		s.chunk = (size_t)page;
	if (s.period <= 0) {
		fprintf(stderr, "--period-secs must be > 0\n");
		return 2;
	}
	s.cap_garbage = (size_t)(s.amplitude / (double)s.chunk) + 1;
	s.garbage = calloc(s.cap_garbage, sizeof(*s.garbage));
	if (!s.garbage)
		die("calloc");
	if (opt(opts, NOPTS(opts), "floor-mib") > 0)
		xmalloc_touched((size_t)(opt(opts, NOPTS(opts), "floor-mib") * MIB));
	run_loop(opts, NOPTS(opts), step, &s);
	collect(&s);
	free(s.garbage);
	return 0;
}
