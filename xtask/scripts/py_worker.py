"""`cargo xtask bench alloc`: a Python worker's job loop, paused until a tracer is attached.

    py_worker.py JOBS   print `ready`, wait for `go` on stdin, run JOBS jobs and print the
                        elapsed seconds, then wait for stdin to close

The jobs are the `overhead` bench's (job_loop.py: JSON parse and build, dict churn, a temporary
buffer), without markers. Each keeps the start of its result, so a growth or allocation
profile has a leak to name.
"""

import sys
import time

from job_loop import job

KEPT = []


def main():
    count = int(sys.argv[1])
    print("ready", flush=True)
    if sys.stdin.readline().strip() != "go":
        sys.exit("expected `go` on stdin")
    start = time.perf_counter()
    for n in range(count):
        KEPT.append(job(n)[:256])
    print(f"{time.perf_counter() - start:.6f}", flush=True)
    sys.stdin.read()


main()
