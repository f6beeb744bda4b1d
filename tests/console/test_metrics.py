"""Prometheus metrics: scraped over HTTP with the bearer token and parsed as Prometheus parses
them; every factory_… series reports what the tables (and the broker) hold."""

from __future__ import annotations

import pytest
from django.utils import timezone
from prometheus_client.parser import text_string_to_metric_families

from agents import services as agent_services
from agents.models import Escalation, Role
from config.celery import app
from orchestrator.metrics import QUEUES
from projects import deployments, incidents, notifications, people, runs, services
from projects.models import Project, Stage

pytestmark = pytest.mark.django_db(transaction=True)
TOKEN = "metrics-token-for-tests-0123"


@pytest.fixture
def metrics_on(settings):
    settings.METRICS_TOKEN = TOKEN


def scrape(client) -> dict[str, list]:
    response = client.get("/metrics", HTTP_AUTHORIZATION=f"Bearer {TOKEN}")
    assert response.status_code == 200, response.content[:300]
    assert response["Content-Type"].startswith("text/plain; version=")
    return {family.name: family.samples for family in text_string_to_metric_families(response.content.decode())}


def value(families, name: str, sample: str | None = None, **labels) -> float:
    """The value of the sample named ``sample`` (default: the family's name) with these labels."""
    matches = [
        s.value
        for s in families[name]
        if s.name == (sample or name) and all(s.labels.get(k) == v for k, v in labels.items())
    ]
    assert len(matches) == 1, (name, sample, labels, families[name])
    return matches[0]


def test_without_a_token_configured_the_endpoint_does_not_exist(client, settings):
    settings.METRICS_TOKEN = ""
    assert client.get("/metrics", HTTP_AUTHORIZATION="Bearer anything").status_code == 404


def test_a_missing_credential_is_401_and_a_wrong_one_403(client, metrics_on):
    missing = client.get("/metrics")
    assert missing.status_code == 401 and missing["WWW-Authenticate"].startswith("Bearer")
    assert client.get("/metrics", HTTP_AUTHORIZATION="Token " + TOKEN).status_code == 401
    assert client.get("/metrics", HTTP_AUTHORIZATION="Bearer wrong-token").status_code == 403
    assert client.get("/metrics", HTTP_AUTHORIZATION=f"Bearer {TOKEN}").status_code == 200


def test_every_series_reports_what_the_tables_hold(client, metrics_on, user):
    empty = scrape(client)
    assert value(empty, "factory_runs", status="running", kind="create") == 0
    assert value(empty, "factory_escalations_waiting") == 0

    # A run through four stages, an agent turn that cost money, a worker, a live release, an
    # outage of it, a question to the person and a message owed to them.
    people.account_link(user=user, telegram_user_id=4242, chat_id=4242, username="ada")
    project, run = services.project_create(owner=user, description="a web service that greets people by name")
    for stage in (Stage.ARCHITECT, Stage.PREPARER, Stage.DEVELOPER, Stage.TESTER):
        claim = runs.stage_claim(run_id=run.id, stage=stage, task_id=f"task-{stage}")
        runs.stage_succeed(stage_run_id=claim.stage_run.id, attempt=claim.stage_run.attempt, output={})
    session = agent_services.session_create(
        project_id=project.id, run_id=run.id, role=Role.DEVELOPER, runtime="process", workspace_root="ws"
    )
    agent_services.session_set_state(session_id=session.id, state="paused", reason="test")
    for cost in ("0.25", "0.17"):
        agent_services.usage_record(
            project_id=project.id,
            stage_run_id=None,
            session_id=session.id,
            role=Role.DEVELOPER,
            backend="scripted",
            cost_usd=cost,
        )
    project = Project.objects.get(id=project.id)
    release = deployments.deployment_allocate(project_id=project.id, run_id=run.id, commit_sha="c" * 40)
    deployments.deployment_go_live(deployment_id=release.id, url="http://127.0.0.1:20001/")
    incidents.incident_open(deployment_id=release.id, reason="health check refused")
    Escalation.objects.create(
        run=run, stage="deployer", reason="stage_error", question="Go on?", deadline=timezone.now()
    )
    pending = notifications.reply_queue(chat_id=4242, text="hello")

    families = scrape(client)

    assert value(families, "factory_runs", status="running", kind="create") == 1
    assert value(families, "factory_runs", status="succeeded", kind="create") == 0
    # Four finished stages, one observation each; buckets are cumulative and end at +Inf.
    for stage in ("architect", "preparer", "developer", "tester"):
        count = value(families, "factory_stage_duration_seconds", "factory_stage_duration_seconds_count", stage=stage)
        assert count == 1
        assert (
            value(
                families,
                "factory_stage_duration_seconds",
                "factory_stage_duration_seconds_bucket",
                stage=stage,
                le="+Inf",
            )
            == 1
        )
        assert (
            value(
                families,
                "factory_stage_duration_seconds",
                "factory_stage_duration_seconds_bucket",
                stage=stage,
                le="60.0",
            )
            == 1
        )
    assert "deployer" not in {s.labels.get("stage") for s in families["factory_stage_duration_seconds"]}
    assert value(families, "factory_workers", state="paused", role="developer") == 1
    assert value(families, "factory_workers", state="running", role="developer") == 0
    assert value(families, "factory_releases", status="live") == 1
    assert value(families, "factory_incidents_open") == 1
    assert value(families, "factory_escalations_waiting") == 1
    assert value(families, "factory_outbound_messages_pending") >= 1
    assert pending.status == "pending"
    # A counter: exposed as ..._total, per project by slug (or id before the Architect named it).
    name = project.slug or f"project-{project.id}"
    assert value(families, "factory_cost_dollars", "factory_cost_dollars_total", project=name) == pytest.approx(0.42)


def test_queue_lengths_count_every_priority_of_each_queue(client, metrics_on):
    app.control.purge()
    try:
        before = scrape(client)
        assert value(before, "factory_broker_up") == 1
        assert {s.labels["queue"] for s in before["factory_queue_length"]} == set(QUEUES)
        # Two messages nobody consumes (no worker runs here), at two priorities of one queue.
        with app.producer_or_acquire() as producer:
            for priority in (0, 7):
                app.send_task("metrics.test.nothing", queue="notify", priority=priority, producer=producer)
        after = scrape(client)
        assert (
            value(after, "factory_queue_length", queue="notify")
            == value(before, "factory_queue_length", queue="notify") + 2
        )
        assert value(after, "factory_queue_length", queue="pipeline") == value(
            before, "factory_queue_length", queue="pipeline"
        )
    finally:
        app.control.purge()


def test_an_unreachable_broker_is_reported_and_the_rest_still_answers(client, metrics_on, settings):
    settings.CELERY_BROKER_URL = "redis://127.0.0.1:1/0"  # nothing listens on port 1
    families = scrape(client)
    assert value(families, "factory_broker_up") == 0
    assert "factory_queue_length" not in families
    assert value(families, "factory_escalations_waiting") == 0
