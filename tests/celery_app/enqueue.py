"""Enqueues N runs of each task of leakscope_test_app (interleaved) and waits for all.

usage: enqueue.py N
"""

import sys

from leakscope_test_app import clean, leaky

n = int(sys.argv[1])
results = []
for _ in range(n):
    results.append(leaky.apply_async())
    results.append(clean.apply_async())
for r in results:
    r.get(timeout=120)
print("done", len(results), flush=True)
