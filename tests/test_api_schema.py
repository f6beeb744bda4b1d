"""The API keeps its published schema: Schemathesis, as a real client, over every operation.

Every phase (examples, coverage, fuzzing, stateful through the links it infers) and every check
(server errors, status codes, content types, response schemas, headers, acceptance of valid and
rejection of invalid data, auth that is ignored, unsupported methods, response time, ...), with a
fixed seed and a bounded number of examples, against a live server on the test database. It
must find no server error and no departure from the schema.

The worker API is tried with real worker tokens, one run each (a reported result ends its
token, so the rest of the result operation's cases are refused with 401, as documented).
Unknown headers and query parameters are not generated as invalid input: HTTP clients and
proxies add them freely, and the API ignores them by design.

A project's bot token is checked with Telegram (here the Bot API stand-in): a token the schema
allows may still be refused (400, the chain's codes), since only Telegram knows which exist; that
operation alone accepts a 400 for well-formed input.
"""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import redis
from django.conf import settings as django_settings
from rest_framework.authtoken.models import Token

from agents import services as agent_services
from orchestrator.telegram.standin import StandIn
from projects import services

SEED = 20261201
MAX_EXAMPLES = 10
WORKER_ENDPOINTS = ("progress", "ask", "result")

pytestmark = pytest.mark.timeout(240)


def _worker(owner, endpoint: str) -> tuple[int, str]:
    project, run = services.project_create(owner=owner, description=f"a web service for the {endpoint} test")
    session = agent_services.session_create(
        project_id=project.id, run_id=run.id, role="developer", runtime="process", workspace_root="/nonexistent"
    )
    agent_services.session_set_state(session_id=session.id, state="running", reason="schemathesis")
    return run.id, agent_services.session_issue_token(session_id=session.id, run_id=run.id)


def _config(token: str, workers: dict[str, tuple[int, str]]) -> str:
    lines = [
        f"seed = {SEED}",
        f'headers = {{ Authorization = "Token {token}" }}',
        "",
        "[generation]",
        f"max-examples = {MAX_EXAMPLES}",
        "allow-extra-parameters = false",
    ]
    for endpoint, (run_id, worker_token) in workers.items():
        lines += [
            "",
            "[[operations]]",
            f'include-path = "/api/runs/{{run_id}}/worker/{endpoint}/"',
            f'headers = {{ Authorization = "Worker {worker_token}" }}',
            f'parameters = {{ "path.run_id" = {run_id} }}',
        ]
    lines += [
        "",
        "[[operations]]",
        'include-path = "/api/projects/{id}/bot/"',
        'include-method = "PUT"',
        'checks.positive_data_acceptance.expected-statuses = ["2xx", "400", "401", "403", "404", "409", "429"]',
    ]
    return "\n".join(lines) + "\n"


def test_schemathesis_finds_no_server_error_and_no_schema_violation(
    live_server, transactional_db, django_user_model, settings, tmp_path, request
):
    settings.PROJECT_CREATE_LIMIT = 0  # the limit has its own tests; here the logic behind it is fuzzed
    settings.SSE_MAX_SECONDS = 0.05  # a stream of a run still going ends at once, with its retry hint
    settings.SSE_KEEPALIVE_SECONDS = 0.2
    standin = StandIn().start()  # the Bot API the bot endpoint checks tokens with
    request.addfinalizer(standin.stop)
    settings.TELEGRAM_API_URL = standin.api_url
    if django_settings.REDIS_URL:
        client = redis.Redis.from_url(django_settings.REDIS_URL)
        for key in client.scan_iter("sse:streams:*"):  # no leases left by other tests
            client.delete(key)
        client.close()
    person = django_user_model.objects.create_user(username="schemathesis")
    token = Token.objects.create(user=person).key
    workers = {endpoint: _worker(person, endpoint) for endpoint in WORKER_ENDPOINTS}
    config = tmp_path / "schemathesis.toml"
    config.write_text(_config(token, workers))
    report = tmp_path / "report.json"

    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "schemathesis.cli",
            "--config-file",
            str(config),
            "run",
            f"{live_server.url}/api/schema/?format=json",
            "--checks",
            "all",
            "--max-response-time",
            "15",
            "--phases",
            "examples,coverage,fuzzing,stateful",
            "--workers",
            "1",
            "--request-timeout",
            "20",
            "--no-color",
            "--report",
            "json",
            "--report-json-path",
            str(report),
        ],
        check=False,
        capture_output=True,
        text=True,
        timeout=200,
        cwd=tmp_path,
    )

    summary = done.stdout[-6000:]
    assert report.exists(), summary + done.stderr[-3000:]
    result = json.loads(report.read_text())
    print(
        f"schemathesis: {result['test_cases']['generated']} test cases over {result['operations']['tested']} "
        f"operations in {result['running_time']:.1f}s, {len(result['failures'])} failures"
    )
    assert result["failures"] == [] and result["errors"] == [], summary
    assert result["test_cases"]["with_failures"] == 0 and result["test_cases"]["errored"] == 0, summary
    assert done.returncode == 0, summary
    assert result["complete"] and result["operations"]["tested"] == result["operations"]["total"] >= 9, summary
    assert all(result["phases"][phase]["status"] == "success" for phase in ("coverage", "fuzzing", "stateful")), (
        result["phases"],
        summary,
    )
    assert result["test_cases"]["generated"] >= 300, summary  # it really tried
    # Only the result operation runs out of credentials (its first accepted result ends its token).
    assert set(result["warnings"]["missing_auth"]) <= {"POST /api/runs/{run_id}/worker/result/"}, summary
