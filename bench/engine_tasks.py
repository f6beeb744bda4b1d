"""Raw Celery tasks for bench/engine.py's baseline: five-task chains that do nothing.

Loaded into the benchmark's worker with ``celery -A config worker -I bench.engine_tasks``. They
take the stage tasks' options (late ack, no result, the same time limits), so the baseline and
the engine differ only by what the engine does in a task. The last task of a chain records when
it ran, so the benchmark knows each chain's latency.
"""

from __future__ import annotations

import time

import redis
from celery import shared_task
from django.conf import settings

DONE_KEY = "bench:raw:done"
OPTIONS = {
    "acks_late": True,
    "ignore_result": True,
    "soft_time_limit": settings.STAGE_SOFT_TIME_LIMIT,
    "time_limit": settings.STAGE_TIME_LIMIT,
}
_client: redis.Redis | None = None


def _redis() -> redis.Redis:
    global _client
    if _client is None:
        _client = redis.Redis.from_url(settings.REDIS_URL)
    return _client


@shared_task(name="bench.noop", **OPTIONS)
def noop() -> None:
    return None


@shared_task(name="bench.chain_done", **OPTIONS)
def chain_done(index: int) -> None:
    _redis().rpush(DONE_KEY, f"{index} {time.time()}")
