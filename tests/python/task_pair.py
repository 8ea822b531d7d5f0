"""A worker that runs two task types, one after the other, and tells the agent which with
task markers (the LS1 protocol, integrations/PROTOCOL.md) on the socket given as argv[1]:
`jobs.leaky` keeps a buffer of every job in a module-level list, `jobs.clean` computes and
keeps nothing. Each job is dispatched by the standard library's `sched`, as a framework would
call a task function, so `--fold user-entry` has the task function as each row's entry.
tests/tests/python_frames.rs expects the leak under the task label `jobs.leaky` and the
entry function `leaky_task`.
"""

import sched
import socket
import sys
import threading
import time

KEPT = []
# Bounds what a forgotten worker can take: 32 KiB a job.
MAX_KEPT = 4000


def leaky_task(job):
    # Work first, as a real task does (I/O, a query) before it keeps its result.
    time.sleep(0.005)
    if len(KEPT) < MAX_KEPT:
        KEPT.append(bytearray(32 * 1024))


def clean_task(job):
    time.sleep(0.005)
    # Small objects only: freed heap memory would be reused by the leaky task, and growth
    # would be charged to whichever task touched new pages.
    return sum(i * i for i in range(2000))


TASKS = (("jobs.leaky", leaky_task), ("jobs.clean", clean_task))


def main():
    path = sys.argv[1]
    sender = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    tid = threading.get_native_id()
    scheduler = sched.scheduler()
    print("ready", flush=True)
    job = 0
    while True:
        name, task = TASKS[job % 2]
        sender.sendto(f"LS1 begin {name} job={job} tid={tid}".encode(), path)
        scheduler.enter(0, 1, task, (job,))
        scheduler.run()
        sender.sendto(f"LS1 end {name} job={job} tid={tid} status=ok".encode(), path)
        job += 1
        time.sleep(0.002)


if __name__ == "__main__":
    sys.exit(main())
