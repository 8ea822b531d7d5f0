#!/usr/bin/env python3
"""Ground truth: NOT a leak. Keeps a fixed working set of --working-set-mib
in --chunk-kib buffers and, every second, replaces --churn-per-sec random
buffers and builds throwaway dicts (garbage freed by refcounting), like a
busy but healthy worker."""

import random

import _scenario as sc


def main():
    p = sc.parser(__doc__)
    p.add_argument("--working-set-mib", type=float, default=32.0)
    p.add_argument("--chunk-kib", type=float, default=16.0)
    p.add_argument("--churn-per-sec", type=float, default=500.0)
    args = sc.checked(p.parse_args())
    sc.header("steady", args)
    chunk = max(int(args.chunk_kib * 1024), 1)
    slots = [sc.touched(chunk) for _ in range(max(int(args.working_set_mib * sc.MIB) // chunk, 1))]
    rate = args.churn_per_sec / args.time_scale
    rng = random.Random(0)
    churned = 0

    def step(elapsed):
        nonlocal churned
        while churned + 1 <= rate * elapsed:
            slots[rng.randrange(len(slots))] = sc.touched(chunk)
            garbage = {i: str(i) * 8 for i in range(64)}
            del garbage
            churned += 1
        return False

    sc.run_loop(args, sc.Stopper(), step)


if __name__ == "__main__":
    main()
