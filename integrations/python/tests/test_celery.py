"""Celery hook against a real Celery app: eager mode and an embedded worker
(memory:// broker, solo pool) consuming real messages."""

import os
import threading

import pytest
from celery import Celery
from celery.contrib.testing.worker import start_worker

import leakscope.celery


@pytest.fixture
def app():
    app = Celery("ls_test", broker="memory://", backend="cache+memory://", set_as_current=False)
    app.conf.task_always_eager = False
    app.conf.broker_connection_retry_on_startup = False

    @app.task(name="ls.add", shared=False)
    def add(a, b):
        return a + b

    @app.task(name="ls.fail", shared=False)
    def fail():
        raise ValueError("boom")

    @app.task(name="ls.where", shared=False)
    def where():
        return os.getpid(), threading.get_native_id()

    yield app
    leakscope.celery.uninstall()


def test_eager_mode_fires_prerun_and_postrun(app, receiver):
    leakscope.celery.install(app)
    app.conf.task_always_eager = True
    result = app.tasks["ls.add"].delay(2, 3)
    assert result.get() == 5
    b, e = receiver.recv_n(2)
    assert (b.phase, b.task, b.job) == ("begin", "ls.add", result.id)
    assert (e.phase, e.task, e.job, e.status) == ("end", "ls.add", result.id, "ok")
    assert b.pid == e.pid == os.getpid()
    assert b.tid == e.tid == threading.get_native_id()
    receiver.assert_empty()


def test_eager_failure_marks_error(app, receiver):
    leakscope.celery.install(app)
    app.conf.task_always_eager = True
    result = app.tasks["ls.fail"].apply()
    assert result.failed()
    b, e = receiver.recv_n(2)
    assert b.job == e.job == result.id
    assert e.status == "error"
    assert leakscope.celery._failed_ids() == set()  # nothing left behind


def test_eager_propagating_failure_still_ends(app, receiver):
    leakscope.celery.install()
    app.conf.task_always_eager = True
    app.conf.task_eager_propagates = True
    with pytest.raises(ValueError):
        app.tasks["ls.fail"].delay()
    b, e = receiver.recv_n(2)
    assert (b.phase, e.phase, e.status) == ("begin", "end", "error")


def test_other_apps_are_ignored_when_an_app_is_given(app, receiver):
    other = Celery("other", broker="memory://", set_as_current=False)
    other.conf.task_always_eager = True

    @other.task(name="other.t", shared=False)
    def t():
        return 1

    leakscope.celery.install(app)
    t.delay()
    receiver.assert_empty()
    leakscope.celery.install()  # all apps
    t.delay()
    assert [m.task for m in receiver.recv_n(2)] == ["other.t", "other.t"]


def test_hook_is_reachable_as_package_attribute():
    import importlib

    import leakscope

    assert leakscope.celery is importlib.import_module("leakscope.celery")


def test_install_is_idempotent(app, receiver):
    for _ in range(3):
        leakscope.celery.install(app)
    app.conf.task_always_eager = True
    app.tasks["ls.add"].delay(1, 1)
    assert len(receiver.recv_n(2)) == 2
    receiver.assert_empty()


def test_embedded_worker_marks_from_the_worker_thread(app, receiver):
    leakscope.celery.install(app)
    with start_worker(app, pool="solo", perform_ping_check=False, shutdown_timeout=10):
        ok = app.tasks["ls.where"].delay()
        pid, tid = ok.get(timeout=20)
        bad = app.tasks["ls.fail"].delay()
        with pytest.raises(ValueError):
            bad.get(timeout=20)
        ms = receiver.recv_n(4)
    assert [(m.phase, m.task, m.job, m.status) for m in ms] == [
        ("begin", "ls.where", ok.id, None),
        ("end", "ls.where", ok.id, "ok"),
        ("begin", "ls.fail", bad.id, None),
        ("end", "ls.fail", bad.id, "error"),
    ]
    assert pid == os.getpid()
    assert all(m.pid == pid and m.tid == tid for m in ms)
    assert tid != threading.get_native_id()  # the worker's thread, not ours
