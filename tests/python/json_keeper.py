"""A worker that leaks from one known function: `keep_document` keeps every job's parsed
document, with a padded copy of its text, in a module-level list; `handle_job` builds a small
message per job and drops it again (churn that is freed). tests/tests/python_frames.rs expects
the leak to be charged to `keep_document` at the line this script prints at start-up (so the
test hard-codes no line number).
"""

import json
import sys
import time

KEPT = []


def keep_document(text):
    KEPT.append((json.loads(text), text * 40))


KEEP_LINE = keep_document.__code__.co_firstlineno + 1


def handle_job(job):
    text = json.dumps({"job": job, "items": [job, job + 1, job + 2], "note": "x" * 100})
    keep_document(text)


def main():
    print(f"ready {KEEP_LINE}", flush=True)
    job = 0
    while True:
        handle_job(job)
        job += 1
        if job % 50 == 0:
            time.sleep(0.005)


if __name__ == "__main__":
    sys.exit(main())
