"""Dramatiq hook with a real StubBroker and a real Worker (threads)."""

import os
import threading

import dramatiq
import pytest
from dramatiq import Worker
from dramatiq.brokers.stub import StubBroker
from dramatiq.middleware import Middleware, SkipMessage

from leakscope.dramatiq import LeakscopeMiddleware, install


class SkipFlagged(Middleware):
    def before_process_message(self, broker, message):
        if message.kwargs.get("skip"):
            raise SkipMessage()


@pytest.fixture
def broker():
    broker = StubBroker()
    broker.emit_after("process_boot")
    previous = dramatiq.get_broker()
    dramatiq.set_broker(broker)
    yield broker
    broker.flush_all()
    broker.close()
    dramatiq.set_broker(previous)


def run(broker, queue_name="default"):
    worker = Worker(broker, worker_timeout=50, worker_threads=2)
    worker.start()
    try:
        broker.join(queue_name, fail_fast=False, timeout=20_000)
        worker.join()
    finally:
        worker.stop()


def test_middleware_marks_each_message_from_the_worker_thread(broker, receiver):
    broker.add_middleware(LeakscopeMiddleware())
    seen = {}

    @dramatiq.actor(broker=broker, max_retries=0)
    def ls_ok(x):
        seen["tid"] = threading.get_native_id()

    @dramatiq.actor(broker=broker, max_retries=0)
    def ls_bad():
        raise ValueError("boom")

    ok = ls_ok.send(1)
    run(broker)
    bad = ls_bad.send()
    run(broker)
    ms = receiver.recv_n(4)
    assert [(m.phase, m.task, m.job, m.status) for m in ms] == [
        ("begin", "ls_ok", ok.message_id, None),
        ("end", "ls_ok", ok.message_id, "ok"),
        ("begin", "ls_bad", bad.message_id, None),
        ("end", "ls_bad", bad.message_id, "error"),
    ]
    assert all(m.pid == os.getpid() for m in ms)
    assert ms[0].tid == ms[1].tid == seen["tid"] != threading.get_native_id()
    assert ms[2].tid == ms[3].tid


def test_skip_after_our_begin_closes_it(broker, receiver):
    broker.add_middleware(LeakscopeMiddleware())
    broker.add_middleware(SkipFlagged())  # runs after ours

    @dramatiq.actor(broker=broker, max_retries=0)
    def ls_skipped(skip=False):
        raise AssertionError("must not run")

    msg = ls_skipped.send(skip=True)
    run(broker)
    b, e = receiver.recv_n(2)
    assert (b.phase, b.job) == ("begin", msg.message_id)
    assert (e.phase, e.job, e.status) == ("end", msg.message_id, "ok")


def test_skip_before_our_begin_sends_nothing(broker, receiver):
    broker.add_middleware(SkipFlagged())
    broker.add_middleware(LeakscopeMiddleware())  # never reached when skipped

    @dramatiq.actor(broker=broker, max_retries=0)
    def ls_skipped2(skip=False):
        pass

    ls_skipped2.send(skip=True)
    run(broker)
    receiver.assert_empty()
    ls_skipped2.send()
    run(broker)
    assert [m.phase for m in receiver.recv_n(2)] == ["begin", "end"]


def test_install_uses_global_broker_and_is_idempotent(broker, receiver):
    first = install()
    assert install(broker) is first
    assert sum(isinstance(m, LeakscopeMiddleware) for m in broker.middleware) == 1

    @dramatiq.actor(broker=broker, max_retries=0)
    def ls_once():
        pass

    ls_once.send()
    run(broker)
    assert [m.task for m in receiver.recv_n(2)] == ["ls_once", "ls_once"]
    receiver.assert_empty()
