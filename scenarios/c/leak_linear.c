/* Ground truth: leaks --rate-mib-per-min through malloc, never freed.
 * Chunks default to 64 KiB, below glibc's mmap threshold, so the leak grows
 * the brk heap like most small-object leaks do. */
#include "common.h"

struct state {
	double rate;  /* bytes per second */
	size_t chunk; /* bytes per malloc */
	double cap;   /* stop leaking past this many bytes (0 = no cap) */
	double leaked;
};

static int step(double elapsed, void *ctx)
{
	struct state *s = ctx;
	double target = s->rate * elapsed;

	while (s->leaked + (double)s->chunk <= target) {
		xmalloc_touched(s->chunk); /* the leak: pointer dropped */
		s->leaked += (double)s->chunk;
	}
	if (s->cap > 0 && s->leaked >= s->cap) {
		fprintf(stderr, "leak_linear: --max-mib reached, exiting\n");
		return 1;
	}
	return 0;
}

int main(int argc, char **argv)
{
	struct opt opts[] = {
		{ "rate-mib-per-min", 10, OPT_RATE, "leak rate in MiB per minute" },
		{ "chunk-kib", 64, OPT_PLAIN, "size of each leaked malloc" },
		{ "base-mib", 0, OPT_PLAIN, "touched, retained allocation at start" },
		{ "max-mib", 8192, OPT_PLAIN, "exit once this much leaked (0 = never)" },
		COMMON_OPTS,
	};
	struct state s;

	setup(argc, argv, "leak_linear", "Leaks memory at a constant rate via malloc.",
	      opts, NOPTS(opts));
	s.rate = opt(opts, NOPTS(opts), "rate-mib-per-min") * MIB / 60.0;
	s.chunk = (size_t)(opt(opts, NOPTS(opts), "chunk-kib") * KIB);
	s.cap = opt(opts, NOPTS(opts), "max-mib") * MIB;
	s.leaked = 0;
	if (s.chunk == 0)
		s.chunk = 4096;
	if (opt(opts, NOPTS(opts), "base-mib") > 0)
		xmalloc_touched((size_t)(opt(opts, NOPTS(opts), "base-mib") * MIB));
	run_loop(opts, NOPTS(opts), step, &s);
	return 0;
}
