"""Run events on Redis pub/sub (``run:<id>``), beside the database where they are stored.

The database is the record; pub/sub only wakes listeners (the SSE stream) the moment an event
is committed. Without Redis (the embedded default) nothing is published and listeners fall back
to the database (see projects/api.py).
"""

from __future__ import annotations

import json
import threading
import time
import uuid
from typing import Any

import redis
import structlog
from django.conf import settings
from django.db import IntegrityError, transaction
from django.utils import timezone

from projects import notifications, sql
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
        deadline = time.monotonic() + timeout
        while True:
            # None also comes back at once for the (ignored) subscribe confirmation: wait on.
            message = self._pubsub.get_message(timeout=max(0.0, deadline - time.monotonic()))
            if message is not None:
                return json.loads(message["data"])
            if time.monotonic() >= deadline:
                return None

    def close(self) -> None:
        self._pubsub.close()  # its connection goes back to the shared pool


def event_record(*, run_id: int, type: str, stage: str = "", payload: dict[str, Any] | None = None) -> RunEvent:
    """Store a typed event; once committed, publish it on ``run:<id>`` and tell the person."""
    if type in RunEvent.ONCE and sql.postgresql():
        # One statement: no savepoint to set and release around the insert.
        now = timezone.now()
        row = sql.fetchone_prepared(
            f"INSERT INTO {RunEvent._meta.db_table} (run_id, type, stage, payload, created_at) "
            "VALUES (%s::bigint, %s::text, %s::text, %s::jsonb, %s::timestamptz) ON CONFLICT DO NOTHING RETURNING id",
            [run_id, str(type), str(stage), json.dumps(payload or {}), now],
        )
        if row is None:  # recorded by an earlier attempt: the person was told already
            log.info("run_event_exists", run_id=run_id, type=type)
            return RunEvent.objects.get(run_id=run_id, type=type)
        event = RunEvent(id=row[0], run_id=run_id, type=type, stage=stage, payload=payload or {}, created_at=now)
    elif type in RunEvent.ONCE:
        try:
            with transaction.atomic():
                event = RunEvent.objects.create(run_id=run_id, type=type, stage=stage, payload=payload or {})
        except IntegrityError:  # recorded by an earlier attempt: the person was told already
            log.info("run_event_exists", run_id=run_id, type=type)
            return RunEvent.objects.get(run_id=run_id, type=type)
    else:
        event = RunEvent.objects.create(run_id=run_id, type=type, stage=stage, payload=payload or {})
    event_inserted(event)
    return event


def event_inserted(event: RunEvent, *, reachable: bool | None = None) -> None:
    """What follows a stored event: the log line; once committed, the publish on ``run:<id>``
    and the person's notification. ``event_record`` calls it; so does the run state machine for
    the events its own single statements insert (projects/runs.py), which also say whether the
    run's owner has a reachable chat (``reachable=False``: nobody to tell, no query)."""
    run_id, type, stage = event.run_id, event.type, event.stage
    log.info("run_event", run_id=run_id, type=type, stage=stage or None, payload=event.payload)
    transaction.on_commit(
        lambda: publish(
            run_id=run_id,
            event_id=event.id,
            type=str(type),
            stage=str(stage),
            payload=event.payload,
            created_at=event.created_at.isoformat(),
        )
    )
    # The others are never news to a person: not even a query.
    if type in notifications.TOLD and reachable is not False:
        transaction.on_commit(lambda: notifications.run_event_notify(event.id), robust=True)


# --- open streams: a capped lease per stream ---------------------------------------------
# A stream holds a member in two sorted sets (the user's and everyone's), scored by when its
# lease ends. Opening drops the leases that ended (a process that died cannot release its own),
# then adds one only while both sets are under their caps: one atomic script, so two streams
# opening at once cannot both take the last place.
_ACQUIRE = """
local now = redis.call('TIME')
now = tonumber(now[1]) + tonumber(now[2]) / 1000000
local until_, ttl = now + tonumber(ARGV[2]), math.ceil(tonumber(ARGV[2])) + 1
for i, key in ipairs(KEYS) do
  redis.call('ZREMRANGEBYSCORE', key, '-inf', now)
  if redis.call('ZCARD', key) >= tonumber(ARGV[2 + i]) then return i end
end
for _, key in ipairs(KEYS) do
  redis.call('ZADD', key, until_, ARGV[1])
  redis.call('EXPIRE', key, ttl)
end
return 0
"""
_RENEW = """
local now = redis.call('TIME')
now = tonumber(now[1]) + tonumber(now[2]) / 1000000
for _, key in ipairs(KEYS) do
  redis.call('ZADD', key, 'XX', now + tonumber(ARGV[2]), ARGV[1])
  redis.call('EXPIRE', key, math.ceil(tonumber(ARGV[2])) + 1)
end
"""


class StreamLimitReached(Exception):
    def __init__(self, scope: str, limit: int):
        super().__init__(f"{scope} limit of {limit} open streams reached")
        self.scope, self.limit = scope, limit


class StreamLease:
    """One open event stream's place under the caps (``SSE_MAX_STREAMS_PER_USER`` and
    ``SSE_MAX_STREAMS``). Renew it more often than ``lease_seconds``; release it when the stream
    ends. A lease that is neither renewed nor released (its process died) lapses by itself."""

    def __init__(self, *, user_id: int, lease_seconds: float):
        self.keys = [f"sse:streams:user:{user_id}", "sse:streams:all"]
        self.member = uuid.uuid4().hex
        self.lease_seconds = lease_seconds
        self._client = _client()
        if self._client is None:
            raise RuntimeError("Stream leases need Redis (REDIS_URL).")

    def acquire(self) -> None:
        """Take a place, or raise StreamLimitReached (the user's cap first, then everyone's)."""
        limits = [settings.SSE_MAX_STREAMS_PER_USER, settings.SSE_MAX_STREAMS]
        full = self._client.eval(_ACQUIRE, len(self.keys), *self.keys, self.member, self.lease_seconds, *limits)
        if full:
            scope = ("user", "server")[int(full) - 1]
            raise StreamLimitReached(scope, limits[int(full) - 1])

    def renew(self) -> None:
        try:
            self._client.eval(_RENEW, len(self.keys), *self.keys, self.member, self.lease_seconds)
        except redis.RedisError as exc:  # the lease may lapse early; the stream goes on
            log.warning("stream_lease_renew_failed", error=str(exc))

    def release(self) -> None:
        try:
            for key in self.keys:
                self._client.zrem(key, self.member)
        except redis.RedisError as exc:  # it lapses on its own
            log.warning("stream_lease_release_failed", error=str(exc))


def open_streams(*, user_id: int) -> int:
    """How many of the user's streams hold a lease now (for tests and operators)."""
    client = _client()
    if client is None:
        return 0
    now = client.time()
    return client.zcount(f"sse:streams:user:{user_id}", now[0] + now[1] / 1e6, "+inf")
