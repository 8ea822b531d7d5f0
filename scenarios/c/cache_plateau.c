/* Ground truth: NOT a leak. Fills a cache of --cache-mib linearly over
 * --fill-secs, then holds it (re-reading entries, as a cache would). The
 * fill looks like a leak; the plateau must clear the verdict. */
#include "common.h"

struct state {
	double cache_bytes;
	double fill_secs;
	size_t chunk;
	unsigned char **entries;
	size_t n_entries;
	size_t cap_entries;
	size_t cursor;
	unsigned long checksum;
};

/* Reads one byte per entry per tick, a few entries at a time: the cache is
 * used, so it is not swapped out or reclaimed under the test. */
static void read_some(struct state *s)
{
	size_t i;
	for (i = 0; i < 16 && s->n_entries > 0; i++) {
		s->checksum += s->entries[s->cursor][0];
		s->cursor = (s->cursor + 1) % s->n_entries;
	}
}

static int step(double elapsed, void *ctx)
{
	struct state *s = ctx;
	double progress = s->fill_secs > 0 ? elapsed / s->fill_secs : 1.0;
	double target = s->cache_bytes * (progress < 1.0 ? progress : 1.0);

	while (s->n_entries < s->cap_entries &&
	       (double)(s->n_entries + 1) * (double)s->chunk <= target)
		s->entries[s->n_entries++] = xmalloc_touched(s->chunk);
	read_some(s);
	return 0;
}

int main(int argc, char **argv)
{
	struct opt opts[] = {
		{ "cache-mib", 50, OPT_PLAIN, "final cache size" },
		{ "fill-secs", 180, OPT_DURATION, "time to fill the cache" },
		{ "chunk-kib", 64, OPT_PLAIN, "size of each cache entry" },
		COMMON_OPTS,
	};
	struct state s;

	setup(argc, argv, "cache_plateau", "Fills a cache, then holds it.", opts, NOPTS(opts));
	memset(&s, 0, sizeof(s));
	s.cache_bytes = opt(opts, NOPTS(opts), "cache-mib") * MIB;
	s.fill_secs = opt(opts, NOPTS(opts), "fill-secs");
	s.chunk = (size_t)(opt(opts, NOPTS(opts), "chunk-kib") * KIB);
	if (s.chunk == 0)
		s.chunk = 4096;
	s.cap_entries = (size_t)(s.cache_bytes / (double)s.chunk);
	s.entries = calloc(s.cap_entries + 1, sizeof(*s.entries));
	if (!s.entries)
		die("calloc");
	run_loop(opts, NOPTS(opts), step, &s);
	/* Keeps the reads observable. */
	if (s.checksum == 1)
		fprintf(stderr, "checksum %lu\n", s.checksum);
	return 0;
}
