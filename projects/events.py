"""Run events on Redis pub/sub (``run:<id>``), beside the database where they are stored.

The database is the record; pub/sub only wakes listeners (the SSE stream) the moment an event
is committed. Without Redis (the embedded default) nothing is published and listeners fall back
to the database (see projects/api.py).
"""
from __future__ import annotations

import json
import threading
from typing import Any

import redis
import structlog
from django.conf import settings
from django.db import IntegrityError, transaction

from projects import notifications
from projects.models import RunEvent

log = structlog.get_logger(__name__)


def channel(run_id: int) -> str:
    return f"run:{run_id}"


_clients: dict[str, redis.Redis] = {}
_clients_lock = threading.Lock()


def _client() -> redis.Redis | None:
    """This process's client for REDIS_URL: one connection pool, shared by every thread and reused
    by every publish. Built on first use, never at import; redis-py starts a new pool in a forked
    child (it checks the pid), so prefork workers do not share sockets."""
    url = settings.REDIS_URL
    if not url:
        return None
    client = _clients.get(url)
    if client is None:
        with _clients_lock:
            client = _clients.get(url)
            if client is None:
                client = _clients[url] = redis.Redis.from_url(url, socket_timeout=5, socket_connect_timeout=2)
    return client


def publish(*, run_id: int, event_id: int, type: str, stage: str, payload: dict, created_at: str) -> None:
    client = _client()
    if client is None:
        return
    message = json.dumps({"id": event_id, "type": type, "stage": stage, "payload": payload, "created_at": created_at})
    try:
        client.publish(channel(run_id), message)
    except redis.RedisError as exc:  # the event is stored; listeners catch up from the database
        log.warning("event_publish_failed", run_id=run_id, error=str(exc))


class Subscription:
    """A live subscription to a run's channel. Subscribe before reading the backlog from the
    database, so an event committed in between is not missed (duplicates are skipped by id)."""

    def __init__(self, run_id: int):
        client = _client()
        if client is None:
            raise RuntimeError("Event streaming needs Redis (REDIS_URL).")
        self._pubsub = client.pubsub(ignore_subscribe_messages=True)
        self._pubsub.subscribe(channel(run_id))

    def get(self, timeout: float) -> dict | None:
        """The next published event, or None after ``timeout`` seconds of silence."""
        message = self._pubsub.get_message(timeout=timeout)
        return json.loads(message["data"]) if message else None

    def close(self) -> None:
        self._pubsub.close()  # its connection goes back to the shared pool


def event_record(*, run_id: int, type: str, stage: str = "", payload: dict[str, Any] | None = None) -> RunEvent:
    """Store a typed event; once committed, publish it on ``run:<id>`` and tell the person."""
    if type in RunEvent.ONCE:
        try:
            with transaction.atomic():
                event = RunEvent.objects.create(run_id=run_id, type=type, stage=stage, payload=payload or {})
        except IntegrityError:  # recorded by an earlier attempt: the person was told already
            log.info("run_event_exists", run_id=run_id, type=type)
            return RunEvent.objects.get(run_id=run_id, type=type)
    else:
        event = RunEvent.objects.create(run_id=run_id, type=type, stage=stage, payload=payload or {})
    log.info("run_event", run_id=run_id, type=type, stage=stage or None, payload=payload or {})
    transaction.on_commit(lambda: publish(
        run_id=run_id, event_id=event.id, type=str(type), stage=str(stage), payload=event.payload,
        created_at=event.created_at.isoformat(),
    ))
    transaction.on_commit(lambda: notifications.run_event_notify(event.id), robust=True)
    return event
