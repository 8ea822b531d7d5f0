/* Ground truth: leaks --step-mib every --period-secs (first step after one
 * period), e.g. a per-batch leak. Average rate = step / period. */
#include "common.h"

struct state {
	double step_bytes;
	double period;
	size_t chunk;
	double cap;
	long steps_done;
};

static void leak_bytes(double bytes, size_t chunk)
{
	double done = 0;
	while (done < bytes) {
		xmalloc_touched(chunk);
		done += (double)chunk;
	}
}

static int step(double elapsed, void *ctx)
{
	struct state *s = ctx;
	long due = (long)(elapsed / s->period);

	while (s->steps_done < due) {
		leak_bytes(s->step_bytes, s->chunk);
		s->steps_done++;
	}
	if (s->cap > 0 && (double)s->steps_done * s->step_bytes >= s->cap) {
		fprintf(stderr, "leak_stepped: --max-mib reached, exiting\n");
		return 1;
	}
	return 0;
}

int main(int argc, char **argv)
{
	struct opt opts[] = {
		{ "step-mib", 8, OPT_PLAIN, "MiB leaked at each step" },
		{ "period-secs", 60, OPT_DURATION, "seconds between steps" },
		{ "chunk-kib", 64, OPT_PLAIN, "malloc size used to leak a step" },
		{ "max-mib", 8192, OPT_PLAIN, "exit once this much leaked (0 = never)" },
		COMMON_OPTS,
	};
	struct state s;

	setup(argc, argv, "leak_stepped", "Leaks a fixed amount every period.",
	      opts, NOPTS(opts));
	s.step_bytes = opt(opts, NOPTS(opts), "step-mib") * MIB;
	s.period = opt(opts, NOPTS(opts), "period-secs");
	s.chunk = (size_t)(opt(opts, NOPTS(opts), "chunk-kib") * KIB);
	s.cap = opt(opts, NOPTS(opts), "max-mib") * MIB;
	s.steps_done = 0;
	if (s.chunk == 0)
		s.chunk = 4096;
	if (s.period <= 0) {
		fprintf(stderr, "--period-secs must be > 0\n");
		return 2;
	}
	run_loop(opts, NOPTS(opts), step, &s);
	return 0;
}
