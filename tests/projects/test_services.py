"""Run and stage bookkeeping against the real database: claims, fencing, the reconciler, ports."""

from __future__ import annotations

from datetime import timedelta

import pytest
from django.db import IntegrityError
from django.utils import timezone

from config.errors import Conflict, ValidationFailed
from projects import deployments, runs, services
from projects.models import Deployment, PipelineRun, Project, RunEvent, StageRun
from projects.runs import ClaimState


@pytest.fixture
def run(db, user):
    _, run = services.project_create(owner=user, description="a web service that greets people by name")
    return run


def _claim(run, stage, task="t1"):
    claim = runs.stage_claim(run_id=run.id, stage=stage, task_id=task)
    assert claim.state is ClaimState.CLAIMED
    return claim.stage_run


def _age(row, **fields):
    StageRun.objects.filter(id=row.id).update(**fields)


def test_project_create_makes_a_queued_run_with_six_pending_stages(run):
    assert run.status == "queued"
    assert list(run.stages.values_list("stage", "status")) == [
        (s, "pending") for s in ["architect", "preparer", "developer", "tester", "deployer", "notify"]
    ]
    assert list(run.events.values_list("type", flat=True)) == ["run.queued"]


@pytest.mark.parametrize(
    "description,code",
    [
        ("", "description_required"),
        ("   ", "description_required"),
        (None, "description_required"),
        ("x" * 50_000, "description_too_long"),
    ],
)
def test_bad_descriptions_are_refused_and_nothing_is_written(db, user, description, code):
    with pytest.raises(ValidationFailed) as err:
        services.project_create(owner=user, description=description)
    assert err.value.code == code
    assert Project.objects.count() == 0 and PipelineRun.objects.count() == 0


def test_a_second_active_run_of_a_project_is_refused(run):
    with pytest.raises(Conflict) as err:
        runs.run_create(project=run.project, kind="redeploy")
    assert err.value.code == "run_in_progress"
    assert PipelineRun.objects.filter(project=run.project).count() == 1


def test_a_claim_is_taken_once(run):
    _claim(run, "architect")
    second = runs.stage_claim(run_id=run.id, stage="architect", task_id="t2")
    assert second.state is ClaimState.BUSY
    assert StageRun.objects.get(run=run, stage="architect").attempt == 1
    run.refresh_from_db()
    assert (run.status, run.current_stage) == ("running", "architect")


def test_a_late_writer_that_lost_its_claim_cannot_overwrite(run):
    row = _claim(run, "architect")
    _age(row, heartbeat_at=timezone.now() - timedelta(hours=1))
    assert [r.stage for r in runs.runs_requeue_stuck()] == ["architect"]
    newer = _claim(run, "architect", task="t2")
    assert newer.attempt == 2
    # The first task wakes up and reports: it is fenced off by its old attempt number.
    assert runs.stage_succeed(stage_run_id=row.id, attempt=1, output={"from": "old"}) is False
    assert runs.stage_heartbeat(stage_run_id=row.id, attempt=1) is False
    assert runs.stage_succeed(stage_run_id=row.id, attempt=2, output={"from": "new"}) is True
    assert StageRun.objects.get(id=row.id).output == {"from": "new"}


def test_reconciler_requeues_a_silent_running_stage_once(run):
    row = _claim(run, "architect")
    _age(row, heartbeat_at=timezone.now() - timedelta(hours=1))
    first = runs.runs_requeue_stuck()
    again = runs.runs_requeue_stuck()
    assert [(r.run_id, r.stage, r.reason) for r in first] == [(run.id, "architect", "worker_lost")]
    assert again == []
    assert StageRun.objects.get(id=row.id).status == "pending"
    assert run.events.filter(type=RunEvent.Type.STAGE_REQUEUED).count() == 1


def test_reconciler_leaves_a_stage_with_a_live_heartbeat_alone(run):
    _claim(run, "architect")
    assert runs.runs_requeue_stuck() == []


def test_reconciler_requeues_a_lost_message_of_the_current_stage_only(run):
    StageRun.objects.filter(run=run).update(queued_at=timezone.now() - timedelta(hours=1))
    found = runs.runs_requeue_stuck()
    assert [(r.stage, r.reason) for r in found] == [("architect", "message_lost")]


def test_a_failed_run_skips_its_remaining_stages_but_still_notifies(run):
    row = _claim(run, "architect")
    runs.stage_fail(stage_run_id=row.id, attempt=row.attempt, code="x", message="no")
    run.refresh_from_db()
    assert (run.status, run.error_code) == ("failed", "x")
    assert runs.stage_claim(run_id=run.id, stage="preparer", task_id="t").state is ClaimState.DONE
    assert StageRun.objects.get(run=run, stage="preparer").status == "skipped"
    assert runs.stage_claim(run_id=run.id, stage="notify", task_id="t").state is ClaimState.CLAIMED
    # Had Notify's message been lost, the reconciler would find it.
    StageRun.objects.filter(run=run, stage="notify").update(
        status="pending", queued_at=timezone.now() - timedelta(hours=1)
    )
    assert [r.stage for r in runs.runs_requeue_stuck()] == ["notify"]


def test_loop_back_opens_the_next_iteration_atomically(run):
    for stage in ("architect", "preparer", "developer"):
        row = _claim(run, stage)
        runs.stage_succeed(stage_run_id=row.id, attempt=row.attempt, output={})
    tester = _claim(run, "tester")
    assert runs.stage_loop_back(stage_run_id=tester.id, attempt=tester.attempt, output={}, message="1 failed")
    run.refresh_from_db()
    assert run.iteration == 2
    assert StageRun.objects.get(run=run, stage="developer", iteration=2).status == "pending"
    # The deployer cannot start: this iteration's developer and tester have not run.
    assert runs.stage_claim(run_id=run.id, stage="deployer", task_id="t").state is ClaimState.BUSY


def test_ports_are_unique_among_releases_that_hold_one(db, user, settings):
    settings.DEPLOY_PORT_MIN, settings.DEPLOY_PORT_MAX = 21000, 21001
    runs = []
    for i in range(3):
        project, r = services.project_create(owner=user, description=f"a web service that greets people {i}")
        runs.append((project, r))
    a = deployments.deployment_allocate(project_id=runs[0][0].id, run_id=runs[0][1].id, commit_sha="a" * 40)
    b = deployments.deployment_allocate(project_id=runs[1][0].id, run_id=runs[1][1].id, commit_sha="b" * 40)
    assert {a.port, b.port} == {21000, 21001}
    assert (
        deployments.deployment_allocate(project_id=runs[0][0].id, run_id=runs[0][1].id, commit_sha="a" * 40).id == a.id
    )
    with pytest.raises(Conflict) as err:
        deployments.deployment_allocate(project_id=runs[2][0].id, run_id=runs[2][1].id, commit_sha="c" * 40)
    assert err.value.code == "no_free_port"
    deployments.deployment_stopped(deployment_id=a.id)  # a stopped release gives its port back
    c = deployments.deployment_allocate(project_id=runs[2][0].id, run_id=runs[2][1].id, commit_sha="c" * 40)
    assert c.port == a.port


def test_the_database_refuses_two_releases_on_one_port(db, user):
    p1, r1 = services.project_create(owner=user, description="a web service that greets people")
    p2, r2 = services.project_create(owner=user, description="a web service that echoes text")
    Deployment.objects.create(project=p1, run=r1, port=22000, commit_sha="a" * 40)
    with pytest.raises(IntegrityError):
        Deployment.objects.create(project=p2, run=r2, port=22000, commit_sha="b" * 40)
