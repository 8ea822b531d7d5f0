/* Ground truth: NOT a leak. Holds --base-mib, and once every --period-secs
 * allocates --burst-mib for --burst-secs (the last burst-secs of each
 * period), then frees it and calls malloc_trim so RSS really drops. */
#include <malloc.h>

#include "common.h"

struct state {
	double period;
	double burst_secs;
	size_t chunk;
	void **chunks;
	size_t n_chunks;
	size_t cap_chunks;
};

static void release(struct state *s)
{
	size_t i;
	if (s->n_chunks == 0)
		return;
	for (i = 0; i < s->n_chunks; i++)
		free(s->chunks[i]);
	s->n_chunks = 0;
	malloc_trim(0);
}

static int step(double elapsed, void *ctx)
{
	struct state *s = ctx;
	double phase = elapsed - (double)(long)(elapsed / s->period) * s->period;

	if (phase >= s->period - s->burst_secs) {
		while (s->n_chunks < s->cap_chunks)
			s->chunks[s->n_chunks++] = xmalloc_touched(s->chunk);
	} else {
		release(s);
	}
	return 0;
}

int main(int argc, char **argv)
{
	struct opt opts[] = {
		{ "base-mib", 32, OPT_PLAIN, "retained working set" },
		{ "burst-mib", 200, OPT_PLAIN, "extra memory held during a burst" },
		{ "burst-secs", 30, OPT_DURATION, "how long a burst is held" },
		{ "period-secs", 120, OPT_DURATION, "one burst per period (at its end)" },
		{ "chunk-kib", 64, OPT_PLAIN, "malloc size used for a burst" },
		COMMON_OPTS,
	};
	struct state s;

	setup(argc, argv, "bursty", "Periodic bursts that are freed.", opts, NOPTS(opts));
	memset(&s, 0, sizeof(s));
	s.period = opt(opts, NOPTS(opts), "period-secs");
	s.burst_secs = opt(opts, NOPTS(opts), "burst-secs");
	s.chunk = (size_t)(opt(opts, NOPTS(opts), "chunk-kib") * KIB);
	if (s.chunk == 0)
		s.chunk = 4096;
	if (s.period <= 0 || s.burst_secs > s.period) {
		fprintf(stderr, "need 0 < --burst-secs <= --period-secs\n");
		return 2;
	}
	s.cap_chunks = (size_t)(opt(opts, NOPTS(opts), "burst-mib") * MIB / (double)s.chunk);
	s.chunks = calloc(s.cap_chunks + 1, sizeof(*s.chunks));
	if (!s.chunks)
		die("calloc");
	if (opt(opts, NOPTS(opts), "base-mib") > 0)
		xmalloc_touched((size_t)(opt(opts, NOPTS(opts), "base-mib") * MIB));
	run_loop(opts, NOPTS(opts), step, &s);
	release(&s);
	free(s.chunks);
	return 0;
}
