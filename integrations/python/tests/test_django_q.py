"""Django-Q (django-q2) hook.

Driven through django-q2's real code path: a minimal in-memory Django project
(settings.configure, sqlite ``:memory:``, ORM broker) and ``sync=True``, in
which ``async_task`` runs django-q's own ``worker()`` and ``monitor()``
functions in this process, sending the real ``pre_execute`` /
``post_execute_in_worker`` signals. A full ``qcluster`` (separate worker
processes polling the broker) is not started here.
"""

import os
import threading

import pytest

import django
from django.conf import settings

if not settings.configured:
    settings.configure(
        INSTALLED_APPS=["django_q"],
        DATABASES={"default": {"ENGINE": "django.db.backends.sqlite3", "NAME": ":memory:"}},
        SECRET_KEY="leakscope-tests-only",
        Q_CLUSTER={"name": "leakscope-test", "orm": "default", "sync": True,
                   "timeout": 60, "retry": 120},
        USE_TZ=True,
        DEFAULT_AUTO_FIELD="django.db.models.AutoField",
        LOGGING_CONFIG=None,
    )
    django.setup()

from django.core.management import call_command  # noqa: E402
from django_q import signals  # noqa: E402
from django_q.models import Task  # noqa: E402
from django_q.tasks import async_task  # noqa: E402

import leakscope.django_q  # noqa: E402


@pytest.fixture(scope="module", autouse=True)
def db():
    call_command("migrate", verbosity=0, interactive=False)


@pytest.fixture
def hooked():
    leakscope.django_q.install()
    leakscope.django_q.install()  # idempotent
    yield
    leakscope.django_q.uninstall()


def test_sync_task_marks_begin_and_end(hooked, receiver):
    task_id = async_task("_jobs.add", 2, 3, sync=True)
    b, e = receiver.recv_n(2)
    assert (b.phase, b.task, b.job) == ("begin", "_jobs.add", task_id)
    assert (e.phase, e.task, e.job, e.status) == ("end", "_jobs.add", task_id, "ok")
    assert b.pid == e.pid == os.getpid()
    assert b.tid == threading.get_native_id()
    assert Task.objects.get(id=task_id).result == 5
    receiver.assert_empty()


def test_failing_sync_task_marks_error(hooked, receiver):
    with pytest.raises(ValueError):
        async_task("_jobs.boom", sync=True)
    b, e = receiver.recv_n(2)
    assert b.task == e.task == "_jobs.boom"
    assert e.status == "error"
    receiver.assert_empty()


def test_callable_func_named_by_dotted_path(hooked, receiver):
    import _jobs

    async_task(_jobs.add, 1, 1, sync=True)
    assert [m.task for m in receiver.recv_n(2)] == ["_jobs.add", "_jobs.add"]


def test_handlers_with_documented_signal_arguments(receiver):
    # The exact keyword arguments django-q2's worker() sends.
    task = {"id": "0f" * 16, "name": "alpha-bravo", "func": "pkg.mod.fn", "args": (), "kwargs": {}}
    leakscope.django_q.on_pre_execute(sender="django_q", func=None, task=task)
    task["success"] = False
    leakscope.django_q.on_post_execute_in_worker(sender="django_q", func=None, task=task)
    b, e = receiver.recv_n(2)
    assert (b.task, b.job) == ("pkg.mod.fn", "0f" * 16)
    assert e.status == "error"


def test_uninstall_disconnects(receiver):
    leakscope.django_q.install()
    leakscope.django_q.uninstall()
    async_task("_jobs.add", 1, 2, sync=True)
    receiver.assert_empty()
    assert not signals.pre_execute.has_listeners() or all(
        "leakscope" not in repr(r) for r in signals.pre_execute.receivers
    )
