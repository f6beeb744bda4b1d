"""GitHub's check-run webhook (``POST /github/webhook/``) against the loopback GitHub: deliveries
signed as GitHub signs them (X-Hub-Signature-256) record the commit's CI state and wake the
waiting Deployer; unsigned or wrongly signed ones are refused and change nothing."""

from __future__ import annotations

import hashlib
import hmac
import json

import pytest

from config.celery import app as celery_app
from orchestrator import pipeline, tasks
from orchestrator.stages import Next
from projects.models import Deployment, PipelineRun, Project, StageRun
from tests.orchestrator.test_codehost_github import drive, github  # noqa: F401  (the fixture)

SECRET = "whsec-for-tests"


@pytest.fixture
def eager_celery():
    """The chain the webhook sends runs at once in this process (no worker needed to see it):
    the real stage tasks, registered by importing them."""
    assert tasks.deployer.name == "pipeline.deployer"
    before = celery_app.conf.task_always_eager
    celery_app.conf.task_always_eager = True
    yield
    celery_app.conf.task_always_eager = before


def _waiting_deployer(new_run, github, settings, live_server):  # noqa: F811
    """A run whose Deployer gave its claim back to wait for checks; GitHub delivers signed events
    to this server's webhook."""
    settings.GITHUB_WEBHOOK_SECRET = SECRET
    github.webhook = (f"{live_server.url}/github/webhook/", SECRET)
    settings.GITHUB_CHECKS_WAIT_IN_STAGE = 0  # no polling inside the task: the claim is given back at once
    github.ci_polls = 10_000  # GitHub's checks never finish by being looked at
    run = new_run()
    drive(run.id, until="tester")
    assert pipeline.execute(stage="deployer", run_id=run.id, task_id="t") is Next.WAIT
    project = Project.objects.get(id=run.project_id)
    commit = StageRun.objects.get(run=run, stage="tester").output["commit"]
    assert project.ci_status == "pending"
    return run, project, commit


def test_a_signed_check_delivery_records_ci_and_the_run_proceeds(
    new_run,
    github,  # noqa: F811
    settings,
    live_server,
    eager_celery,
):
    run, project, commit = _waiting_deployer(new_run, github, settings, live_server)
    answers = github.complete_checks(f"acme/{project.slug}", commit)
    assert [status for status, _ in answers] == [200, 200], answers
    assert answers[-1][1] == {"ok": True, "event": "check_suite", "handled": True}
    run = PipelineRun.objects.get(id=run.id)
    assert run.status == "succeeded", run.error_message
    project.refresh_from_db()
    assert project.ci_status == "success" and project.ci_updated_at is not None
    assert Deployment.objects.get(run=run, status="live").commit_sha == commit
    # A second copy of the same delivery (GitHub redelivers) changes nothing.
    again = github.complete_checks(f"acme/{project.slug}", commit)
    assert [status for status, _ in again] == [200, 200]
    assert Deployment.objects.filter(run=run).count() == 1
    assert PipelineRun.objects.get(id=run.id).status == "succeeded"


def test_a_wrongly_signed_or_unsigned_delivery_is_refused_and_changes_nothing(
    new_run,
    github,  # noqa: F811
    settings,
    live_server,
    eager_celery,
):
    run, project, commit = _waiting_deployer(new_run, github, settings, live_server)
    suite = {"action": "completed", "check_suite": {"head_sha": commit, "status": "completed", "conclusion": "success"}}
    repo = github.repos[f"acme/{project.slug}"]
    status, body = github.deliver("check_suite", suite, repo, secret="not-the-secret")
    assert status == 403 and body["error"]["code"] == "permission_denied"
    assert set(body["error"]) == {"code", "message", "extra"}
    from django.test import Client

    unsigned = Client().post(
        "/github/webhook/", data=json.dumps(suite), content_type="application/json", HTTP_X_GITHUB_EVENT="check_suite"
    )
    assert unsigned.status_code == 401 and unsigned.json()["error"]["code"] == "not_authenticated"
    project.refresh_from_db()
    assert project.ci_status == "pending"
    assert StageRun.objects.get(run=run, stage="deployer").status == "pending"
    assert PipelineRun.objects.get(id=run.id).status == "running"
    assert not Deployment.objects.filter(run=run).exists()


def _signed(client, body: bytes, event: str, secret: str = SECRET):
    mac = hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()
    return client.post(
        "/github/webhook/",
        data=body,
        content_type="application/json",
        HTTP_X_GITHUB_EVENT=event,
        HTTP_X_HUB_SIGNATURE_256=f"sha256={mac}",
    )


def test_without_a_secret_the_endpoint_does_not_exist(client, settings, db):
    settings.GITHUB_WEBHOOK_SECRET = ""
    response = _signed(client, b"{}", "ping", secret="anything")
    assert response.status_code == 404 and response.json()["error"]["code"] == "not_found"


@pytest.mark.parametrize(
    "body",
    [
        b"not json",
        json.dumps({"action": "completed", "check_run": {"head_sha": "xyz"}, "repository": {}}).encode(),
        json.dumps({"action": "completed"}).encode(),
    ],
    ids=["not-json", "bad-sha", "no-check"],
)
def test_a_signed_body_that_is_not_a_check_event_is_a_400(client, settings, db, body):
    settings.GITHUB_WEBHOOK_SECRET = SECRET
    response = _signed(client, body, "check_run")
    assert response.status_code == 400 and response.json()["error"]["code"] == "validation_error"


def test_other_events_and_pings_are_acknowledged_and_ignored(client, settings, db):
    settings.GITHUB_WEBHOOK_SECRET = SECRET
    assert _signed(client, b'{"zen": "Speak like a human."}', "ping").json() == {"ok": True, "event": "ping"}
    assert _signed(client, b'{"action": "opened"}', "issues").json()["handled"] is False
