#!/usr/bin/env python3
"""Ground truth per task type: a single-threaded worker that runs two task
types in random order and tells the agent when each job begins and ends
(leakscope's Python package, found through PYTHONPATH).

`<prefix>.leaky` keeps a small object graph per run in a module-level list,
--leak-kib of it (dicts of strings, as a leak on an exception path keeps a
request's parsed document); with --leak-kib 0 it keeps nothing.
`<prefix>.clean` builds a --transient-mib buffer and a few thousand small
objects, and frees them all before it returns.

Jobs run at --jobs-per-sec (divided by --time-scale), leaky with probability
--leaky-share; the order comes from --seed, so a run can be replayed.
"""

import random
import time

import _scenario as sc
import leakscope

KEPT = []  # the leak


def leaky(kib, body=720):
    # About 1 KiB per record: a dict and a string of its own (`body` is an argument so that
    # the string is built at run time, not folded into one shared constant).
    KEPT.append([{"id": i, "body": "x" * body, "seen": time.monotonic()} for i in range(kib)])


def clean(mib):
    buf = bytearray(b"\x5a") * (mib * sc.MIB)
    scratch = [{"n": i, "s": str(i) * 8} for i in range(5000)]
    total = len(buf) + len(scratch)
    del buf, scratch
    return total


def main():
    p = sc.parser(__doc__)
    p.add_argument("--prefix", required=True, help="task names are PREFIX.leaky and PREFIX.clean")
    p.add_argument("--leak-kib", type=int, default=256)
    p.add_argument("--transient-mib", type=int, default=8)
    p.add_argument("--jobs-per-sec", type=float, default=2.0)
    p.add_argument("--leaky-share", type=float, default=0.5)
    p.add_argument("--seed", type=int, default=1)
    args = sc.checked(p.parse_args())
    if not 0.0 <= args.leaky_share <= 1.0:
        raise SystemExit("--leaky-share must be within 0..1")
    sc.header("task_worker", args)
    rng = random.Random(args.seed)
    period = 1.0 / args.jobs_per_sec * args.time_scale
    stopper = sc.Stopper()
    job = 0
    next_job = 0.0

    def step(elapsed):
        nonlocal job, next_job
        while elapsed >= next_job and not stopper.stop:
            job += 1
            kind = "leaky" if rng.random() < args.leaky_share else "clean"
            with leakscope.task(f"{args.prefix}.{kind}", job_id=str(job)):
                if kind == "leaky":
                    leaky(args.leak_kib)
                else:
                    clean(args.transient_mib)
            next_job += period
        return False

    sc.run_loop(args, stopper, step)


if __name__ == "__main__":
    main()
