"""Dramatiq hook: a middleware sending one ``begin``/``end`` pair per message.

    import leakscope.dramatiq
    broker.add_middleware(leakscope.dramatiq.LeakscopeMiddleware())
    # or: leakscope.dramatiq.install(broker)   (default: dramatiq.get_broker())

Markers come from the worker thread that runs the actor. Task name: the
actor name; job id: the message id. ``status=error`` when the actor raised
(including ``Retry`` and time limits); a message skipped by a middleware
after ours ends with ``status=ok``.
"""

import threading
from typing import Any, Dict, Optional

import dramatiq
from dramatiq.middleware import Middleware

from . import _client

__all__ = ["LeakscopeMiddleware", "install"]


class LeakscopeMiddleware(Middleware):
    """Add last (the default for ``add_middleware``), so that ``begin`` is
    sent only once every other middleware let the message through."""

    def __init__(self) -> None:
        self._local = threading.local()

    def _open(self) -> Dict[str, str]:
        open_ = getattr(self._local, "open", None)
        if open_ is None:
            open_ = self._local.open = {}
        return open_

    def before_process_message(self, broker: Any, message: Any) -> None:
        try:
            name = message.actor_name
            self._open()[message.message_id] = name
            _client.begin(name, message.message_id)
        except Exception:
            pass

    def _finish(self, message: Any, failed: bool) -> None:
        try:
            # Only close what we opened: a message skipped (or failed) by an
            # earlier middleware never reached our before_process_message.
            name = self._open().pop(message.message_id, None)
            if name is not None:
                _client.end(name, message.message_id, failed=failed)
        except Exception:
            pass

    def after_process_message(
        self,
        broker: Any,
        message: Any,
        *,
        result: Optional[Any] = None,
        exception: Optional[BaseException] = None,
    ) -> None:
        self._finish(message, exception is not None)

    def after_skip_message(self, broker: Any, message: Any) -> None:
        self._finish(message, False)


def install(broker: Optional[Any] = None) -> LeakscopeMiddleware:
    """Add a :class:`LeakscopeMiddleware` to ``broker`` (default: the global
    broker) unless one is already there; returns it."""
    broker = broker if broker is not None else dramatiq.get_broker()
    for middleware in broker.middleware:
        if isinstance(middleware, LeakscopeMiddleware):
            return middleware
    middleware = LeakscopeMiddleware()
    broker.add_middleware(middleware)
    return middleware
