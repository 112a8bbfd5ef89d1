"""The Celery app of the dispatch benchmark: one task, a sleep of some milliseconds.

Workers load it with ``celery -A bench._celery_app worker``; the broker and result backend
URL (a Redis the benchmark started) comes in ``BENCH_REDIS_URL``."""

from __future__ import annotations

import os
import time

from celery import Celery

app = Celery("bench", broker=os.environ.get("BENCH_REDIS_URL", "redis://127.0.0.1:6379/0"),
             backend=os.environ.get("BENCH_REDIS_URL", "redis://127.0.0.1:6379/0"))
app.conf.update(task_serializer="json", result_serializer="json", accept_content=["json"],
                worker_hijack_root_logger=False, broker_connection_retry_on_startup=True,
                task_default_queue="bench")


@app.task(name="bench.sleep_ms")
def sleep_ms(ms: int) -> int:
    if ms:
        time.sleep(ms / 1000)
    return ms
