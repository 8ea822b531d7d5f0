#!/usr/bin/env python3
"""Ground truth: LEAKS, but the leak is hidden from per-process views.

A prefork pool in the style of Celery/gunicorn: the parent forks --workers
children; each child serves tasks of --task-ms and leaks
--rate-mib-per-min (while alive) into a module-level list. After each task
a child checks its own VmRSS (/proc/self/status) and exits when it exceeds
--max-memory-per-child-mib (Celery's --max-memory-per-child), or after
--max-tasks-per-child tasks; the parent replaces it. Each child lives only
about (limit - base RSS) / rate, shorter than warm-up + minimum window, so
only the recycling pattern across the pool shows the leak.

With --parent-rate-mib-per-min the parent leaks too, into the same kind of
list: a leak that no recycling of children frees.
"""

import os
import signal
import sys
import time

import _scenario as sc

LEAKED = []  # the leak, filled in each child


def child_main(args, parent_pid):
    for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(sig, signal.SIG_DFL)
    rate = args.rate_mib_per_min * sc.MIB / 60.0 / args.time_scale
    task_secs = args.task_ms / 1000.0 * args.time_scale
    limit = args.max_memory_per_child_mib * sc.MIB
    t0 = time.monotonic()
    leaked = tasks = 0
    while os.getppid() == parent_pid:  # orphaned: the pool is gone
        time.sleep(task_secs)  # the "work"
        due = int(rate * (time.monotonic() - t0)) - leaked
        if due > 0:
            LEAKED.append(sc.touched(due))
            leaked += due
        tasks += 1
        if args.max_tasks_per_child and tasks >= args.max_tasks_per_child:
            return
        if limit and sc.rss_bytes() > limit:
            return


class Pool:
    def __init__(self, args):
        self.args = args
        self.children = {}  # pid -> monotonic start
        self.recycled = 0

    def spawn(self):
        sys.stdout.flush()  # a buffered line must not be printed twice
        sys.stderr.flush()
        pid = os.fork()
        if pid == 0:
            try:
                child_main(self.args, os.getppid())
            finally:
                os._exit(0)
        self.children[pid] = time.monotonic()

    def reap(self):
        while self.children:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                return
            if pid == 0:
                return
            started = self.children.pop(pid, None)
            self.recycled += 1
            if self.args.verbose and started is not None:
                print(f"prefork_pool: child {pid} exited (status {status}) after "
                      f"{time.monotonic() - started:.1f}s; recycled={self.recycled}",
                      file=sys.stderr, flush=True)

    def fill(self):
        while len(self.children) < self.args.workers:
            self.spawn()

    def shutdown(self):
        for pid in list(self.children):
            try:
                os.kill(pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
        for pid in list(self.children):
            try:
                os.waitpid(pid, 0)
            except ChildProcessError:
                pass
        self.children.clear()


def main():
    p = sc.parser(__doc__)
    p.add_argument("--workers", type=int, default=4)
    p.add_argument("--rate-mib-per-min", type=float, default=30.0,
                   help="leak rate of each child")
    p.add_argument("--task-ms", type=float, default=100.0)
    p.add_argument("--max-memory-per-child-mib", type=float, default=48.0,
                   help="recycle a child above this RSS (0 = never)")
    p.add_argument("--max-tasks-per-child", type=int, default=0,
                   help="recycle a child after N tasks (0 = never)")
    p.add_argument("--parent-rate-mib-per-min", type=float, default=0.0,
                   help="leak rate of the parent itself")
    p.add_argument("--verbose", type=int, default=0, help="log recycling to stderr")
    args = sc.checked(p.parse_args())
    if args.workers < 1:
        raise SystemExit("--workers must be >= 1")
    sc.header("prefork_pool", args)
    stopper = sc.Stopper()
    pool = Pool(args)
    pool.fill()
    parent_rate = args.parent_rate_mib_per_min * sc.MIB / 60.0 / args.time_scale
    parent_leaked = 0

    def step(elapsed):
        nonlocal parent_leaked
        due = int(parent_rate * elapsed) - parent_leaked
        if due > 0:
            LEAKED.append(sc.touched(due))
            parent_leaked += due
        pool.reap()
        if not stopper.stop:
            pool.fill()
        return False

    try:
        sc.run_loop(args, stopper, step)
    finally:
        pool.shutdown()


if __name__ == "__main__":
    main()
