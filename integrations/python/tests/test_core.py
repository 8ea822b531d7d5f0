import asyncio
import errno
import gc
import os
import socket
import subprocess
import sys
import threading
import time

import pytest

import leakscope
from leakscope import _client
from conftest import Receiver, parse_marker


def delta(before, after, key):
    return after[key] - before[key]


# ---- markers on the wire -----------------------------------------------------


def test_context_manager_sends_begin_and_end_with_kernel_credentials(receiver):
    with leakscope.task("reports.build", job_id="job-1") as t:
        assert isinstance(t, leakscope.task)
        first = receiver.recv()
    second = receiver.recv()
    me = threading.get_native_id()
    assert first.text == "LS1 begin reports.build job=job-1 tid=%d" % me
    assert second.text.startswith("LS1 end reports.build job=job-1 tid=%d status=ok" % me)
    for m in (first, second):
        assert m.pid == os.getpid()
        assert m.uid == os.getuid()
        assert m.gid == os.getgid()
    receiver.assert_empty()


def test_no_job_id_is_omitted(receiver):
    with leakscope.task("t"):
        pass
    b, e = receiver.recv_n(2)
    assert b.job is None and e.job is None
    assert e.status == "ok"


def test_decorator(receiver):
    @leakscope.task("math.add", job_id=7)
    def add(a, b):
        """adds"""
        return a + b

    assert add.__name__ == "add" and add.__doc__ == "adds"
    assert add(2, 3) == 5
    assert add(a=1, b=1) == 2
    ms = receiver.recv_n(4)
    assert [(m.phase, m.task, m.job, m.status) for m in ms] == [
        ("begin", "math.add", "7", None),
        ("end", "math.add", "7", "ok"),
    ] * 2


def test_context_manager_exception_propagates_and_marks_error(receiver):
    with pytest.raises(KeyError):
        with leakscope.task("fails"):
            raise KeyError("x")
    b, e = receiver.recv_n(2)
    assert (b.phase, e.phase, e.status) == ("begin", "end", "error")


def test_decorator_exception_propagates_and_marks_error(receiver):
    @leakscope.task("fails.too")
    def bad():
        raise RuntimeError("nope")

    with pytest.raises(RuntimeError, match="nope"):
        bad()
    b, e = receiver.recv_n(2)
    assert b.phase == "begin" and e.status == "error"


def test_base_exceptions_mark_error(receiver):
    with pytest.raises(KeyboardInterrupt):
        with leakscope.task("interrupted"):
            raise KeyboardInterrupt
    assert receiver.recv_n(2)[1].status == "error"


def test_async_decorator_marks_around_the_coroutine(receiver):
    @leakscope.task("aio.job")
    async def job(x):
        await asyncio.sleep(0)
        return x * 2

    coro = job(21)
    receiver.assert_empty(0.05)  # nothing sent until it runs
    assert asyncio.run(coro) == 42

    @leakscope.task("aio.bad")
    async def bad():
        raise ValueError

    with pytest.raises(ValueError):
        asyncio.run(bad())
    ms = receiver.recv_n(4)
    assert [(m.task, m.phase, m.status) for m in ms] == [
        ("aio.job", "begin", None),
        ("aio.job", "end", "ok"),
        ("aio.bad", "begin", None),
        ("aio.bad", "end", "error"),
    ]


def test_nested_tasks_are_lifo(receiver):
    with leakscope.task("outer"):
        with leakscope.task("inner"):
            pass
    ms = receiver.recv_n(4)
    assert [(m.phase, m.task) for m in ms] == [
        ("begin", "outer"), ("begin", "inner"), ("end", "inner"), ("end", "outer"),
    ]


def test_each_thread_sends_its_own_tid(receiver):
    tids = []

    def work():
        tids.append(threading.get_native_id())
        with leakscope.task("threaded"):
            pass

    t = threading.Thread(target=work)
    t.start()
    t.join()
    b, e = receiver.recv_n(2)
    assert b.tid == e.tid == tids[0] != threading.get_native_id()
    assert b.pid == os.getpid()


def test_begin_end_functions(receiver):
    leakscope.begin("manual", "j")
    leakscope.end("manual", "j", failed=True)
    leakscope.end("manual", tid=99)
    b, e, e2 = receiver.recv_n(3)
    assert b.text == "LS1 begin manual job=j tid=%d" % threading.get_native_id()
    assert e.status == "error"
    assert e2.text == "LS1 end manual tid=99 status=ok"  # no begin of its own: no blocks


def test_end_carries_the_blocks_the_job_kept(receiver):
    kept = []
    # Garbage from earlier tests, collected inside a job, would count against it.
    gc.collect()
    with leakscope.task("keeps"):
        kept.append([{"i": i} for i in range(5000)])
    with leakscope.task("frees"):
        transient = [{"i": i} for i in range(50000)]
        del transient
    _, keeps, _, frees = receiver.recv_n(4)
    # 5000 dicts and the list: at least one block each.
    assert keeps.blocks >= 5000, keeps.text
    assert abs(frees.blocks) < 500, frees.text


def test_nested_jobs_count_their_own_span(receiver):
    kept = []
    with leakscope.task("outer", job_id=1):
        with leakscope.task("inner", job_id=2):
            kept.append([object() for _ in range(3000)])
        kept.append([object() for _ in range(1000)])
    ms = receiver.recv_n(4)
    inner, outer = ms[2], ms[3]
    assert 3000 <= inner.blocks < 3500, inner.text
    assert 4000 <= outer.blocks < 4600, outer.text


def test_blocks_can_be_turned_off(receiver, monkeypatch):
    monkeypatch.setenv(_client.ENV_BLOCKS, "0")
    with leakscope.task("quiet"):
        pass
    _, e = receiver.recv_n(2)
    assert e.blocks is None and e.text.endswith("status=ok"), e.text


def test_lost_ends_do_not_grow_the_begin_table(receiver):
    for i in range(_client._MAX_OPEN_COUNTS * 3):
        leakscope.begin("never.ends", i)
        receiver.recv()
    assert len(_client._open_counts.stack) == _client._MAX_OPEN_COUNTS
    leakscope.end("never.ends", 0)  # forgotten: sent without blocks
    assert receiver.recv().blocks is None
    _client._open_counts.stack.clear()


def test_env_var_selects_socket(sockdir, monkeypatch):
    r = Receiver(os.path.join(sockdir, "env.sock"))
    try:
        monkeypatch.setenv("LEAKSCOPE_SOCKET", r.path)
        assert leakscope.get_socket_path() == r.path
        leakscope.begin("via.env")
        assert r.recv().task == "via.env"
        # configure() wins over the environment.
        leakscope.configure("/nonexistent/x.sock")
        assert leakscope.get_socket_path() == "/nonexistent/x.sock"
    finally:
        r.close()


def test_default_socket_path():
    assert leakscope.get_socket_path() == "/run/leakscope/tasks.sock"
    assert leakscope.stats()["socket_path"] == "/run/leakscope/tasks.sock"


# ---- sanitization --------------------------------------------------------------


@pytest.mark.parametrize(
    "name, expected",
    [
        ("proj.tasks:add", "proj.tasks:add"),
        ("a/b@c-d_e", "a/b@c-d_e"),
        ("with space", "with_space"),
        ("tâche", "t_che"),
        ("<lambda>", "_lambda_"),
        ("x\ny\0z", "x_y_z"),
        ("", "_"),
        (42, "42"),
        (None, "None"),
        ("k=v", "k_v"),
        ("日本", "__"),
    ],
)
def test_sanitize_task_name(name, expected):
    assert leakscope.sanitize_task_name(name) == expected


def test_sanitize_truncates_to_protocol_limits():
    assert leakscope.sanitize_task_name("é" * 500) == "_" * 128
    assert len(leakscope.sanitize_task_name("a" * 1000)) == 128
    assert leakscope.sanitize_job_id("j" * 100) == "j" * 64
    assert leakscope.sanitize_job_id("a b\tc") == "a_b_c"
    assert leakscope.sanitize_job_id("ünï") == "_n_"
    assert leakscope.sanitize_job_id("") is None
    assert leakscope.sanitize_job_id(None) is None
    assert leakscope.sanitize_job_id(123) == "123"
    assert leakscope.sanitize_job_id("a=b!~") == "a=b!~"


def test_sanitized_names_on_the_wire(receiver):
    before = leakscope.stats()
    with leakscope.task("my task/ünicode " + "x" * 300, job_id="id with spaces " + "y" * 99):
        pass
    b, e = receiver.recv_n(2)
    assert b.task == "my_task/_nicode_" + "x" * 112
    assert len(b.task) == 128
    assert b.job == "id_with_spaces_" + "y" * 49
    assert e.task == b.task and e.job == b.job
    assert delta(before, leakscope.stats(), "names_sanitized") == 2


def test_format_marker():
    assert leakscope.format_marker("begin", "t") == "LS1 begin t"
    assert leakscope.format_marker("end", "t") == "LS1 end t status=ok"
    assert (leakscope.format_marker("end", "a b", job_id="j", tid=5, failed=True)
            == "LS1 end a_b job=j tid=5 status=error")
    # tid outside u32 (or 0) is left out rather than making the marker invalid.
    assert leakscope.format_marker("begin", "t", tid=0) == "LS1 begin t"
    assert leakscope.format_marker("begin", "t", tid=2**32) == "LS1 begin t"
    with pytest.raises(ValueError):
        leakscope.format_marker("start", "t")
    longest = leakscope.format_marker("end", "n" * 999, "j" * 999, 2**32 - 1, True)
    parse_marker(longest)
    assert len(longest) <= leakscope.MAX_DATAGRAM


# ---- never blocks, never raises ------------------------------------------------------


def run_bounded(fn, seconds):
    """Run fn in a daemon thread; fail (instead of hanging) if it blocks."""
    box = {}

    def target():
        try:
            box["result"] = fn()
        except BaseException as exc:  # pragma: no cover - reported below
            box["error"] = exc

    t = threading.Thread(target=target, daemon=True)
    start = time.monotonic()
    t.start()
    t.join(seconds)
    assert not t.is_alive(), "sending blocked for more than %ss" % seconds
    assert "error" not in box, "sending raised %r" % box.get("error")
    return box.get("result"), time.monotonic() - start


def test_no_agent_socket_missing(sockdir):
    leakscope.configure(os.path.join(sockdir, "missing.sock"))
    before = leakscope.stats()

    def send():
        for i in range(1000):
            with leakscope.task("nobody.listens", job_id=i):
                pass

    _, elapsed = run_bounded(send, 10)
    after = leakscope.stats()
    assert delta(before, after, "dropped_no_agent") == 2000
    assert delta(before, after, "dropped") == 2000
    assert delta(before, after, "sent") == 0
    assert after["last_error"] == "ENOENT"
    assert elapsed < 5


def test_no_agent_stale_socket_file(sockdir):
    r = Receiver(os.path.join(sockdir, "stale.sock"))
    r.close()  # the file stays, nobody is bound to it any more
    leakscope.configure(r.path)
    before = leakscope.stats()
    run_bounded(lambda: leakscope.begin("stale"), 5)
    after = leakscope.stats()
    assert delta(before, after, "dropped_no_agent") == 1
    assert after["last_error"] == "ECONNREFUSED"


def test_full_receiver_buffer_does_not_block(sockdir):
    r = Receiver(os.path.join(sockdir, "full.sock"), rcvbuf=1)  # kernel minimum
    try:
        leakscope.configure(r.path)
        before = leakscope.stats()

        def flood():
            for i in range(5000):
                leakscope.begin("flood", i)
                leakscope.end("flood", i)

        _, elapsed = run_bounded(flood, 20)
        after = leakscope.stats()
        sent = delta(before, after, "sent")
        busy = delta(before, after, "dropped_busy")
        assert sent + busy == 10000
        assert sent >= 1
        assert busy > 0, "receiver queue never filled up"
        assert after["last_error"] in ("EAGAIN", "EWOULDBLOCK", "ENOBUFS")
        assert elapsed < 10
        got = r.drain()
        assert len(got) == sent
        assert all(m.task == "flood" and m.pid == os.getpid() for m in got)
    finally:
        r.close()


class FakeSocket:
    def __init__(self, exc):
        self.exc = exc
        self.closed = False

    def sendto(self, *args):
        raise self.exc

    def close(self):
        self.closed = True


@pytest.mark.parametrize(
    "exc, counter, last",
    [
        (OSError(errno.EPERM, "x"), "dropped_denied", "EPERM"),
        (OSError(errno.EACCES, "x"), "dropped_denied", "EACCES"),
        (OSError(errno.ENOENT, "x"), "dropped_no_agent", "ENOENT"),
        (OSError(errno.ECONNREFUSED, "x"), "dropped_no_agent", "ECONNREFUSED"),
        (BlockingIOError(errno.EAGAIN, "x"), "dropped_busy", "EAGAIN"),
        (OSError(errno.ENOBUFS, "x"), "dropped_busy", "ENOBUFS"),
        (OSError(errno.EMSGSIZE, "x"), "dropped_error", "EMSGSIZE"),
        (OSError("AF_UNIX path too long"), "dropped_error", "OSError"),
        (RuntimeError("weird"), "dropped_error", "RuntimeError"),
    ],
)
def test_send_errors_are_swallowed_and_counted(monkeypatch, exc, counter, last):
    fake = FakeSocket(exc)
    state = _client._current_state()
    monkeypatch.setattr(state, "sock", fake)
    before = leakscope.stats()
    leakscope.end("x", failed=True)
    after = leakscope.stats()
    assert delta(before, after, counter) == 1
    assert delta(before, after, "dropped") == 1
    assert after["last_error"] == last
    if counter == "dropped_error" and isinstance(exc, OSError):
        # Unexpected socket errors drop the socket; the next send makes a new one.
        assert fake.closed and state.sock is None
    else:
        assert state.sock is fake


def test_socket_creation_failure_is_swallowed(monkeypatch):
    def boom():
        raise OSError(errno.EMFILE, "Too many open files")

    monkeypatch.setattr(_client, "_new_socket", boom)
    monkeypatch.setattr(_client._current_state(), "sock", None)
    before = leakscope.stats()
    leakscope.begin("x")
    assert delta(before, leakscope.stats(), "dropped_error") == 1
    assert leakscope.stats()["last_error"] == "EMFILE"


def test_unprintable_name_object_is_swallowed(receiver):
    class Evil:
        def __str__(self):
            raise RuntimeError("no str for you")

    before = leakscope.stats()
    with leakscope.task(Evil()):
        pass
    assert delta(before, leakscope.stats(), "dropped_error") == 2
    receiver.assert_empty(0.05)


def test_concurrent_senders_count_every_marker(receiver):
    before = leakscope.stats()
    n_threads, per_thread = 8, 250

    def work():
        for i in range(per_thread):
            leakscope.begin("conc", i)

    threads = [threading.Thread(target=work) for _ in range(n_threads)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    after = leakscope.stats()
    assert (delta(before, after, "sent") + delta(before, after, "dropped")
            == n_threads * per_thread)
    assert len(receiver.drain()) == delta(before, after, "sent")


def test_stats_shape():
    s = leakscope.stats()
    for key in ("sent", "dropped", "dropped_no_agent", "dropped_busy",
                "dropped_denied", "dropped_error", "names_sanitized"):
        assert isinstance(s[key], int)
    assert s["pid"] == os.getpid()


# ---- fork safety -------------------------------------------------------------------


def test_fork_child_sends_with_its_own_pid_and_socket(receiver):
    leakscope.begin("parent")
    assert receiver.recv().pid == os.getpid()
    parent_sock = _client._state.sock
    assert parent_sock is not None

    pid = os.fork()
    if pid == 0:  # child: never return into pytest
        code = 1
        try:
            fresh = _client._state.sock is None and leakscope.stats()["sent"] == 0
            with leakscope.task("child.job", job_id="c1"):
                pass
            ok = fresh and _client._state.sock is not parent_sock
            ok = ok and leakscope.stats()["sent"] == 2
            code = 0 if ok else 3
        finally:
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    assert os.WIFEXITED(status) and os.WEXITSTATUS(status) == 0
    b, e = receiver.recv_n(2)
    assert (b.phase, b.task, b.job) == ("begin", "child.job", "c1")
    assert e.status == "ok"
    assert b.pid == e.pid == pid != os.getpid()
    # The parent's socket is untouched by the child closing its copy.
    leakscope.end("parent")
    assert receiver.recv().pid == os.getpid()
    assert _client._state.sock is parent_sock


def test_pid_change_without_fork_hook_recreates_socket(receiver, monkeypatch):
    leakscope.begin("a")
    receiver.recv()
    old = _client._state
    monkeypatch.setattr(old, "pid", -1)  # as if forked behind Python's back
    leakscope.begin("b")
    m = receiver.recv()
    assert m.task == "b" and m.pid == os.getpid()
    assert _client._state is not old and _client._state.pid == os.getpid()
    assert old.sock is None or old.sock.fileno() == -1


def test_multiprocessing_fork_children(receiver):
    import multiprocessing

    ctx = multiprocessing.get_context("fork")
    with ctx.Pool(2) as pool:
        pids = pool.map(_pool_job, range(4))
    ms = receiver.recv_n(8)
    assert sorted(m.pid for m in ms) == sorted(pids * 2)
    assert os.getpid() not in pids


def _pool_job(i):
    with leakscope.task("pool.job", job_id=i):
        return os.getpid()


# ---- packaging ---------------------------------------------------------------------


def test_core_import_pulls_in_no_framework():
    src = os.path.dirname(os.path.dirname(leakscope.__file__))
    code = (
        "import sys, leakscope\n"
        "bad = [m for m in ('celery', 'rq', 'dramatiq', 'django_q', 'django', 'redis')"
        " if m in sys.modules]\n"
        "assert not bad, bad\n"
        "try:\n"
        "    leakscope.nope\n"
        "except AttributeError:\n"
        "    pass\n"
        "else:\n"
        "    raise SystemExit('no AttributeError')\n"
        "# Hooks import their framework only when used; without it, ImportError.\n"
        "for hook, framework in [('celery', 'celery'), ('rq', 'rq'),\n"
        "                        ('dramatiq', 'dramatiq'), ('django_q', 'django_q')]:\n"
        "    sys.modules[framework] = None  # as if not installed\n"
        "    try:\n"
        "        getattr(leakscope, hook).install()\n"
        "    except ImportError:\n"
        "        pass\n"
        "    else:\n"
        "        raise SystemExit('leakscope.%s.install() worked without %s' % (hook, framework))\n"
    )
    env = dict(os.environ, PYTHONPATH=src)
    subprocess.run([sys.executable, "-W", "error", "-c", code], check=True, env=env)
