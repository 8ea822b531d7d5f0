"""Shared plumbing for the Python scenarios (standard library only).

Same conventions as the C scenarios (see ../c/common.h): options from argv,
--duration in real seconds (0 = until SIGTERM/SIGINT), --time-scale S
multiplies scenario durations and divides rates, one JSON line on stdout at
start and nothing else there.
"""

import argparse
import json
import os
import signal
import time

MIB = 1024 * 1024


def parser(description):
    p = argparse.ArgumentParser(description=description)
    p.add_argument("--duration", type=float, default=0.0,
                   help="stop after SECS real seconds (0 = run until killed)")
    p.add_argument("--time-scale", type=float, default=1.0,
                   help="multiply durations / divide rates by S")
    p.add_argument("--tick-ms", type=float, default=100.0,
                   help="pacing granularity in ms (scaled)")
    return p


def checked(args):
    if args.time_scale <= 0:
        raise SystemExit("--time-scale must be > 0")
    for name, value in vars(args).items():
        if isinstance(value, (int, float)) and value < 0:
            raise SystemExit(f"--{name.replace('_', '-')} must be >= 0")
    return args


def header(name, args):
    """The one stdout line: what was asked for, before scaling."""
    print(json.dumps({"scenario": name, "pid": os.getpid(), **vars(args)}), flush=True)


class Stopper:
    """SIGTERM/SIGINT set a flag; the paced loop notices within one tick."""

    def __init__(self):
        self.stop = False
        for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
            signal.signal(sig, self._on_signal)

    def _on_signal(self, _signum, _frame):
        self.stop = True


def touched(n):
    """n bytes, every one written (a zeroed buffer may not be resident)."""
    return bytearray(b"\xa5") * n


def rss_bytes(pid="self"):
    """Resident set size from /proc/PID/status (VmRSS), 0 if unavailable."""
    try:
        with open(f"/proc/{pid}/status", encoding="ascii") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return 0


def run_loop(args, stopper, step):
    """Calls step(elapsed) every tick until it returns True, --duration
    elapses or a signal arrives. Absolute deadlines: no drift."""
    tick = max(args.tick_ms / 1000.0 * args.time_scale, 0.001)
    t0 = time.monotonic()
    deadline = t0 + args.duration if args.duration > 0 else None
    next_t = t0
    while not stopper.stop:
        t = time.monotonic()
        if deadline is not None and t >= deadline:
            break
        if step(t - t0):
            break
        next_t += tick
        if next_t < t:
            next_t = t + tick
        if deadline is not None:
            next_t = min(next_t, deadline)
        time.sleep(max(0.0, next_t - time.monotonic()))
