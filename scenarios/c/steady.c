/* Ground truth: NOT a leak. A fixed working set of --working-set-mib split
 * into --chunk-kib slots; every second --churn-per-sec random slots are
 * freed and reallocated (and rewritten), like a busy but healthy worker. */
#include "common.h"

struct state {
	void **slots;
	size_t n_slots;
	size_t chunk;
	double churn_rate; /* reallocations per second */
	double churned;
	uint64_t rng;
};

static uint64_t next_random(uint64_t *x)
{
	*x ^= *x << 13;
	*x ^= *x >> 7;
	*x ^= *x << 17;
	return *x;
}

static int step(double elapsed, void *ctx)
{
	struct state *s = ctx;
	double target = s->churn_rate * elapsed;

	while (s->churned + 1 <= target) {
		size_t i = (size_t)(next_random(&s->rng) % s->n_slots);
		free(s->slots[i]);
		s->slots[i] = xmalloc_touched(s->chunk);
		s->churned += 1;
	}
	return 0;
}

int main(int argc, char **argv)
{
	struct opt opts[] = {
		{ "working-set-mib", 64, OPT_PLAIN, "memory kept live" },
		{ "chunk-kib", 16, OPT_PLAIN, "size of each slot" },
		{ "churn-per-sec", 2000, OPT_RATE, "slots freed and reallocated per second" },
		COMMON_OPTS,
	};
	struct state s;
	size_t i;

	setup(argc, argv, "steady", "Fixed working set with alloc/free churn.", opts, NOPTS(opts));
	memset(&s, 0, sizeof(s));
	s.chunk = (size_t)(opt(opts, NOPTS(opts), "chunk-kib") * KIB);
	if (s.chunk == 0)
		s.chunk = 4096;
	s.n_slots = (size_t)(opt(opts, NOPTS(opts), "working-set-mib") * MIB / (double)s.chunk);
	if (s.n_slots == 0)
		s.n_slots = 1;
	s.churn_rate = opt(opts, NOPTS(opts), "churn-per-sec");
	s.rng = UINT64_C(0x9E3779B97F4A7C15) ^ (uint64_t)(unsigned)getpid();
	s.slots = calloc(s.n_slots, sizeof(*s.slots));
	if (!s.slots)
		die("calloc");
	for (i = 0; i < s.n_slots; i++)
		s.slots[i] = xmalloc_touched(s.chunk);
	run_loop(opts, NOPTS(opts), step, &s);
	for (i = 0; i < s.n_slots; i++)
		free(s.slots[i]);
	free(s.slots);
	return 0;
}
