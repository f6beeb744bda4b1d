"""Channel 2: orchestrator-cli inside a worker, calling the worker API with its scoped token."""

from __future__ import annotations

import json
import os
import subprocess
import urllib.request
from datetime import timedelta
from pathlib import Path

import pytest
from django.utils import timezone
from rest_framework.test import APIClient

from agents import services as agent_services
from agents.models import WorkerSession
from projects import runs, services
from projects.models import RunEvent

ROOT = Path(__file__).resolve().parent.parent.parent
CLI = str(ROOT / "bin" / "orchestrator-cli")


@pytest.fixture
def worker(transactional_db, user, live_server):
    """A run with a live worker session and its token, as the Developer stage sets them up."""
    project, run = services.project_create(owner=user, description="a web service that greets people by name")
    session = agent_services.session_create(
        project_id=project.id, run_id=run.id, role="developer", runtime="process", workspace_root="/nonexistent"
    )
    agent_services.session_set_state(session_id=session.id, state="running", reason="test")
    token = agent_services.session_issue_token(session_id=session.id, run_id=run.id)
    env = {
        **os.environ,
        "FACTORY_API_URL": live_server.url,
        "FACTORY_API_TOKEN": token,
        "FACTORY_RUN_ID": str(run.id),
        "PYTHONPATH": str(ROOT),
    }
    env.pop("DJANGO_SETTINGS_MODULE", None)
    import sys

    env["FACTORY_PYTHON"] = sys.executable
    return run, session, token, env


def cli(env: dict, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([CLI, *args], env=env, capture_output=True, text=True, timeout=30)


def test_progress_becomes_a_run_event_and_the_worker_keeps_running(worker):
    run, session, _, env = worker
    done = cli(env, "progress", "wrote handlers.py, running tests")
    assert done.returncode == 0, done.stderr
    event = RunEvent.objects.get(run=run, type="agent.progress")
    assert event.payload["message"] == "wrote handlers.py, running tests"
    assert WorkerSession.objects.get(id=session.id).state == "running"


def test_ask_records_the_question(worker):
    run, _, _, env = worker
    assert cli(env, "ask", "Which greeting language?").returncode == 0
    assert RunEvent.objects.get(run=run, type="agent.question").payload["question"] == "Which greeting language?"


def test_result_is_stored_for_the_developer_stage_to_take_once(worker):
    _, session, _, env = worker
    done = cli(env, "result", "--status", "complete", "--commit", "a" * 40, "--summary", "done")
    assert done.returncode == 0, done.stderr
    taken = agent_services.session_take_result(session_id=session.id)
    assert (taken.status, taken.commit, taken.summary) == ("complete", "a" * 40, "done")
    assert agent_services.session_take_result(session_id=session.id) is None


@pytest.mark.parametrize(
    "args,fragment",
    [
        (["result", "--status", "finished"], "status"),
        (["result", "--status", "complete", "--commit", "not-a-sha"], "commit"),
        (["progress", ""], "message"),
    ],
)
def test_malformed_commands_are_refused_before_sending_and_change_nothing(worker, args, fragment):
    run, session, _, env = worker
    done = cli(env, *args)
    assert done.returncode == 2
    assert "invalid" in done.stderr and fragment in done.stderr
    assert not RunEvent.objects.filter(run=run, type__startswith="agent.").exists()
    assert WorkerSession.objects.get(id=session.id).reported_result is None


def test_outside_a_worker_the_cli_says_so(worker):
    *_, env = worker
    env = {k: v for k, v in env.items() if k != "FACTORY_API_TOKEN"}
    done = cli(env, "progress", "hello")
    assert done.returncode == 2 and "not inside a worker" in done.stderr


def test_a_wrong_token_is_refused_and_changes_nothing(worker):
    run, _, _, env = worker
    done = cli({**env, "FACTORY_API_TOKEN": "forged"}, "progress", "hello")
    assert done.returncode == 1
    assert "authentication_failed" in done.stderr
    assert not RunEvent.objects.filter(run=run, type="agent.progress").exists()


def test_an_expired_token_is_refused(worker):
    run, session, _, env = worker
    WorkerSession.objects.filter(id=session.id).update(api_token_expires_at=timezone.now() - timedelta(seconds=1))
    done = cli(env, "progress", "hello")
    assert done.returncode == 1 and "expired" in done.stderr
    assert not RunEvent.objects.filter(run=run, type="agent.progress").exists()


def test_a_terminated_workers_token_is_refused(worker):
    _, session, _, env = worker
    agent_services.session_set_state(session_id=session.id, state="terminated", reason="test")
    assert cli(env, "progress", "hello").returncode == 1


def test_another_runs_token_is_refused(worker, other_user):
    run, _, token, env = worker
    _, other_run = services.project_create(owner=other_user, description="a web service that echoes text")
    done = cli({**env, "FACTORY_RUN_ID": str(other_run.id)}, "progress", "hello")
    assert done.returncode == 1 and "permission_denied" in done.stderr
    assert not RunEvent.objects.filter(type="agent.progress").exists()


def _post(url: str, body: bytes, token: str) -> tuple[int, dict]:
    request = urllib.request.Request(
        url, data=body, method="POST", headers={"Content-Type": "application/json", "Authorization": f"Worker {token}"}
    )
    try:
        with urllib.request.urlopen(request) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


def test_the_api_validates_what_a_worker_sends(worker, live_server):
    run, session, token, _ = worker
    url = f"{live_server.url}/api/runs/{run.id}/worker/result/"
    status, body = _post(url, b'{"status": "complete", "commit": "zzz", "extra": 1}', token)
    assert status == 400 and body["error"]["code"] == "validation_error"
    assert "commit" in body["error"]["message"] and "extra" in body["error"]["message"]
    status, body = _post(url, b'["complete"]', token)
    assert status == 400
    assert WorkerSession.objects.get(id=session.id).reported_result is None
    status, body = _post(url, b'{"status": "complete"}', "")
    assert status in (401, 403)


# --- a token lives only while its worker runs for an active run ----------------------------
def _url(live_server, run, endpoint: str) -> str:
    return f"{live_server.url}/api/runs/{run.id}/worker/{endpoint}/"


def test_a_token_is_refused_once_its_run_has_finished_and_adds_nothing(worker, live_server):
    run, session, token, env = worker
    runs.run_fail(run_id=run.id, code="test", message="The run ended.")
    before = RunEvent.objects.filter(run=run).count()

    for endpoint, body in [
        ("progress", b'{"message": "still here"}'),
        ("ask", b'{"question": "anyone?"}'),
        ("result", b'{"status": "complete", "commit": "abcdef1"}'),
    ]:
        status, error = _post(_url(live_server, run, endpoint), body, token)
        assert (status, error["error"]["code"]) == (401, "authentication_failed"), endpoint
    assert cli(env, "progress", "hello").returncode == 1

    assert RunEvent.objects.filter(run=run).count() == before
    assert WorkerSession.objects.get(id=session.id).reported_result is None


def test_a_result_is_the_tokens_last_word(worker, live_server):
    run, session, token, env = worker
    assert cli(env, "result", "--status", "complete", "--commit", "a" * 40, "--summary", "done").returncode == 0

    status, error = _post(_url(live_server, run, "progress"), b'{"message": "one more thing"}', token)
    assert (status, error["error"]["code"]) == (401, "authentication_failed")
    status, _ = _post(_url(live_server, run, "result"), b'{"status": "failed"}', token)
    assert status == 401
    assert WorkerSession.objects.get(id=session.id).reported_result["status"] == "complete"
    assert not RunEvent.objects.filter(run=run, type="agent.progress").exists()


@pytest.mark.parametrize("state", ["idle", "paused"])
def test_pausing_the_worker_revokes_its_token_and_resuming_does_not_bring_it_back(worker, state):
    run, session, _, env = worker
    agent_services.session_set_state(session_id=session.id, state=state, reason="test")
    assert cli(env, "progress", "hello").returncode == 1
    agent_services.session_set_state(session_id=session.id, state="running", reason="test")
    assert cli(env, "progress", "hello").returncode == 1
    assert WorkerSession.objects.get(id=session.id).api_token_hash == ""

    fresh = agent_services.session_issue_token(session_id=session.id, run_id=run.id)  # the next turn's
    assert cli({**env, "FACTORY_API_TOKEN": fresh}, "progress", "hello").returncode == 0
    assert RunEvent.objects.filter(run=run, type="agent.progress").count() == 1


# --- bodies the database or the parser cannot take are refused, not a crash --------------
@pytest.mark.parametrize(
    "endpoint,body",
    [
        ("progress", {"message": "a\u0000b"}),
        ("ask", {"question": "\u0000"}),
        ("result", {"status": "complete", "summary": "done\u0000"}),
        ("result", {"status": "blocked", "question": "why\u0000"}),
        ("progress", {"message": "a \ud800 b"}),
    ],
)
def test_text_the_database_cannot_store_is_a_validation_error(worker, live_server, endpoint, body):
    run, session, token, _ = worker
    raw = json.dumps(body).encode()  # \u0000 and \ud800 travel as JSON escapes

    status, error = _post(_url(live_server, run, endpoint), raw, token)

    assert (status, error["error"]["code"]) == (400, "validation_error"), error
    assert not RunEvent.objects.filter(run=run, type__startswith="agent.").exists()
    assert WorkerSession.objects.get(id=session.id).reported_result is None


def test_deeply_nested_json_is_a_parse_error(worker, live_server):
    run, _, token, _ = worker
    body = b'{"message": ' + b"[" * 100_000 + b"]" * 100_000 + b"}"

    status, error = _post(_url(live_server, run, "progress"), body, token)

    assert (status, error["error"]["code"]) == (400, "parse_error")


def test_a_body_over_the_limit_is_refused_with_413_before_it_is_read(worker, settings):
    run, _, token, _ = worker
    body = json.dumps({"message": "x" * (10 * 1024 * 1024)})
    client = APIClient(HTTP_AUTHORIZATION=f"Worker {token}")  # in process: the server never reads it

    response = client.post(f"/api/runs/{run.id}/worker/progress/", data=body, content_type="application/json")

    assert response.status_code == 413
    assert response.json()["error"]["code"] == "payload_too_large"
    assert response.json()["error"]["extra"]["limit"] == settings.DATA_UPLOAD_MAX_MEMORY_SIZE
    assert not RunEvent.objects.filter(run=run, type="agent.progress").exists()


def test_a_form_body_is_unsupported(worker, live_server):
    run, _, token, _ = worker
    request = urllib.request.Request(
        _url(live_server, run, "progress"),
        data=b"message=hi",
        method="POST",
        headers={"Content-Type": "application/x-www-form-urlencoded", "Authorization": f"Worker {token}"},
    )
    with pytest.raises(urllib.error.HTTPError) as err:
        urllib.request.urlopen(request)
    assert err.value.code == 415
    assert json.loads(err.value.read())["error"]["code"] == "unsupported_media_type"
