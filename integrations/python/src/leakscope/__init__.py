"""leakscope: tell the leakscope agent when a job begins and ends.

Core API (standard library only)::

    import leakscope

    with leakscope.task("reports.build", job_id=job.id):
        ...

    @leakscope.task("reports.build")
    def build(): ...

Framework hooks are submodules imported on first use, so importing
``leakscope`` never imports a framework: ``leakscope.celery``,
``leakscope.rq``, ``leakscope.dramatiq``, ``leakscope.django_q``.
"""

import importlib
from typing import Any

from . import _client
from ._client import (
    DEFAULT_SOCKET,
    ENV_SOCKET,
    MAX_DATAGRAM,
    MAX_JOB_ID_LEN,
    MAX_TASK_LEN,
    begin,
    configure,
    end,
    format_marker,
    get_socket_path,
    sanitize_job_id,
    sanitize_task_name,
    stats,
    task,
)

__version__ = "0.1.0"

__all__ = list(_client.__all__)

_HOOKS = frozenset({"celery", "rq", "dramatiq", "django_q"})


def __getattr__(name: str) -> Any:
    # PEP 562: `leakscope.celery` etc. work after a bare `import leakscope`
    # without the core importing any framework up front.
    if name in _HOOKS:
        return importlib.import_module("." + name, __name__)
    raise AttributeError("module %r has no attribute %r" % (__name__, name))
