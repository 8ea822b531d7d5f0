/* Shared plumbing for the leak scenarios: options, pacing, signals.
 *
 * Every scenario is a single .c file including this header, so the build
 * stays `cc -O2 -g -o OUT/name name.c`.
 *
 * Options are `--name VALUE` or `--name=VALUE`, all numeric. Common ones:
 *   --duration SECS    stop after SECS real seconds (0 = until SIGTERM/SIGINT)
 *   --time-scale S     multiply every scenario duration by S and divide every
 *                      rate by S, so `--time-scale 0.1` replays the same
 *                      memory curve 10x faster (pair it with the detector's
 *                      time_scale). --duration is not scaled.
 *   --tick-ms MS       pacing granularity (scaled, at least 1 ms)
 * stdout carries only one JSON line at start (scenario, pid, options).
 */
#ifndef LEAKSCOPE_SCENARIO_COMMON_H
#define LEAKSCOPE_SCENARIO_COMMON_H

#define _GNU_SOURCE
#include <errno.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <time.h>
#include <unistd.h>

#define MIB (1024.0 * 1024.0)
#define KIB 1024.0

enum opt_kind {
	OPT_PLAIN,    /* sizes and counts: never scaled */
	OPT_DURATION, /* seconds of scenario time: multiplied by --time-scale */
	OPT_RATE,     /* per second or per minute: divided by --time-scale */
};

struct opt {
	const char *name; /* without the leading "--" */
	double value;     /* default, then parsed, then scaled */
	enum opt_kind kind;
	const char *help;
};

static volatile sig_atomic_t g_stop;

static inline void on_signal(int sig)
{
	(void)sig;
	g_stop = 1;
}

/* No SA_RESTART: the pacing sleep must wake up on SIGTERM. */
static inline void install_signals(void)
{
	struct sigaction sa;
	memset(&sa, 0, sizeof(sa));
	sa.sa_handler = on_signal;
	sigemptyset(&sa.sa_mask);
	sigaction(SIGTERM, &sa, NULL);
	sigaction(SIGINT, &sa, NULL);
	sigaction(SIGHUP, &sa, NULL);
}

static inline double now_secs(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

/* Absolute deadlines: pacing does not drift with the time spent working. */
static inline void sleep_until(double deadline)
{
	struct timespec ts;
	int rc;

	if (deadline <= 0)
		return;
	ts.tv_sec = (time_t)deadline;
	ts.tv_nsec = (long)((deadline - (double)ts.tv_sec) * 1e9);
	if (ts.tv_nsec >= 1000000000L) {
		ts.tv_sec++;
		ts.tv_nsec -= 1000000000L;
	}
	do {
		rc = clock_nanosleep(CLOCK_MONOTONIC, TIMER_ABSTIME, &ts, NULL);
	} while (rc == EINTR && !g_stop);
}

static inline void die(const char *what)
{
	perror(what);
	exit(1);
}

/* Writes every byte (non-zero, so malloc+memset cannot become calloc) and
 * tells the compiler the memory is used, so the stores are not elided. */
static inline void touch(void *p, size_t n)
{
	memset(p, 0xA5, n);
	__asm__ __volatile__("" : : "r"(p) : "memory");
}

static inline void *xmalloc_touched(size_t n)
{
	void *p = malloc(n);
	if (!p)
		die("malloc");
	touch(p, n);
	return p;
}

static inline void *xmmap_touched(size_t n)
{
	void *p = mmap(NULL, n, PROT_READ | PROT_WRITE,
		       MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	if (p == MAP_FAILED)
		die("mmap");
	touch(p, n);
	return p;
}

/* Common options appended to every scenario's own table. */
#define COMMON_OPTS                                                          \
	{ "duration", 0, OPT_PLAIN, "stop after SECS real seconds (0 = run until killed)" }, \
	{ "time-scale", 1, OPT_PLAIN, "multiply durations / divide rates by S" },           \
	{ "tick-ms", 100, OPT_DURATION, "pacing granularity in ms" }

static inline void usage(const char *prog, const char *about, const struct opt *opts, size_t n)
{
	size_t i;
	fprintf(stderr, "usage: %s [--option VALUE]...\n%s\n", prog, about);
	for (i = 0; i < n; i++)
		fprintf(stderr, "  --%-24s %s (default %g)\n", opts[i].name,
			opts[i].help, opts[i].value);
}

static inline struct opt *find_opt(struct opt *opts, size_t n, const char *name, size_t len)
{
	size_t i;
	for (i = 0; i < n; i++)
		if (strlen(opts[i].name) == len && strncmp(opts[i].name, name, len) == 0)
			return &opts[i];
	return NULL;
}

static inline double opt(const struct opt *opts, size_t n, const char *name)
{
	size_t i;
	for (i = 0; i < n; i++)
		if (strcmp(opts[i].name, name) == 0)
			return opts[i].value;
	fprintf(stderr, "internal error: unknown option %s\n", name);
	exit(2);
}

static inline void parse_value(struct opt *o, const char *text)
{
	char *end = NULL;
	double v;

	errno = 0;
	v = strtod(text, &end);
	if (errno || end == text || *end != '\0' || v != v || v < 0) {
		fprintf(stderr, "--%s: expected a non-negative number, got '%s'\n",
			o->name, text);
		exit(2);
	}
	o->value = v;
}

static inline void apply_time_scale(struct opt *opts, size_t n)
{
	double s = opt(opts, n, "time-scale");
	size_t i;

	if (s <= 0) {
		fprintf(stderr, "--time-scale must be > 0\n");
		exit(2);
	}
	for (i = 0; i < n; i++) {
		if (opts[i].kind == OPT_DURATION)
			opts[i].value *= s;
		else if (opts[i].kind == OPT_RATE)
			opts[i].value /= s;
	}
}

/* Parses argv into opts (exits on error or --help), applies --time-scale,
 * installs signal handlers and prints the JSON header line. */
static inline void setup(int argc, char **argv, const char *name, const char *about,
		  struct opt *opts, size_t n)
{
	int i;
	size_t k;

	for (i = 1; i < argc; i++) {
		const char *arg = argv[i];
		const char *eq;
		struct opt *o;

		if (strcmp(arg, "--help") == 0 || strcmp(arg, "-h") == 0) {
			usage(argv[0], about, opts, n);
			exit(0);
		}
		if (strncmp(arg, "--", 2) != 0) {
			fprintf(stderr, "unexpected argument '%s' (try --help)\n", arg);
			exit(2);
		}
		arg += 2;
		eq = strchr(arg, '=');
		o = find_opt(opts, n, arg, eq ? (size_t)(eq - arg) : strlen(arg));
		if (!o) {
			fprintf(stderr, "unknown option '%s' (try --help)\n", argv[i]);
			exit(2);
		}
		if (eq) {
			parse_value(o, eq + 1);
		} else if (i + 1 < argc) {
			parse_value(o, argv[++i]);
		} else {
			fprintf(stderr, "--%s needs a value\n", o->name);
			exit(2);
		}
	}
	/* Print what was asked for, before scaling, so a run is reproducible. */
	printf("{\"scenario\":\"%s\",\"pid\":%ld", name, (long)getpid());
	for (k = 0; k < n; k++) {
		const char *c;
		putchar(',');
		putchar('"');
		for (c = opts[k].name; *c; c++)
			putchar(*c == '-' ? '_' : *c);
		printf("\":%.15g", opts[k].value);
	}
	printf("}\n");
	fflush(stdout);
	apply_time_scale(opts, n);
	install_signals();
}

/* Calls step(elapsed, ctx) every tick until it returns non-zero, --duration
 * elapses or a termination signal arrives. */
static inline void run_loop(const struct opt *opts, size_t n,
		     int (*step)(double elapsed, void *ctx), void *ctx)
{
	double tick = opt(opts, n, "tick-ms") / 1000.0;
	double duration = opt(opts, n, "duration");
	double t0 = now_secs();
	double next = t0;

	if (tick < 0.001)
		tick = 0.001;
	while (!g_stop) {
		double t = now_secs();
		if (duration > 0 && t - t0 >= duration)
			break;
		if (step(t - t0, ctx))
			break;
		next += tick;
		/* After a stall (SIGSTOP, overload) resume from now, not in a burst. */
		if (next < t)
			next = t + tick;
		if (duration > 0 && next > t0 + duration)
			next = t0 + duration;
		sleep_until(next);
	}
}

#define NOPTS(a) (sizeof(a) / sizeof((a)[0]))

#endif
