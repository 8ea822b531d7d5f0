"""A multi-threaded process for the per-thread tests: one thread (named `mapper`) maps 64 MiB
and keeps it, the others (`idle0`, `idle1`) only wait.

argv[1] names the process (its comm). Prints one JSON line with its pid, the address of
libc's `mmap` in this process and the thread ids; maps when stdin says `go`, prints `mapped`,
and exits at end of input. Run with MALLOC_ARENA_MAX=1 so no thread reserves a malloc arena
of its own (glibc maps 64 MiB for each).
"""

import ctypes
import json
import mmap
import os
import sys
import threading

libc = ctypes.CDLL(None, use_errno=True)
PR_SET_NAME = 15


def name(n):
    libc.prctl(PR_SET_NAME, n.encode(), 0, 0, 0)


name(sys.argv[1])
tids = {}
started = threading.Barrier(3)
go = threading.Event()
mapped = threading.Event()
stop = threading.Event()
held = []


def mapper():
    name("mapper")
    tids["mapper"] = threading.get_native_id()
    started.wait()
    go.wait()
    m = mmap.mmap(-1, 64 << 20)
    for i in range(0, len(m), 4096):
        m[i] = 1
    held.append(m)
    mapped.set()
    stop.wait()


def idle(i):
    name(f"idle{i}")
    tids[f"idle{i}"] = threading.get_native_id()
    started.wait()
    stop.wait()


threads = [threading.Thread(target=mapper)] + [
    threading.Thread(target=idle, args=(i,)) for i in range(2)
]
for t in threads:
    t.start()
while len(tids) < 3:
    threading.Event().wait(0.01)
mmap_address = ctypes.cast(libc.mmap, ctypes.c_void_p).value
print(json.dumps({"pid": os.getpid(), "mmap": mmap_address, "tids": tids}), flush=True)
for line in sys.stdin:
    if line.strip() == "go":
        go.set()
        mapped.wait()
        print("mapped", flush=True)
stop.set()
for t in threads:
    t.join()
