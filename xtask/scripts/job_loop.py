"""`cargo xtask bench overhead`: a Python worker's job loop, or a marker sender.

    job_loop.py jobs COUNT   run COUNT jobs (JSON parse and build, dict churn, a temporary
                             buffer; about 1.5 ms each), each between a begin and an end
                             marker as the worker integrations send them; print the elapsed
                             seconds
    job_loop.py markers      send a begin/end pair every 10 ms until stdin closes: a worker
                             between jobs, while another workload is measured

Markers go to $LEAKSCOPE_SOCKET through the project's own client (integrations/python). The
benchmark's untraced runs have a socket there that reads and drops them, so the worker makes the
same system calls (and wakes a reader) with or without the agent.

Job length: a real Celery or RQ task takes milliseconds to seconds (one database query or HTTP
call is about a millisecond), so ~1.5 ms (an 80 KB request parsed, indexed and summed, a response
built, a 1 MiB scratch buffer) is the short end of real jobs: the two markers per job weigh the
most there that they do in production.
"""

import json
import os
import sys
import threading
import time

sys.path.insert(
    0, os.path.join(os.path.dirname(__file__), "..", "..", "integrations", "python", "src")
)
import leakscope  # noqa: E402

# ~80 KB: an API payload of a thousand line items.
ITEMS = 1000

REQUEST = json.dumps(
    {
        "id": 0,
        "user": {"name": "worker", "roles": ["a", "b", "c"], "quota": 12.5},
        "items": [
            {"sku": i, "qty": i % 7, "tags": ["x", "y"], "price": i * 0.25, "note": f"item {i}"}
            for i in range(ITEMS)
        ],
    }
)


def job(n):
    req = json.loads(REQUEST)
    req["id"] = n
    # Dict churn: an index built and thrown away per job.
    index = {f"{it['sku']}:{n}": it for it in req["items"]}
    totals = {}
    for key, it in index.items():
        totals[key[:3]] = totals.get(key[:3], 0) + it["qty"] * it["price"]
    # A temporary buffer per job (1 MiB: above glibc's mmap threshold at first).
    buf = bytearray(1 << 20)
    buf[:: 4096] = b"\x01" * len(buf[:: 4096])
    return json.dumps({"id": n, "totals": totals, "items": req["items"], "sum": sum(buf[:: 4096])})


def jobs(count):
    start = time.perf_counter()
    for n in range(count):
        leakscope.begin("bench.job", n)
        job(n)
        leakscope.end("bench.job", n)
    print(f"{time.perf_counter() - start:.6f}")


def markers():
    done = threading.Event()
    threading.Thread(target=lambda: (sys.stdin.read(), done.set()), daemon=True).start()
    n = 0
    while not done.wait(0.01):
        leakscope.begin("bench.sender", n)
        leakscope.end("bench.sender", n)
        n += 1


if __name__ == "__main__":
    if sys.argv[1] == "jobs":
        jobs(int(sys.argv[2]))
    else:
        markers()
