"""Job functions importable by name by RQ and Django-Q workers."""

import os


def add(a, b):
    return a + b


def boom():
    raise ValueError("boom")


def whoami():
    return os.getpid()
