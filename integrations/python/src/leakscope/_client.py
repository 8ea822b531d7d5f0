"""Core client: formats LS1 markers and sends them to the agent.

Standard library only. Nothing in here may block the caller or raise into it:
every failure is swallowed and counted (see :func:`stats`).
"""

import atexit
import errno
import functools
import inspect
import os
import re
import socket
import sys
import threading
from typing import Any, Callable, Dict, Optional, TypeVar

__all__ = [
    "DEFAULT_SOCKET",
    "ENV_SOCKET",
    "MAX_DATAGRAM",
    "MAX_JOB_ID_LEN",
    "MAX_TASK_LEN",
    "begin",
    "configure",
    "end",
    "format_marker",
    "get_socket_path",
    "sanitize_job_id",
    "sanitize_task_name",
    "stats",
    "task",
]

DEFAULT_SOCKET = "/run/leakscope/tasks.sock"
ENV_SOCKET = "LEAKSCOPE_SOCKET"
# "0" leaves `blocks=` out of end markers (for agents older than the field, which drop them).
ENV_BLOCKS = "LEAKSCOPE_BLOCKS"
# Open jobs per thread whose begin count is kept; beyond, the oldest is forgotten (its end
# then goes without `blocks=`): ends can be lost, so the table must not grow with them.
_MAX_OPEN_COUNTS = 64
MAX_DATAGRAM = 512
MAX_TASK_LEN = 128
MAX_JOB_ID_LEN = 64

# Whole-string checks for the common (already valid) case, then per-char fixes.
# Note: [A-Za-z0-9] is spelled out because `\w` would also match non-ASCII.
_TASK_OK = re.compile(r"[A-Za-z0-9_.:/@-]{1,%d}" % MAX_TASK_LEN).fullmatch
_TASK_BAD = re.compile(r"[^A-Za-z0-9_.:/@-]").sub
_JOB_OK = re.compile(r"[!-~]{1,%d}" % MAX_JOB_ID_LEN).fullmatch
_JOB_BAD = re.compile(r"[^!-~]").sub

_NO_AGENT = frozenset(
    {errno.ENOENT, errno.ECONNREFUSED, errno.ENOTDIR, errno.ENOTSOCK, errno.EPROTOTYPE}
)
_BUSY = frozenset({errno.EAGAIN, errno.EWOULDBLOCK, errno.ENOBUFS, errno.ENOMEM})
_DENIED = frozenset({errno.EPERM, errno.EACCES})

_COUNTERS = (
    "sent",
    "dropped",
    "dropped_no_agent",
    "dropped_busy",
    "dropped_denied",
    "dropped_error",
    "names_sanitized",
)

F = TypeVar("F", bound=Callable[..., Any])


class _State:
    """Per-process state. Replaced wholesale in a forked child."""

    __slots__ = ("pid", "sock", "counts", "last_error", "lock")

    def __init__(self) -> None:
        self.pid = os.getpid()
        self.sock: Optional[socket.socket] = None
        self.counts: Dict[str, int] = dict.fromkeys(_COUNTERS, 0)
        self.last_error: Optional[str] = None
        # Only held for a counter update or socket creation, never while
        # sending; re-created after fork, so a lock held by another thread at
        # fork time cannot deadlock the child.
        self.lock = threading.Lock()


_state = _State()
_socket_path_override: Optional[str] = None


def _close(sock: Optional[socket.socket]) -> None:
    if sock is not None:
        try:
            sock.close()
        except Exception:
            pass


def _reset_after_fork() -> None:
    global _state
    old = _state
    _state = _State()
    _close(old.sock)  # the child's copy of the descriptor only


@atexit.register
def _close_at_exit() -> None:
    sock, _state.sock = _state.sock, None
    _close(sock)


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_reset_after_fork)


def _current_state() -> _State:
    state = _state
    if state.pid != os.getpid():
        # Forked without the at-fork hook running (e.g. a raw fork() from C).
        _reset_after_fork()
        state = _state
    return state


def _count(state: _State, key: str) -> None:
    with state.lock:
        state.counts[key] += 1


def _count_drop(state: _State, key: str, error: str) -> None:
    with state.lock:
        state.counts[key] += 1
        state.counts["dropped"] += 1
        state.last_error = error


def _new_socket() -> socket.socket:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
    sock.setblocking(False)
    return sock


def get_socket_path() -> str:
    """The path markers are sent to: :func:`configure` override, else the
    ``LEAKSCOPE_SOCKET`` environment variable, else the default."""
    if _socket_path_override:
        return _socket_path_override
    return os.environ.get(ENV_SOCKET) or DEFAULT_SOCKET


def configure(socket_path: Optional[str] = None) -> None:
    """Override the socket path for this process (``None`` restores the
    environment variable / default)."""
    global _socket_path_override
    _socket_path_override = socket_path or None


def stats() -> Dict[str, Any]:
    """Counters for this process (reset in a forked child).

    ``sent``: datagrams the kernel accepted. ``dropped``: total not sent, split
    into ``dropped_no_agent`` (socket missing / nobody listening),
    ``dropped_busy`` (agent's queue full), ``dropped_denied`` (permissions)
    and ``dropped_error`` (anything else). ``names_sanitized``: markers whose
    task name or job id had to be altered to fit the protocol. ``last_error``: errno
    name (or exception type) of the last drop, or ``None``.
    """
    state = _current_state()
    with state.lock:
        out: Dict[str, Any] = dict(state.counts)
        out["last_error"] = state.last_error
    out["pid"] = state.pid
    out["socket_path"] = get_socket_path()
    return out


def _text(value: Any) -> str:
    return value if isinstance(value, str) else str(value)


def sanitize_task_name(name: Any) -> str:
    """Map anything to a valid protocol task name: characters outside
    ``[A-Za-z0-9_.:/@-]`` become ``_``, then truncate to 128 bytes."""
    text = _text(name)
    if _TASK_OK(text):
        return text
    return _TASK_BAD("_", text[:MAX_TASK_LEN]) or "_"


def sanitize_job_id(job_id: Any) -> Optional[str]:
    """Map a job id to 1..64 bytes of printable non-space ASCII, or ``None``."""
    if job_id is None:
        return None
    text = _text(job_id)
    if _JOB_OK(text):
        return text
    return _JOB_BAD("_", text[:MAX_JOB_ID_LEN]) or None


def _format(
    phase: str,
    name: str,
    job: Optional[str],
    tid: Optional[int],
    failed: bool,
    blocks: Optional[int] = None,
) -> str:
    parts = ["LS1", phase, name]
    if job is not None:
        parts.append("job=" + job)
    if tid is not None and 0 < tid <= 0xFFFFFFFF:
        parts.append("tid=%d" % tid)
    if phase == "end":
        parts.append("status=error" if failed else "status=ok")
        if blocks is not None and -(1 << 40) <= blocks <= 1 << 40:
            parts.append("blocks=%d" % blocks)
    return " ".join(parts)


# Live allocator blocks (CPython: pymalloc's blocks plus larger objects, one each); a job
# that keeps objects raises the count, one that frees what it allocated does not, whatever
# the pages do. Other interpreters may lack it: then no `blocks=`.
_allocated_blocks = getattr(sys, "getallocatedblocks", None)
_open_counts = threading.local()


def _blocks_enabled() -> bool:
    return _allocated_blocks is not None and os.environ.get(ENV_BLOCKS, "1") != "0"


def _note_begin(name: str, job: Optional[str]) -> None:
    counts = getattr(_open_counts, "stack", None)
    if counts is None:
        counts = _open_counts.stack = []
    if len(counts) >= _MAX_OPEN_COUNTS:
        del counts[0]
    counts.append((name, job, _allocated_blocks()))  # type: ignore[misc]


def _blocks_since_begin(name: str, job: Optional[str]) -> Optional[int]:
    now = _allocated_blocks()  # type: ignore[misc]
    counts = getattr(_open_counts, "stack", None) or []
    # The innermost open job of that name (and id, when both have one), as the agent pairs.
    for i in range(len(counts) - 1, -1, -1):
        n, j, at = counts[i]
        if n == name and (j is None or job is None or j == job):
            del counts[i:]
            return now - at
    return None


def format_marker(
    phase: str,
    name: Any,
    job_id: Any = None,
    tid: Optional[int] = None,
    failed: bool = False,
) -> str:
    """Build one marker line (no trailing newline), sanitizing ``name`` and
    ``job_id``. ``status`` is only written for ``end`` markers."""
    if phase not in ("begin", "end"):
        raise ValueError("phase must be 'begin' or 'end'")
    return _format(phase, sanitize_task_name(name), sanitize_job_id(job_id), tid, failed)


def _send(state: _State, payload: bytes) -> None:
    try:
        sock = state.sock
        if sock is None:
            with state.lock:
                sock = state.sock
                if sock is None:
                    sock = state.sock = _new_socket()
        sock.sendto(payload, socket.MSG_DONTWAIT, get_socket_path())
    except OSError as exc:
        code = exc.errno
        name = errno.errorcode.get(code, type(exc).__name__) if code else type(exc).__name__
        if code in _NO_AGENT:
            _count_drop(state, "dropped_no_agent", name)
        elif code in _BUSY or isinstance(exc, BlockingIOError):
            _count_drop(state, "dropped_busy", name)
        elif code in _DENIED:
            _count_drop(state, "dropped_denied", name)
        else:
            _count_drop(state, "dropped_error", name)
            # Unexpected (EBADF, EMSGSIZE, ...): start over with a fresh socket.
            with state.lock:
                broken, state.sock = state.sock, None
            _close(broken)
    else:
        _count(state, "sent")


def _emit(phase: str, name: Any, job_id: Any, failed: bool, tid: Optional[int]) -> None:
    try:
        state = _current_state()
        if tid is None:
            tid = threading.get_native_id()
        clean_name = sanitize_task_name(name)
        clean_job = sanitize_job_id(job_id)
        if clean_name != _text(name) or (
            job_id is not None and clean_job != _text(job_id)
        ):
            _count(state, "names_sanitized")
        blocks = None
        counted = _blocks_enabled()
        if counted and phase == "end":
            blocks = _blocks_since_begin(clean_name, clean_job)
        _send(
            state, _format(phase, clean_name, clean_job, tid, failed, blocks).encode("ascii")
        )
        if counted and phase == "begin":
            # After the send, so that the marker's own strings are gone from the count.
            _note_begin(clean_name, clean_job)
    except Exception as exc:  # never raise into the worker
        try:
            _count_drop(_state, "dropped_error", type(exc).__name__)
        except Exception:
            pass


def begin(name: Any, job_id: Any = None, *, tid: Optional[int] = None) -> None:
    """Send a ``begin`` marker for ``name`` from the calling thread."""
    _emit("begin", name, job_id, False, tid)


def end(
    name: Any, job_id: Any = None, *, failed: bool = False, tid: Optional[int] = None
) -> None:
    """Send an ``end`` marker (``status=error`` when ``failed``)."""
    _emit("end", name, job_id, failed, tid)


class task:
    """Mark a job: ``with leakscope.task("name", job_id=...):`` or
    ``@leakscope.task("name")``.

    Sends ``begin`` on entry and ``end`` on exit, ``status=error`` if an
    exception escapes (the exception still propagates). The instance keeps no
    per-call state, so a decorated function may be called concurrently and
    recursively.
    """

    __slots__ = ("name", "job_id")

    def __init__(self, name: Any, job_id: Any = None) -> None:
        self.name = name
        self.job_id = job_id

    def __enter__(self) -> "task":
        _emit("begin", self.name, self.job_id, False, None)
        return self

    def __exit__(self, exc_type: Any, exc: Any, tb: Any) -> bool:
        _emit("end", self.name, self.job_id, exc_type is not None, None)
        return False

    def __call__(self, func: F) -> F:
        name, job_id = self.name, self.job_id
        if inspect.iscoroutinefunction(func):

            @functools.wraps(func)
            async def async_wrapper(*args: Any, **kwargs: Any) -> Any:
                _emit("begin", name, job_id, False, None)
                failed = True
                try:
                    result = await func(*args, **kwargs)
                    failed = False
                    return result
                finally:
                    _emit("end", name, job_id, failed, None)

            return async_wrapper  # type: ignore[return-value]

        @functools.wraps(func)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            _emit("begin", name, job_id, False, None)
            failed = True
            try:
                result = func(*args, **kwargs)
                failed = False
                return result
            finally:
                _emit("end", name, job_id, failed, None)

        return wrapper  # type: ignore[return-value]

    def __repr__(self) -> str:
        return "leakscope.task(%r, job_id=%r)" % (self.name, self.job_id)

