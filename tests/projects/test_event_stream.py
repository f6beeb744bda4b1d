"""GET /api/runs/<id>/events: server-sent events, live through Redis pub/sub, resumable, bounded.

A stream ends once its run is settled (finished, nothing running or queued) and every event is
sent; a stream of a run still going ends after SSE_MAX_SECONDS with a retry hint. Open streams
are capped per user and in all (429), and a stream's place is given back when it ends, when its
client goes away, or (its process died) when its lease lapses.
"""

from __future__ import annotations

import json
import queue
import threading
import time
import urllib.error
import urllib.request

import pytest
import redis
from django.conf import settings
from rest_framework.authtoken.models import Token

from projects import events, runs, services
from projects.models import RunEvent, Stage

live_only = pytest.mark.skipif(not settings.REDIS_URL, reason="live streaming needs Redis (REDIS_URL)")
STAGES = [s.value for s in Stage]


def _open(url: str, token: str, last_event_id: int | str | None = None, timeout: float = 30):
    headers = {"Authorization": f"Token {token}", "Accept": "text/event-stream"}
    if last_event_id is not None:
        headers["Last-Event-ID"] = str(last_event_id)
    return urllib.request.urlopen(urllib.request.Request(url, headers=headers), timeout=timeout)


def _events(response, into: queue.Queue) -> None:
    """Parse the stream into (id, type) pairs as they arrive; comments as ("#", text)."""
    current: dict = {}
    for raw in response:
        line = raw.decode().rstrip("\n")
        if line.startswith("id: "):
            current["id"] = int(line[4:])
        elif line.startswith("event: "):
            current["type"] = line[7:]
        elif line.startswith((":", "retry:")):
            into.put(("#", line))
        elif line == "" and current:
            into.put((current["id"], current["type"]))
            current = {}
    into.put(None)  # the stream ended


def _all(response) -> list:
    got: queue.Queue = queue.Queue()
    _events(response, got)
    return list(iter(got.get, None))


def _settle(run) -> None:
    """Take the run through all six stages as the pipeline does; Notify writes its message, then
    its own stage.succeeded (the event the stream used to miss)."""
    for stage in STAGES:
        claim = runs.stage_claim(run_id=run.id, stage=stage, task_id=f"t-{run.id}-{stage}")
        assert claim.state == runs.ClaimState.CLAIMED, (stage, claim.state)
        if stage == Stage.NOTIFY:
            assert runs.run_succeed(run_id=run.id, result_message="It is live.")
            events.event_record(
                run_id=run.id, type=RunEvent.Type.NOTIFIED, stage="notify", payload={"text": "It is live."}
            )
        assert runs.stage_succeed(stage_run_id=claim.stage_run.id, attempt=claim.stage_run.attempt, output={})


@pytest.fixture(autouse=True)
def quick_keepalives(settings):
    """A client that went away is noticed at the next keep-alive: soon, so its server thread
    (and its database connection) ends with the test."""
    settings.SSE_KEEPALIVE_SECONDS = 0.2


@pytest.fixture
def leases():
    """No leases left by other tests (they share this Redis database)."""

    def clear():
        if settings.REDIS_URL:
            client = redis.Redis.from_url(settings.REDIS_URL)
            for key in client.scan_iter("sse:streams:*"):
                client.delete(key)
            client.close()

    clear()
    yield
    clear()


@pytest.fixture
def run_and_token(transactional_db, user, leases):
    _, run = services.project_create(owner=user, description="a web service that greets people by name")
    return run, Token.objects.create(user=user).key


def _url(live_server, run) -> str:
    return f"{live_server.url}/api/runs/{run.id}/events/"


@live_only
def test_events_arrive_as_they_happen_and_the_stream_ends_once_the_run_is_settled(live_server, run_and_token):
    run, token = run_and_token
    got: queue.Queue = queue.Queue()
    response = _open(_url(live_server, run), token)
    assert response.headers["Content-Type"].startswith("text/event-stream")
    threading.Thread(target=_events, args=(response, got), daemon=True).start()
    assert got.get(timeout=10)[1] == "run.queued"  # the backlog first
    events.event_record(run_id=run.id, type="agent.progress", stage="architect", payload={"message": "hi"})
    assert got.get(timeout=10)[1] == "agent.progress"  # then live, as it is committed

    _settle(run)

    seen = []
    while (item := got.get(timeout=10)) is not None:
        if item[0] != "#":
            seen.append(item[1])
    assert seen[-3:] == ["run.succeeded", "run.notified", "stage.succeeded"]
    assert seen.count("stage.succeeded") == 6
    stored = list(RunEvent.objects.filter(run=run).order_by("id").values_list("type", flat=True))
    assert ["run.queued", "agent.progress", *seen] == stored  # nothing missed, nothing twice


def test_a_reconnect_with_last_event_id_misses_nothing_and_repeats_nothing(live_server, run_and_token):
    run, token = run_and_token
    first = events.event_record(run_id=run.id, type="agent.progress", stage="architect", payload={})
    _settle(run)
    expected = list(RunEvent.objects.filter(run=run, id__gt=first.id).order_by("id").values_list("id", "type"))

    seen = [item for item in _all(_open(_url(live_server, run), token, last_event_id=first.id)) if item[0] != "#"]

    assert seen == expected
    assert seen[-1][1] == "stage.succeeded"


def test_a_finished_runs_stream_past_its_last_event_ends_at_once(live_server, run_and_token):
    run, token = run_and_token
    _settle(run)
    last = RunEvent.objects.filter(run=run).order_by("-id").first()
    started = time.monotonic()

    for after in (last.id, last.id + 1000):
        assert _all(_open(_url(live_server, run), token, last_event_id=after, timeout=5)) == []
        assert _all(_open(f"{_url(live_server, run)}?after={after}", token, timeout=5)) == []

    assert time.monotonic() - started < 5  # no keep-alives forever


@live_only
def test_a_stream_of_a_run_still_going_ends_at_its_time_limit_with_a_retry_hint(live_server, run_and_token, settings):
    settings.SSE_MAX_SECONDS = 1.0
    settings.SSE_KEEPALIVE_SECONDS = 0.3
    run, token = run_and_token
    started = time.monotonic()

    items = _all(_open(_url(live_server, run), token, timeout=10))

    assert 0.9 < time.monotonic() - started < 8
    assert items[0][1] == "run.queued"
    assert ("#", ": keepalive") in items
    hint = ": this stream reached its time limit; reconnect with Last-Event-ID"
    assert items[-2:] == [("#", "retry: 1000"), ("#", hint)]


def test_without_redis_the_stream_sends_what_is_stored_and_ends_with_a_retry_hint(live_server, run_and_token, settings):
    settings.REDIS_URL = ""
    run, token = run_and_token

    items = _all(_open(_url(live_server, run), token, timeout=10))

    assert items[0][1] == "run.queued"
    assert items[-1] == ("#", ": live streaming needs Redis; reconnect with Last-Event-ID")


def _refusal(url: str, token: str | None, **headers) -> tuple[int, str, dict]:
    request = urllib.request.Request(
        url,
        headers={"Accept": "text/event-stream", **headers, **({"Authorization": f"Token {token}"} if token else {})},
    )
    with pytest.raises(urllib.error.HTTPError) as err:
        urllib.request.urlopen(request, timeout=10)
    body = json.loads(err.value.read())
    assert set(body) == {"error"} and set(body["error"]) == {"code", "message", "extra"}, body
    return err.value.code, err.value.headers["Content-Type"], body["error"]


def test_refusals_are_json_in_the_envelope(live_server, run_and_token, other_user):
    run, token = run_and_token
    other = Token.objects.create(user=other_user).key
    url = _url(live_server, run)
    for path, key, headers, status, code in [
        (url, other, {}, 404, "run_not_found"),
        (f"{live_server.url}/api/runs/999999/events/", token, {}, 404, "run_not_found"),
        (f"{live_server.url}/api/runs/abc/events/", token, {}, 404, "not_found"),
        (f"{url}?after=abc", token, {}, 400, "bad_parameter"),
        (f"{url}?after=%C2%B2", token, {}, 400, "bad_parameter"),  # "²": isdigit(), yet not a number
        (f"{url}?after=-1", token, {}, 400, "bad_parameter"),
        (f"{url}?after={2**63}", token, {}, 400, "bad_parameter"),  # past bigint
        (url, token, {"Last-Event-ID": "1e3"}, 400, "bad_parameter"),
        (url, None, {}, 401, "not_authenticated"),
        (url, "not-a-real-token", {}, 401, "authentication_failed"),
        (url, token, {"Accept": "application/xml"}, 406, "not_acceptable"),
    ]:
        got_status, content_type, error = _refusal(path, key, **headers)
        assert (got_status, error["code"]) == (status, code), (path, headers, error)
        assert content_type == "application/json", (path, content_type)


@live_only
def test_open_streams_are_capped_per_user_and_a_closed_one_gives_its_place_back(
    live_server, run_and_token, other_user, settings
):
    settings.SSE_MAX_STREAMS_PER_USER = 2
    run, token = run_and_token
    url = _url(live_server, run)
    first, second = _open(url, token), _open(url, token)
    assert events.open_streams(user_id=run.project.owner_id) == 2

    status, _, error = _refusal(url, token)
    assert (status, error["code"], error["extra"]) == (429, "too_many_streams", {"scope": "user", "limit": 2})

    # Another person is not affected: their stream opens and the rest of the API answers.
    other = Token.objects.create(user=other_user).key
    _, theirs = services.project_create(owner=other_user, description="a web service that echoes text")
    their_stream = _open(_url(live_server, theirs), other)
    listing = urllib.request.urlopen(
        urllib.request.Request(f"{live_server.url}/api/projects/", headers={"Authorization": f"Token {other}"}),
        timeout=5,
    )
    assert listing.status == 200

    first.close()  # the client goes away mid-stream
    deadline = time.monotonic() + 10
    while events.open_streams(user_id=run.project.owner_id) != 1:
        assert time.monotonic() < deadline, "the closed stream kept its place"
        time.sleep(0.1)
    third = _open(url, token)
    for response in (second, third, their_stream):
        response.close()


@live_only
def test_the_cap_over_all_users_refuses_with_429_too(live_server, run_and_token, other_user, settings):
    settings.SSE_MAX_STREAMS = 1
    run, token = run_and_token
    mine = _open(_url(live_server, run), token)
    other = Token.objects.create(user=other_user).key
    _, theirs = services.project_create(owner=other_user, description="a web service that echoes text")

    status, _, error = _refusal(_url(live_server, theirs), other)

    assert (status, error["code"], error["extra"]["scope"]) == (429, "too_many_streams", "server")
    mine.close()


@live_only
def test_a_lease_whose_process_died_lapses_by_itself(leases, settings):
    settings.SSE_MAX_STREAMS_PER_USER = 1
    orphan = events.StreamLease(user_id=4242, lease_seconds=0.5)
    orphan.acquire()  # and never renewed nor released, as if its process had been killed
    with pytest.raises(events.StreamLimitReached):
        events.StreamLease(user_id=4242, lease_seconds=30).acquire()

    time.sleep(0.7)

    assert events.open_streams(user_id=4242) == 0
    successor = events.StreamLease(user_id=4242, lease_seconds=30)
    successor.acquire()
    successor.release()
    assert events.open_streams(user_id=4242) == 0
