#!/usr/bin/env python3
"""Ground truth: LEAKS --rate-mib-per-min by appending bytearrays to a
module-level list that is never cleared (the classic Python worker leak:
a global cache/registry that only grows)."""

import _scenario as sc

LEAKED = []  # the leak


def main():
    p = sc.parser(__doc__)
    p.add_argument("--rate-mib-per-min", type=float, default=10.0)
    p.add_argument("--chunk-kib", type=float, default=64.0)
    p.add_argument("--max-mib", type=float, default=8192.0,
                   help="exit once this much leaked (0 = never)")
    args = sc.checked(p.parse_args())
    sc.header("leak_list", args)
    rate = args.rate_mib_per_min * sc.MIB / 60.0 / args.time_scale
    chunk = max(int(args.chunk_kib * 1024), 1)
    cap = args.max_mib * sc.MIB
    leaked = 0

    def step(elapsed):
        nonlocal leaked
        while leaked + chunk <= rate * elapsed:
            LEAKED.append(sc.touched(chunk))
            leaked += chunk
        return cap > 0 and leaked >= cap

    sc.run_loop(args, sc.Stopper(), step)


if __name__ == "__main__":
    main()
