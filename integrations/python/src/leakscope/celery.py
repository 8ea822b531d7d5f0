"""Celery hook: one ``begin``/``end`` pair per task execution.

    import leakscope.celery
    leakscope.celery.install(app)      # or install() for every app

Markers are sent from the process and thread that run the task (the pool
child for prefork, the worker thread for threads/solo, the caller for
``task_always_eager``). Task name: ``task.name``; job id: the task id.
``status=error`` unless the task ended in ``SUCCESS`` (failure, retry,
reject, ignore, or an exception escaping the tracer).
"""

import threading
from typing import Any, List, Optional

from . import _client

__all__ = ["install", "uninstall"]

_UID = "leakscope.celery.%s"
_lock = threading.Lock()
_all_apps = False
_apps: List[Any] = []
_failed = threading.local()


def _wanted(task: Any) -> bool:
    if _all_apps:
        return True
    app = getattr(task, "app", None)
    return any(app is a for a in _apps)


def _failed_ids() -> set:
    ids = getattr(_failed, "ids", None)
    if ids is None:
        ids = _failed.ids = set()
    return ids


def _on_prerun(sender: Any = None, task_id: Any = None, task: Any = None, **_: Any) -> None:
    try:
        task = task if task is not None else sender
        if _wanted(task):
            _client.begin(getattr(task, "name", None) or "celery.unknown", task_id)
    except Exception:
        pass


def _on_failure(sender: Any = None, task_id: Any = None, **_: Any) -> None:
    try:
        if _wanted(sender):
            _failed_ids().add(task_id)
    except Exception:
        pass


def _on_postrun(
    sender: Any = None, task_id: Any = None, task: Any = None, state: Any = None, **_: Any
) -> None:
    try:
        task = task if task is not None else sender
        if not _wanted(task):
            return
        ids = _failed_ids()
        failed = task_id in ids or state != "SUCCESS"
        ids.discard(task_id)
        _client.end(getattr(task, "name", None) or "celery.unknown", task_id, failed=failed)
    except Exception:
        pass


def install(app: Optional[Any] = None) -> None:
    """Connect ``task_prerun``/``task_postrun``/``task_failure``.

    With ``app``, only that app's tasks are marked (call again to add more
    apps); without, every app's. Idempotent. Call it where the worker imports
    your app module (e.g. next to ``app = Celery(...)``), so that it runs in
    the worker and is inherited by prefork children.
    """
    global _all_apps
    from celery import signals

    with _lock:
        if app is None:
            _all_apps = True
        elif not any(app is a for a in _apps):
            _apps.append(app)
        signals.task_prerun.connect(_on_prerun, weak=False, dispatch_uid=_UID % "prerun")
        signals.task_failure.connect(_on_failure, weak=False, dispatch_uid=_UID % "failure")
        signals.task_postrun.connect(_on_postrun, weak=False, dispatch_uid=_UID % "postrun")


def uninstall() -> None:
    """Disconnect the signals and forget the apps (mainly for tests)."""
    global _all_apps
    from celery import signals

    with _lock:
        _all_apps = False
        del _apps[:]
        signals.task_prerun.disconnect(_on_prerun, dispatch_uid=_UID % "prerun")
        signals.task_failure.disconnect(_on_failure, dispatch_uid=_UID % "failure")
        signals.task_postrun.disconnect(_on_postrun, dispatch_uid=_UID % "postrun")
