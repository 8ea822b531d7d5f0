"""RQ hook: one ``begin``/``end`` pair around ``Job.perform()``.

Either use the job class (works with every worker class, including the
forking ``Worker``, ``SimpleWorker`` and ``SpawnWorker``)::

    rq worker --job-class leakscope.rq.LeakscopeJob
    # or: Worker(queues, connection=redis, job_class=LeakscopeJob)

or, in a worker you start from Python, patch ``rq.job.Job`` once::

    import leakscope.rq
    leakscope.rq.install()

Task name: ``job.func_name``; job id: ``job.id``. ``status=error`` when the
job function raises (including RQ's ``JobTimeoutException``).

With the default forking ``Worker`` each job runs in a fresh "work horse"
child, so markers come from that child's pid, which exits after the job.
"""

import threading
from typing import Any

from rq.job import Job

from . import _client

__all__ = ["LeakscopeJob", "LeakscopeJobMixin", "install", "uninstall"]

_lock = threading.Lock()
_original_perform = None


def _name(job: Any) -> str:
    try:
        name = job.func_name
    except Exception:
        name = None
    return name or "rq.unknown"


def _job_id(job: Any) -> Any:
    try:
        return job.id
    except Exception:
        return None


_active = threading.local()


def _perform_marked(job: Any, perform: Any) -> Any:
    active = getattr(_active, "jobs", None)
    if active is None:
        active = _active.jobs = set()
    if id(job) in active:  # LeakscopeJob *and* install(): mark once
        return perform()
    name, job_id = _name(job), _job_id(job)
    active.add(id(job))
    _client.begin(name, job_id)
    failed = True
    try:
        result = perform()
        failed = False
        return result
    finally:
        active.discard(id(job))
        _client.end(name, job_id, failed=failed)


class LeakscopeJobMixin:
    """Mix into a custom ``Job`` subclass: ``class MyJob(LeakscopeJobMixin, Job)``."""

    def perform(self) -> Any:
        return _perform_marked(self, super().perform)  # type: ignore[misc]


class LeakscopeJob(LeakscopeJobMixin, Job):
    """``rq.job.Job`` that sends leakscope markers around ``perform()``."""


def install() -> None:
    """Patch ``rq.job.Job.perform`` so every job class that does not override
    ``perform`` is marked. Idempotent; harmless together with
    ``LeakscopeJob`` (each job is marked once)."""
    global _original_perform
    with _lock:
        if _original_perform is not None:
            return
        original = Job.perform

        def perform(self: Any) -> Any:
            return _perform_marked(self, lambda: original(self))

        perform.__wrapped__ = original  # type: ignore[attr-defined]
        perform.__doc__ = original.__doc__
        _original_perform = original
        Job.perform = perform  # type: ignore[method-assign]


def uninstall() -> None:
    """Undo :func:`install`."""
    global _original_perform
    with _lock:
        if _original_perform is not None:
            Job.perform = _original_perform  # type: ignore[method-assign]
            _original_perform = None
