"""GET /api/runs/<id>/events: server-sent events, live through Redis pub/sub, resumable."""
from __future__ import annotations

import queue
import threading
import urllib.request

import pytest
from django.conf import settings
from rest_framework.authtoken.models import Token

from projects import events, services


def _open(url: str, token: str, last_event_id: int | None = None):
    headers = {"Authorization": f"Token {token}", "Accept": "text/event-stream"}
    if last_event_id is not None:
        headers["Last-Event-ID"] = str(last_event_id)
    return urllib.request.urlopen(urllib.request.Request(url, headers=headers), timeout=30)


def _events(response, into: queue.Queue) -> None:
    """Parse the stream into (id, type) pairs as they arrive."""
    current: dict = {}
    for raw in response:
        line = raw.decode().rstrip("\n")
        if line.startswith("id: "):
            current["id"] = int(line[4:])
        elif line.startswith("event: "):
            current["type"] = line[7:]
        elif line == "" and current:
            into.put((current["id"], current["type"]))
            current = {}
    into.put(None)  # the stream ended


@pytest.fixture
def run_and_token(transactional_db, user):
    _, run = services.project_create(owner=user, description="a web service that greets people by name")
    return run, Token.objects.create(user=user).key


@pytest.mark.skipif(not settings.REDIS_URL, reason="live streaming needs Redis (REDIS_URL)")
def test_events_arrive_as_they_happen_and_the_stream_ends_with_the_final_message(live_server, run_and_token):
    run, token = run_and_token
    got: queue.Queue = queue.Queue()
    response = _open(f"{live_server.url}/api/runs/{run.id}/events/", token)
    assert response.headers["Content-Type"].startswith("text/event-stream")
    threading.Thread(target=_events, args=(response, got), daemon=True).start()
    assert got.get(timeout=10)[1] == "run.queued"  # the backlog first
    events.event_record(run_id=run.id, type="stage.started", stage="architect")
    assert got.get(timeout=10)[1] == "stage.started"  # then live, as it is committed
    events.event_record(run_id=run.id, type="run.notified", stage="notify", payload={"text": "done"})
    assert got.get(timeout=10)[1] == "run.notified"
    assert got.get(timeout=10) is None


def test_a_reconnect_with_last_event_id_misses_nothing_and_repeats_nothing(live_server, run_and_token):
    run, token = run_and_token
    first = events.event_record(run_id=run.id, type="stage.started", stage="architect")
    events.event_record(run_id=run.id, type="stage.succeeded", stage="architect")
    events.event_record(run_id=run.id, type="run.notified", stage="notify", payload={"text": "done"})
    got: queue.Queue = queue.Queue()
    _events(_open(f"{live_server.url}/api/runs/{run.id}/events/", token, last_event_id=first.id), got)
    seen = []
    while (item := got.get(timeout=5)) is not None:
        seen.append(item[1])
    assert seen == ["stage.succeeded", "run.notified"]


def test_refusals(live_server, run_and_token, other_user):
    run, token = run_and_token
    other = Token.objects.create(user=other_user).key
    for url, key, status in [
        (f"/api/runs/{run.id}/events/", other, 404),
        ("/api/runs/999999/events/", token, 404),
        (f"/api/runs/{run.id}/events/?after=abc", token, 400),
    ]:
        with pytest.raises(urllib.error.HTTPError) as err:
            _open(live_server.url + url, key)
        assert err.value.code == status
    with pytest.raises(urllib.error.HTTPError) as err:
        urllib.request.urlopen(f"{live_server.url}/api/runs/{run.id}/events/", timeout=10)
    assert err.value.code == 401
