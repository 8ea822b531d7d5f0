"""Celery app for tests/tests/tasks.rs: one task that leaks, one that does not.

The worker (prefork pool) imports this module before forking its children, so the
leakscope hook installed here is inherited by every child that runs tasks.
"""

import os

from celery import Celery

import leakscope.celery

BROKER = os.environ["LEAKSCOPE_TEST_BROKER"]  # redis://127.0.0.1:PORT/0

app = Celery("leakscope_test_app", broker=BROKER, backend=BROKER)
app.conf.update(
    broker_connection_retry_on_startup=True,
    # One task at a time per child, so runs in a child never overlap.
    worker_prefetch_multiplier=1,
    result_expires=600,
    worker_hijack_root_logger=False,
)
leakscope.celery.install(app)

LEAK_BYTES = int(os.environ.get("LEAKSCOPE_TEST_LEAK_BYTES", str(4 << 20)))
CLEAN_BYTES = int(os.environ.get("LEAKSCOPE_TEST_CLEAN_BYTES", str(16 << 20)))

# Grows by one buffer per run of `leaky` and is never cleared: the leak.
_kept = []


@app.task(name="leakscope_test.leaky")
def leaky():
    # Multiplying writes every byte, so every page is resident (bytes(n) would not).
    _kept.append(b"\x01" * LEAK_BYTES)
    return len(_kept)


@app.task(name="leakscope_test.clean")
def clean():
    buf = b"\x02" * CLEAN_BYTES
    size = len(buf)
    del buf
    return size
