"""The engine's defects found under load and by trying it, each pinned by its behaviour.

Stages are driven in this process against the real database, git, worker processes and a
loopback chat-completions server (the only stand-in: an LLM on the internet).
"""

from __future__ import annotations

import json
import threading
from datetime import timedelta
from decimal import Decimal

import pytest
from celery.signals import before_task_publish
from django.db import connection
from django.test.utils import CaptureQueriesContext
from django.utils import timezone

from agents import services as agent_services
from agents.models import Escalation, Usage, WorkerSession
from config.errors import RateLimited, ValidationFailed
from orchestrator import maintenance, pipeline, workers
from orchestrator.stages import Next
from projects import runs, services
from projects.models import Deployment, PipelineRun, Project, RunEvent, StageRun
from projects.runs import ClaimState
from projects.specs import ProjectSpec
from tests.fakes.llm_server import completion, error
from tests.orchestrator.test_stages_idempotent import drive

SPEC = {
    "name": "Greeter",
    "slug": "greeter",
    "kind": "web_service",
    "summary": "Says hello.",
    "features": [{"name": "greet", "summary": "GET /greet?name=Ada"}],
    "acceptance": [{"name": "greet", "path": "/greet?name=Ada", "expect_contains": "Ada"}],
}


# --- workers of finished runs and fairness ----------------------------------------------
def test_paused_workers_of_finished_runs_do_not_block_a_new_run(new_run, settings):
    settings.MAX_WORKERS = 2
    first = new_run()
    drive(first.id)
    first.refresh_from_db()
    assert first.status == "succeeded"
    # Its developer and tester workers stay paused (cheap reuse) and fill the quota.
    assert WorkerSession.objects.filter(state="paused").count() == 2

    second = new_run("a web service that echoes text")
    drive(second.id)
    second.refresh_from_db()
    assert second.status == "succeeded", second.error_message
    reclaimed = WorkerSession.objects.filter(project=first.project_id, state="terminated")
    assert reclaimed.count() == 2
    assert all("reclaimed" in s.state_reason for s in reclaimed)


def test_a_full_quota_of_working_runs_still_makes_a_stage_wait(new_run, settings):
    settings.MAX_WORKERS = 1
    busy = new_run()
    drive(busy.id, until="preparer")
    workers.session_acquire(project_id=busy.project_id, run_id=busy.id, role="developer")  # its run is active
    waiting = new_run("a web service that echoes text")
    drive(waiting.id, until="preparer")
    assert pipeline.execute(stage="developer", run_id=waiting.id, task_id="t") is Next.WAIT
    row = StageRun.objects.get(run=waiting, stage="developer")
    assert (row.status, row.transient_failures) == ("pending", 0)


def test_a_person_runs_at_most_their_cap_and_the_next_starts_when_one_ends(transactional_db, user, settings):
    settings.RUNS_PER_PERSON = 1
    _, first = services.project_create(owner=user, description="a web service that greets people by name")
    _, second = services.project_create(owner=user, description="a web service that echoes text")
    assert runs.stage_claim(run_id=first.id, stage="architect", task_id="a").state is ClaimState.CLAIMED
    assert runs.stage_claim(run_id=second.id, stage="architect", task_id="b").state is ClaimState.WAIT
    # Its chain stops (no retry: one chain per run); it is started when a place frees.
    assert pipeline.execute(stage="architect", run_id=second.id, task_id="b") is None
    assert PipelineRun.objects.get(id=second.id).status == "queued"

    published = []

    def record(sender=None, body=None, **_):
        published.append((sender, body[1] if isinstance(body, tuple) else body))

    before_task_publish.connect(record)
    try:
        runs.run_fail(run_id=first.id, code="x", message="gave up")
    finally:
        before_task_publish.disconnect(record)
    assert ("pipeline.start", {"run_id": second.id}) in published, "ending a run starts the next queued one"
    assert runs.stage_claim(run_id=second.id, stage="architect", task_id="c").state is ClaimState.CLAIMED


def _publishes(action) -> list[tuple[str, dict]]:
    published = []

    def record(sender=None, body=None, **_):
        published.append((sender, body[1] if isinstance(body, tuple) else body))

    before_task_publish.connect(record)
    try:
        action()
    finally:
        before_task_publish.disconnect(record)
    return published


def test_two_runs_ending_together_fill_both_places(transactional_db, user, settings):
    settings.RUNS_PER_PERSON = 2
    made = [services.project_create(owner=user, description="a web service that echoes text")[1] for _ in range(5)]
    for run in made[:2]:
        assert runs.stage_claim(run_id=run.id, stage="architect", task_id="a").state is ClaimState.CLAIMED
    for run in made[2:]:
        assert runs.stage_claim(run_id=run.id, stage="architect", task_id="b").state is ClaimState.WAIT

    def both_end():
        from django.db import transaction

        with transaction.atomic():  # both commit in one go: neither count saw the other end
            runs.run_fail(run_id=made[0].id, code="x", message="gave up")
            runs.run_fail(run_id=made[1].id, code="x", message="gave up")

    started = {body["run_id"] for name, body in _publishes(both_end) if name == "pipeline.start"}
    assert started == {made[2].id, made[3].id}, "both free places are taken, by the oldest queued runs"


def test_a_parked_run_is_not_requeued_and_starts_once_its_person_has_room(transactional_db, user, settings):
    settings.RUNS_PER_PERSON = 1
    settings.STAGE_PICKUP_SECONDS = 0
    _, first = services.project_create(owner=user, description="a web service that greets people by name")
    _, second = services.project_create(owner=user, description="a web service that echoes text")
    assert runs.stage_claim(run_id=first.id, stage="architect", task_id="a").state is ClaimState.CLAIMED
    assert pipeline.execute(stage="architect", run_id=second.id, task_id="b") is None
    for _ in range(3):  # neither requeued nor started sweep after sweep while it cannot start
        assert runs.runs_requeue_stuck() == [] and runs.runs_start_parked() == []
    # The first ended without its callback (the start it sent was lost): the reconciler starts
    # the parked run, once.
    PipelineRun.objects.filter(id=first.id).update(status="failed", finished_at=timezone.now())
    assert runs.runs_start_parked() == [second.id]
    assert runs.runs_start_parked() == [], "its start is on its way: not sent twice"
    assert runs.stage_claim(run_id=second.id, stage="architect", task_id="c").state is ClaimState.CLAIMED


def test_a_duplicate_message_of_a_done_stage_does_not_start_a_second_chain(new_run):
    run = new_run()
    drive(run.id, until="preparer")
    # The preparer's message delivered again while the developer is already under way.
    claim = runs.stage_claim(run_id=run.id, stage="developer", task_id="d")
    assert claim.state is ClaimState.CLAIMED
    assert pipeline.execute(stage="preparer", run_id=run.id, task_id="again") is None
    # Redelivered before the next stage was taken up (its message may be lost): it goes on.
    runs.stage_release(stage_run_id=claim.stage_run.id, attempt=claim.stage_run.attempt, reason="test")
    assert pipeline.execute(stage="preparer", run_id=run.id, task_id="again") is Next.CONTINUE


def test_another_persons_first_run_goes_before_a_busy_persons_queue(transactional_db, user, other_user, settings):
    settings.CELERY_TASK_ALWAYS_EAGER = False
    heavy = [services.project_create(owner=user, description="a web service that echoes text")[1] for _ in range(3)]
    _, light = services.project_create(owner=other_user, description="a web service that echoes text")

    def first_priority(run):
        return pipeline.chain_from(run.id, delay=runs.queued_ahead(run=run)).tasks[0].options["priority"]

    assert first_priority(light) == first_priority(heavy[0]) == pipeline.STAGES["architect"].priority
    assert first_priority(heavy[2]) > first_priority(light)
    # Later stages always go before new runs.
    assert (
        pipeline.STAGES["notify"].priority
        < pipeline.STAGES["deployer"].priority
        < pipeline.STAGES["architect"].priority
    )


# --- the retry counter ------------------------------------------------------------------
def test_quota_waits_do_not_use_up_the_transient_retries(new_run, settings, llm):
    settings.STAGE_MAX_ATTEMPTS = 3
    agent_services.agent_config_set(role="architect", backend="openai_compatible")
    run = new_run()
    row = StageRun.objects.get(run=run, stage="architect")
    for _ in range(5):  # five quota waits (or reconciler requeues) raise the claim number only
        claim = runs.stage_claim(run_id=run.id, stage="architect", task_id="w")
        runs.stage_release(stage_run_id=claim.stage_run.id, attempt=claim.stage_run.attempt, reason="quota")
    llm.add(error(429, "slow down"))
    assert pipeline.execute(stage="architect", run_id=run.id, task_id="t") is Next.WAIT
    row.refresh_from_db()
    assert (row.status, row.attempt, row.transient_failures) == ("pending", 6, 1)

    llm.add(error(503, "busy"))
    assert pipeline.execute(stage="architect", run_id=run.id, task_id="t") is Next.WAIT
    llm.add(error(503, "still busy"))
    assert pipeline.execute(stage="architect", run_id=run.id, task_id="t") is Next.CONTINUE
    row.refresh_from_db()
    assert row.status == "failed" and "gave up after 3 attempts" in row.error


# --- the Architect's cost ---------------------------------------------------------------
def test_the_architects_tokens_and_dollars_are_recorded_and_counted(new_run, llm):
    agent_services.agent_config_set(
        role="architect", backend="openai_compatible", options={"input_per_mtok": 1000, "output_per_mtok": 2000}
    )
    llm.add(completion(content=json.dumps(SPEC), prompt_tokens=900, completion_tokens=120))
    run = new_run()
    assert pipeline.execute(stage="architect", run_id=run.id, task_id="t") is Next.CONTINUE
    usage = Usage.objects.get(stage_run__run=run, role="architect")
    assert (usage.input_tokens, usage.output_tokens) == (900, 120)
    assert usage.cost_usd == Decimal("1.140000") and usage.stage_attempt == 1 and not usage.rerun
    run.refresh_from_db()
    assert run.cost_usd == Decimal("1.140000")


def test_a_rerun_of_a_stage_keeps_both_turns_and_marks_the_second(new_run):
    run = new_run()
    row = StageRun.objects.get(run=run, stage="architect")
    first = agent_services.usage_record(
        project_id=run.project_id,
        stage_run_id=row.id,
        stage_attempt=1,
        session_id=None,
        role="architect",
        backend="scripted",
        cost_usd="0.5",
    )
    again = agent_services.usage_record(
        project_id=run.project_id,
        stage_run_id=row.id,
        stage_attempt=1,
        session_id=None,
        role="architect",
        backend="scripted",
        cost_usd="0.5",
    )
    rerun = agent_services.usage_record(
        project_id=run.project_id,
        stage_run_id=row.id,
        stage_attempt=2,
        session_id=None,
        role="architect",
        backend="scripted",
        cost_usd="0.5",
    )
    assert (first.rerun, again.rerun, rerun.rerun) == (False, False, True)
    run.refresh_from_db()
    assert run.cost_usd == Decimal("1.5")


# --- an unhealthy release ---------------------------------------------------------------
def test_an_unhealthy_release_goes_back_to_the_developer_and_the_next_one_goes_live(new_run):
    agent_services.agent_config_set(role="developer", options={"broken_release_times": 1})
    run = new_run()
    drive(run.id)
    run.refresh_from_db()
    assert run.status == "succeeded", run.error_message
    assert run.iteration == 2
    releases = list(Deployment.objects.filter(run=run).order_by("id").values_list("status", flat=True))
    assert releases == ["failed", "live"]
    loop = run.events.get(type="tests.failed", stage="deployer")
    assert loop.payload["next_iteration"] == 2
    developer = StageRun.objects.get(run=run, stage="developer", iteration=2)
    assert developer.status == "succeeded"


def test_an_unhealthy_release_at_the_cap_asks_and_the_answer_deploys_anew(new_run, user):
    agent_services.agent_config_set(role="developer", options={"broken_release_times": 5})
    run = new_run()
    PipelineRun.objects.filter(id=run.id).update(max_iterations=1)
    drive(run.id)
    run.refresh_from_db()
    assert run.status == "waiting_human"
    escalation = Escalation.objects.get(run=run)
    assert escalation.context["code"] == "deploy_unhealthy"
    assert Deployment.objects.get(run=run).status == "failed"
    agent_services.escalation_answer(escalation_id=escalation.id, user=user, action="guidance", answer="try again")
    drive(run.id)
    # The resumed Deployer starts a new Deployment (the failed one is history) rather than
    # stopping at "start a new run"; this commit is still broken, so the person is asked again.
    assert list(Deployment.objects.filter(run=run).values_list("status", flat=True)) == ["failed", "failed"]
    run.refresh_from_db()
    assert run.status == "waiting_human"
    assert Escalation.objects.filter(run=run, status="open").count() == 1


# --- time limits ------------------------------------------------------------------------
def test_a_time_limit_that_does_not_fit_in_a_stage_is_refused(db, settings):
    settings.STAGE_SOFT_TIME_LIMIT = 900
    with pytest.raises(ValidationFailed, match="STAGE_SOFT_TIME_LIMIT is 900s") as caught:
        agent_services.agent_config_set(role="developer", time_limit_seconds=900)
    assert caught.value.code == "agent_config_invalid"
    assert agent_services.agent_config_set(role="developer", time_limit_seconds=420).time_limit_seconds == 420
    assert agent_services.agent_config_set(role="tester", time_limit_seconds=840).time_limit_seconds == 840


def test_a_stage_timeout_asks_a_person(new_run, settings):
    from celery.exceptions import SoftTimeLimitExceeded

    from orchestrator.stages import developer

    run = new_run()
    drive(run.id, until="preparer")
    original = developer.run

    def over_time(ctx):  # the stage is interrupted the way Celery interrupts it
        raise SoftTimeLimitExceeded()

    developer.run = over_time
    try:
        pipeline.execute(stage="developer", run_id=run.id, task_id="t")
    finally:
        developer.run = original
    run.refresh_from_db()
    assert run.status == "waiting_human"
    assert Escalation.objects.get(run=run).context["code"] == "stage_timeout"


# --- the tester's own config ------------------------------------------------------------
def test_the_tester_works_in_a_worker_of_its_own_role(new_run):
    agent_services.agent_config_set(role="tester", time_limit_seconds=300)
    run = new_run()
    drive(run.id)
    run.refresh_from_db()
    assert run.status == "succeeded", run.error_message
    roles = set(WorkerSession.objects.filter(project=run.project_id).values_list("role", flat=True))
    assert roles == {"developer", "tester"}


# --- the reaper -------------------------------------------------------------------------
def test_the_reaper_does_not_judge_a_session_that_changed_after_it_listed_the_runtime(new_run):
    run = new_run()
    drive(run.id, until="preparer")
    session = workers.session_acquire(project_id=run.project_id, run_id=run.id, role="developer")
    workers.runtime_of(session).terminate(session.container_id)  # the worker is really gone
    # Changed after the sweep's listing: left for the next sweep.
    WorkerSession.objects.filter(id=session.id).update(state_changed_at=timezone.now() + timedelta(minutes=1))
    assert session.id not in maintenance.workers_reap().vanished
    WorkerSession.objects.filter(id=session.id).update(state_changed_at=timezone.now() - timedelta(minutes=1))
    assert session.id in maintenance.workers_reap().vanished


# --- slugs ------------------------------------------------------------------------------
def test_the_free_slug_is_found_in_one_query_however_many_are_taken(db, user):
    spec = ProjectSpec.model_validate(SPEC)

    def queries_to_name(project):
        with CaptureQueriesContext(connection) as captured:
            services.project_set_spec(project_id=project.id, spec=spec)
        return len(captured)

    free = queries_to_name(Project.objects.create(owner=user, description="x"))
    Project.objects.bulk_create([Project(owner=user, description="x", slug=f"greeter-{n}") for n in range(2, 182)])
    project = Project.objects.create(owner=user, description="x")
    assert queries_to_name(project) == free  # 181 taken names cost no more than none
    project.refresh_from_db()
    assert project.slug == "greeter-182"


@pytest.mark.skipif("connection.vendor != 'postgresql'", reason="concurrent writers need PostgreSQL")
def test_two_architects_picking_the_same_slug_at_once_both_succeed(transactional_db, user):
    projects = [Project.objects.create(owner=user, description="x") for _ in range(6)]
    barrier, errors = threading.Barrier(len(projects)), []

    def set_spec(project_id):
        try:
            barrier.wait()
            services.project_set_spec(project_id=project_id, spec=ProjectSpec.model_validate(SPEC))
        except Exception as exc:  # noqa: BLE001 - the test reports any failure
            errors.append(exc)
        finally:
            connection.close()

    threads = [threading.Thread(target=set_spec, args=(p.id,)) for p in projects]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    slugs = sorted(Project.objects.filter(id__in=[p.id for p in projects]).values_list("slug", flat=True))
    assert len(set(slugs)) == 6 and "greeter" in slugs


# --- one person cannot flood the factory ------------------------------------------------
def test_a_person_creating_projects_too_fast_is_told_to_wait(transactional_db, user, settings):
    settings.PROJECT_CREATE_LIMIT = 3
    for _ in range(3):
        services.project_create(owner=user, description="a web service that echoes text")
    with pytest.raises(RateLimited) as caught:
        services.project_create(owner=user, description="a web service that echoes text")
    assert caught.value.status_code == 429 and caught.value.code == "project_rate_limited"
    assert "the limit is 3" in caught.value.message
    assert Project.objects.filter(owner=user).count() == 3  # nothing half-made


# --- exactly once -----------------------------------------------------------------------
def test_notify_twice_tells_the_person_once(new_run):
    run = new_run()
    drive(run.id, until="deployer")
    row = StageRun.objects.get(run=run, stage="notify")
    claim = runs.stage_claim(run_id=run.id, stage="notify", task_id="first")
    from orchestrator.stages import StageContext, notify

    ctx = StageContext(run=claim.run, stage_run=claim.stage_run, project=claim.run.project)
    notify.run(ctx)  # killed before its success was committed ...
    StageRun.objects.filter(id=row.id).update(status="pending")
    assert pipeline.execute(stage="notify", run_id=run.id, task_id="again") is Next.CONTINUE  # ... and rerun
    assert run.events.filter(type=RunEvent.Type.NOTIFIED).count() == 1
    assert run.events.filter(type=RunEvent.Type.RUN_SUCCEEDED).count() == 1
