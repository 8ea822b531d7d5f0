/* Ground truth: leaks --rate-mib-per-min through anonymous private mmaps,
 * never unmapped and never going through malloc (an allocator-level probe
 * sees nothing; only RSS and the mmap syscalls reveal it). */
#include "common.h"

struct state {
	double rate;
	size_t chunk;
	double cap;
	double leaked;
};

static int step(double elapsed, void *ctx)
{
	struct state *s = ctx;
	double target = s->rate * elapsed;

	while (s->leaked + (double)s->chunk <= target) {
		xmmap_touched(s->chunk);
		s->leaked += (double)s->chunk;
	}
	if (s->cap > 0 && s->leaked >= s->cap) {
		fprintf(stderr, "leak_mmap: --max-mib reached, exiting\n");
		return 1;
	}
	return 0;
}

int main(int argc, char **argv)
{
	struct opt opts[] = {
		{ "rate-mib-per-min", 10, OPT_RATE, "leak rate in MiB per minute" },
		{ "chunk-kib", 256, OPT_PLAIN, "size of each leaked mapping" },
		{ "max-mib", 8192, OPT_PLAIN, "exit once this much leaked (0 = never)" },
		COMMON_OPTS,
	};
	struct state s;
	long page = sysconf(_SC_PAGESIZE);

	setup(argc, argv, "leak_mmap", "Leaks anonymous mmap memory at a constant rate.",
	      opts, NOPTS(opts));
	s.rate = opt(opts, NOPTS(opts), "rate-mib-per-min") * MIB / 60.0;
	s.chunk = (size_t)(opt(opts, NOPTS(opts), "chunk-kib") * KIB);
	if (page <= 0)
		page = 4096;
	/* Whole pages, so the rate is exactly what RSS shows. */
	s.chunk = (s.chunk + (size_t)page - 1) / (size_t)page * (size_t)page;
	if (s.chunk == 0)
		s.chunk = (size_t)page;
	s.cap = opt(opts, NOPTS(opts), "max-mib") * MIB;
	s.leaked = 0;
	run_loop(opts, NOPTS(opts), step, &s);
	return 0;
}
