"""Django-Q hook (django-q2): one ``begin``/``end`` pair per task.

    # e.g. in your AppConfig.ready():
    import leakscope.django_q
    leakscope.django_q.install()

Uses ``pre_execute(sender, func, task)`` and
``post_execute_in_worker(sender, func, task)``, both sent by the cluster's
worker process around the task function. (``post_execute`` is *not* used:
django-q2 sends it from the monitor process, whose pid is not the worker's.)
Task name: the function's dotted path; job id: ``task["id"]``.
``status=error`` unless ``task["success"]`` is true.

Requires a Django-Q with ``post_execute_in_worker`` (django-q2); the
original, unmaintained ``django-q`` 1.3 has no worker-side end signal, and
``install()`` raises ``RuntimeError`` there rather than send begin markers
that are never closed.
"""

from typing import Any

from . import _client

__all__ = ["install", "uninstall", "on_pre_execute", "on_post_execute_in_worker"]

_UID = "leakscope.django_q.%s"


def _name(func: Any, task: Any) -> str:
    target = func if func is not None else task.get("func")
    if isinstance(target, str):
        return target
    module = getattr(target, "__module__", None)
    qualname = getattr(target, "__qualname__", None) or getattr(target, "__name__", None)
    if module and qualname:
        return "%s.%s" % (module, qualname)
    return "django_q.unknown"


def on_pre_execute(sender: Any = None, func: Any = None, task: Any = None, **_: Any) -> None:
    """Receiver for ``django_q.signals.pre_execute``."""
    try:
        task = task or {}
        _client.begin(_name(func, task), task.get("id"))
    except Exception:
        pass


def on_post_execute_in_worker(
    sender: Any = None, func: Any = None, task: Any = None, **_: Any
) -> None:
    """Receiver for ``django_q.signals.post_execute_in_worker``."""
    try:
        task = task or {}
        _client.end(_name(func, task), task.get("id"), failed=task.get("success") is not True)
    except Exception:
        pass


def install() -> None:
    """Connect the receivers (idempotent). Needs Django's app registry
    ready, e.g. call it from ``AppConfig.ready()``."""
    from django_q import signals

    post = getattr(signals, "post_execute_in_worker", None)
    if post is None:
        raise RuntimeError(
            "leakscope.django_q needs django_q.signals.post_execute_in_worker "
            "(django-q2); this Django-Q cannot mark the end of a task"
        )
    signals.pre_execute.connect(on_pre_execute, weak=False, dispatch_uid=_UID % "pre")
    post.connect(on_post_execute_in_worker, weak=False, dispatch_uid=_UID % "post")


def uninstall() -> None:
    """Disconnect the receivers."""
    from django_q import signals

    signals.pre_execute.disconnect(on_pre_execute, dispatch_uid=_UID % "pre")
    post = getattr(signals, "post_execute_in_worker", None)
    if post is not None:
        post.disconnect(on_post_execute_in_worker, dispatch_uid=_UID % "post")
