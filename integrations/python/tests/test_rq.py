"""RQ hook against a real redis-server (started here on a random loopback
port) and real RQ workers: SimpleWorker (in-process) and the forking Worker."""

import os
import shutil
import socket
import subprocess
import tempfile
import time

import pytest
import redis
from rq import Queue, SimpleWorker, Worker
from rq.job import Job

import leakscope.rq
from leakscope.rq import LeakscopeJob


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def redis_conn():
    binary = shutil.which("redis-server")
    if binary is None:
        pytest.fail(
            "redis-server not found on PATH: the RQ tests need a real Redis "
            "(Debian/Ubuntu: apt-get install -y redis-server)",
            pytrace=False,
        )
    workdir = tempfile.mkdtemp(prefix="ls-redis-")
    port = _free_port()
    proc = subprocess.Popen(
        [binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "",
         "--appendonly", "no", "--dir", workdir, "--daemonize", "no"],
        stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT,
    )
    conn = redis.Redis(host="127.0.0.1", port=port)
    try:
        deadline = time.monotonic() + 10
        while True:
            try:
                conn.ping()
                break
            except redis.exceptions.ConnectionError:
                if proc.poll() is not None or time.monotonic() > deadline:
                    pytest.fail("redis-server on port %d did not come up" % port, pytrace=False)
                time.sleep(0.05)
        yield conn
    finally:
        conn.close()
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        shutil.rmtree(workdir, ignore_errors=True)


@pytest.fixture
def queue(redis_conn):
    redis_conn.flushall()
    return Queue("ls-test", connection=redis_conn)


def test_simple_worker_with_job_class(queue, receiver):
    ok = queue.enqueue("_jobs.add", 2, 3)
    bad = queue.enqueue("_jobs.boom")
    worker = SimpleWorker([queue], connection=queue.connection, job_class=LeakscopeJob)
    worker.work(burst=True)
    ms = receiver.recv_n(4)
    assert [(m.phase, m.task, m.job, m.status) for m in ms] == [
        ("begin", "_jobs.add", ok.id, None),
        ("end", "_jobs.add", ok.id, "ok"),
        ("begin", "_jobs.boom", bad.id, None),
        ("end", "_jobs.boom", bad.id, "error"),
    ]
    assert all(m.pid == os.getpid() for m in ms)
    assert Job.fetch(ok.id, connection=queue.connection).return_value() == 5
    receiver.assert_empty()


def test_forking_worker_marks_from_the_work_horse(queue, receiver):
    job = queue.enqueue("_jobs.whoami")
    worker = Worker([queue], connection=queue.connection, job_class=LeakscopeJob)
    worker.work(burst=True)
    horse_pid = Job.fetch(job.id, connection=queue.connection).return_value()
    b, e = receiver.recv_n(2)
    assert (b.phase, b.task, b.job) == ("begin", "_jobs.whoami", job.id)
    assert (e.phase, e.status) == ("end", "ok")
    assert b.pid == e.pid == horse_pid != os.getpid()


def test_install_patches_plain_job_class(queue, receiver):
    leakscope.rq.install()
    leakscope.rq.install()  # idempotent
    try:
        ok = queue.enqueue("_jobs.add", 1, 1)
        bad = queue.enqueue("_jobs.boom")
        SimpleWorker([queue], connection=queue.connection).work(burst=True)
        # Combined with LeakscopeJob, a job is still marked once.
        again = queue.enqueue("_jobs.add", 2, 2)
        SimpleWorker([queue], connection=queue.connection, job_class=LeakscopeJob).work(burst=True)
    finally:
        leakscope.rq.uninstall()
    ms = receiver.recv_n(6)
    assert [(m.phase, m.job, m.status) for m in ms] == [
        ("begin", ok.id, None), ("end", ok.id, "ok"),
        ("begin", bad.id, None), ("end", bad.id, "error"),
        ("begin", again.id, None), ("end", again.id, "ok"),
    ]
    receiver.assert_empty()
    # Uninstalled: plain jobs are no longer marked.
    queue.enqueue("_jobs.add", 3, 3)
    SimpleWorker([queue], connection=queue.connection).work(burst=True)
    receiver.assert_empty()
