"""Celery app for tests/tests/attribution.rs: the two task types of attribution_jobs.py."""

import os

from celery import Celery

import attribution_jobs
import leakscope.celery

BROKER = os.environ["LEAKSCOPE_TEST_BROKER"]

app = Celery("attribution_celery", broker=BROKER, backend=BROKER)
app.conf.update(
    broker_connection_retry_on_startup=True,
    worker_prefetch_multiplier=1,
    result_expires=600,
    worker_hijack_root_logger=False,
)
leakscope.celery.install(app)

keep_graph = app.task(name="attribution.keep_graph")(attribution_jobs.keep_graph)
churn = app.task(name="attribution.churn")(attribution_jobs.churn)
