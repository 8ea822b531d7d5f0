"""Enqueues N runs of each task type, the leaking one first or the clean one first in each
pair, and waits for them (Celery) or leaves them queued for a burst worker (RQ).

usage: enqueue.py celery|rq N keep-first|churn-first
Prints `graph_bytes B`: what one run of keep_graph keeps, for the test to compare with.
"""

import os
import sys

import attribution_jobs

kind, n, order = sys.argv[1], int(sys.argv[2]), sys.argv[3]
if kind == "celery":
    from attribution_celery import churn, keep_graph

    pair = (keep_graph, churn) if order == "keep-first" else (churn, keep_graph)
    results = [t.apply_async() for _ in range(n) for t in pair]
    for r in results:
        r.get(timeout=300)
else:
    from redis import Redis
    from rq import Queue

    q = Queue("attribution", connection=Redis.from_url(os.environ["LEAKSCOPE_TEST_BROKER"]))
    pair = (
        (attribution_jobs.keep_graph, attribution_jobs.churn)
        if order == "keep-first"
        else (attribution_jobs.churn, attribution_jobs.keep_graph)
    )
    for _ in range(n):
        for f in pair:
            q.enqueue(f)
print("graph_bytes", attribution_jobs.graph_bytes(), flush=True)
