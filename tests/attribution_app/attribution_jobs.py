"""Two task types for tests/tests/attribution.rs, as plain functions (RQ runs them as they
are; attribution_celery.py wraps them as Celery tasks).

`keep_graph` keeps a small object graph per run in a module-level list, as a leak on an
exception path does: a few hundred KiB of dicts, strings and lists, far under the allocator's
and the kernel's steps. `churn` allocates several MiB (small objects, 1 KiB buffers and one
large buffer) and frees it all: the memory its runs leave free in the allocator is what the
leaking runs' objects fill.
"""

import os

GRAPH_NODES = int(os.environ.get("LEAKSCOPE_TEST_GRAPH_NODES", "600"))
CHURN_MIB = int(os.environ.get("LEAKSCOPE_TEST_CHURN_MIB", "8"))

_kept = []


def make_graph():
    return [{"id": i, "name": "node-%d" % i, "edges": [i, i + 1]} for i in range(GRAPH_NODES)]


def graph_bytes():
    """What one run's graph takes, as the allocator's tracer counts it."""
    import tracemalloc

    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        g = make_graph()
        size = tracemalloc.get_traced_memory()[0] - before
        del g
        return size
    finally:
        tracemalloc.stop()


def keep_graph():
    _kept.append(make_graph())
    return len(_kept)


def churn():
    mib = CHURN_MIB << 20
    small = [str(i) * 4 for i in range(mib // 4 // 64)]
    buffers = [bytes(1024) for _ in range(mib // 4 // 1024)]
    big = b"\x02" * (mib // 2)
    n = len(small) + len(buffers) + len(big)
    del small, buffers, big
    return n
