"""The engine's cost per stage: a claim and its record take a fixed, small number of queries.

The bound counts the engine's own statements (the claim's read and compare-and-set, the run's
update, the record's fenced write, the next stage's due time, the events). On PostgreSQL a claim
is one statement and its record another (projects/runs.py); elsewhere the ORM path takes seven.
The test runs in a transaction, so atomic blocks become savepoints (counted apart, below), and
the events' on-commit work (Redis publish, the person's notification) is not run here:
bench/engine.py measures all of it together.
"""

from __future__ import annotations

import json

import pytest
import redis
from django.conf import settings
from django.db import connection

from config import task_names
from orchestrator import pipeline
from projects import runs, services
from projects.models import PipelineRun, Project, RunEvent, Stage, StageRun

# Queries of claim + succeed of one stage, and of the first one (it also starts the run: one more
# event, which happens once per run and is recorded under a savepoint of its own; and the
# fairness check: the person's row locked and their running runs counted).
ON_POSTGRESQL = connection.vendor == "postgresql"
STAGE_QUERIES = 2 if ON_POSTGRESQL else 7
# The first stage takes the ORM path everywhere (its run is queued): the claim's read, the
# fairness check, the compare-and-set, the run's start and the events; then its record.
FIRST_STAGE_QUERIES = 4 + 3 + 2 + (1 if ON_POSTGRESQL else 3)
SAVEPOINTS = 4  # at most: the two atomic blocks (claim, succeed) inside the test's transaction


def claim_and_succeed(run_id: int, stage: str) -> StageRun:
    claim = runs.stage_claim(run_id=run_id, stage=stage, task_id=f"t-{stage}")
    assert claim.state is runs.ClaimState.CLAIMED
    row = claim.stage_run
    assert runs.stage_succeed(stage_run_id=row.id, attempt=row.attempt, output={"ok": stage}, claimed=row)
    return row


def engine_statements(captured) -> list[str]:
    return [q["sql"] for q in captured if "SAVEPOINT" not in q["sql"]]


def test_a_stage_claim_and_record_take_at_most_two_statements_on_postgresql(db, user, django_assert_max_num_queries):
    _, run = services.project_create(owner=user, description="a web service that greets people by name")
    with django_assert_max_num_queries(FIRST_STAGE_QUERIES + SAVEPOINTS):
        claim_and_succeed(run.id, Stage.ARCHITECT)
    for stage in (Stage.PREPARER, Stage.DEVELOPER, Stage.TESTER):
        with django_assert_max_num_queries(STAGE_QUERIES + SAVEPOINTS) as captured:
            claim_and_succeed(run.id, stage)
        assert len(engine_statements(captured.captured_queries)) <= STAGE_QUERIES

    # What those few queries did: the rows, the run and the events are all there.
    rows = {r.stage: r for r in StageRun.objects.filter(run=run)}
    for stage in (Stage.ARCHITECT, Stage.PREPARER, Stage.DEVELOPER, Stage.TESTER):
        assert rows[stage].status == StageRun.Status.SUCCEEDED and rows[stage].attempt == 1
        assert rows[stage].output == {"ok": stage} and rows[stage].finished_at is not None
    assert rows[Stage.DEPLOYER].status == StageRun.Status.PENDING and rows[Stage.DEPLOYER].queued_at is not None
    assert rows[Stage.NOTIFY].queued_at is None
    run.refresh_from_db()
    assert (run.status, run.current_stage) == (PipelineRun.Status.RUNNING, Stage.TESTER)
    types = list(RunEvent.objects.filter(run=run).values_list("type", "stage"))
    assert types == [
        ("run.queued", ""),
        ("run.started", ""),
        ("stage.started", "architect"),
        ("stage.succeeded", "architect"),
        ("stage.started", "preparer"),
        ("stage.succeeded", "preparer"),
        ("stage.started", "developer"),
        ("stage.succeeded", "developer"),
        ("stage.started", "tester"),
        ("stage.succeeded", "tester"),
    ]


def test_the_claim_returns_the_rows_as_written(db, user):
    """The claim does not read its writes back: what it returns must be what the database holds."""
    _, run = services.project_create(owner=user, description="a web service that greets people by name")
    claim = runs.stage_claim(run_id=run.id, stage=Stage.ARCHITECT, task_id="t-1")
    fresh = StageRun.objects.get(id=claim.stage_run.id)
    for field in ("status", "attempt", "task_id", "started_at", "heartbeat_at", "finished_at", "error"):
        assert getattr(claim.stage_run, field) == getattr(fresh, field), field
    fresh_run = PipelineRun.objects.get(id=run.id)
    for field in ("status", "current_stage", "started_at", "iteration"):
        assert getattr(claim.run, field) == getattr(fresh_run, field), field
    assert claim.run.project.description == "a web service that greets people by name"


def test_a_claim_of_a_cancelled_run_sees_it_cancelled(db, user):
    _, run = services.project_create(owner=user, description="a web service that greets people by name")
    runs.run_cancel(run_id=run.id, user=user)
    claim = runs.stage_claim(run_id=run.id, stage=Stage.NOTIFY, task_id="t-notify")
    assert claim.state is runs.ClaimState.CLAIMED
    assert claim.run.status == PipelineRun.Status.CANCELLED
    assert claim.run.current_stage == ""  # a run that ended does not move to a stage


def test_a_claim_for_a_run_that_does_not_exist_says_so(transactional_db):
    assert runs.stage_claim(run_id=987654321, stage=Stage.ARCHITECT, task_id="t").state is runs.ClaimState.GONE
    assert pipeline.execute(stage=Stage.ARCHITECT, run_id=987654321, task_id="t") is None


def test_succeed_refuses_a_row_of_another_claim(db, user):
    _, run = services.project_create(owner=user, description="a web service that greets people by name")
    row = runs.stage_claim(run_id=run.id, stage=Stage.ARCHITECT, task_id="t-1").stage_run
    with pytest.raises(ValueError):
        runs.stage_succeed(stage_run_id=row.id, attempt=row.attempt + 1, output={}, claimed=row)


@pytest.mark.skipif(not settings.REDIS_URL, reason="the priority of a message is the Redis transport's")
def test_a_new_runs_start_waits_behind_every_stage_of_runs_under_way(transactional_db, user):
    """On Redis, priority N lives in the list ``pipeline:N``: a new run's first message (its
    Architect task, sent alone) is below every stage of the runs under way."""
    client = redis.Redis.from_url(settings.CELERY_BROKER_URL)
    key = f"pipeline:{task_names.PIPELINE_START_PRIORITY_NEW}"
    before = client.llen(key)
    project, _ = services.project_create(owner=user, description="a web service that greets people by name")
    try:
        assert client.llen(key) == before + 1
        message = json.loads(client.lindex(key, 0))
        assert message["headers"]["task"] == task_names.PIPELINE_ARCHITECT
        assert all(entry.priority < task_names.PIPELINE_START_PRIORITY_NEW for entry in pipeline.STAGES.values())
    finally:
        client.delete(key)
        from orchestrator.maintenance import project_teardown

        project_teardown(project_id=project.id)


def test_a_later_claim_returns_the_rows_as_written(db, user):
    """The same for a claim of a running run (one statement on PostgreSQL): the rows it builds
    from what the statement returned are what the database holds, JSON included."""
    project, run = services.project_create(owner=user, description="a web service that greets people by name")
    Project.objects.filter(id=project.id).update(spec={"name": "Greeter", "features": [{"name": "hello"}]})
    claim_and_succeed(run.id, Stage.ARCHITECT)
    claim = runs.stage_claim(run_id=run.id, stage=Stage.PREPARER, task_id="t-2")
    assert claim.state is runs.ClaimState.CLAIMED
    fresh = StageRun.objects.get(id=claim.stage_run.id)
    for field in ("status", "attempt", "task_id", "started_at", "heartbeat_at", "finished_at", "error", "output"):
        assert getattr(claim.stage_run, field) == getattr(fresh, field), field
    fresh_run = PipelineRun.objects.get(id=run.id)
    for field in ("status", "current_stage", "started_at", "iteration", "cost_usd", "budget_usd"):
        assert getattr(claim.run, field) == getattr(fresh_run, field), field
    assert claim.run.project.spec == {"name": "Greeter", "features": [{"name": "hello"}]}
    event = RunEvent.objects.filter(run=run, type=RunEvent.Type.STAGE_STARTED, stage=Stage.PREPARER).get()
    assert event.payload == {"iteration": 1, "attempt": 1}


def test_a_lost_claim_records_nothing(db, user):
    """The record is fenced by the claim's attempt: after the stage was given back and claimed
    again, the first claim's success changes no row and adds no event."""
    _, run = services.project_create(owner=user, description="a web service that greets people by name")
    claim_and_succeed(run.id, Stage.ARCHITECT)
    first = runs.stage_claim(run_id=run.id, stage=Stage.PREPARER, task_id="t-first").stage_run
    StageRun.objects.filter(id=first.id).update(status=StageRun.Status.PENDING)  # as the reconciler does
    second = runs.stage_claim(run_id=run.id, stage=Stage.PREPARER, task_id="t-second")
    assert second.state is runs.ClaimState.CLAIMED and second.stage_run.attempt == first.attempt + 1
    assert runs.stage_claim(run_id=run.id, stage=Stage.PREPARER, task_id="t-third").state is runs.ClaimState.BUSY

    assert not runs.stage_succeed(stage_run_id=first.id, attempt=first.attempt, output={"late": True}, claimed=first)
    row = StageRun.objects.get(id=first.id)
    assert (row.status, row.task_id, row.output) == (StageRun.Status.RUNNING, "t-second", None)
    assert not RunEvent.objects.filter(run=run, type=RunEvent.Type.STAGE_SUCCEEDED, stage=Stage.PREPARER).exists()
    assert StageRun.objects.get(run=run, stage=Stage.DEVELOPER).queued_at is None

    assert runs.stage_succeed(
        stage_run_id=second.stage_run.id, attempt=second.stage_run.attempt, output={"ok": 1}, claimed=second.stage_run
    )
    assert StageRun.objects.get(run=run, stage=Stage.DEVELOPER).queued_at is not None
