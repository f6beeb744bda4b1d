"""The run state machine: the one owner of PipelineRun and StageRun rows.

A stage task *claims* its StageRun by compare-and-set; every later write about that claim goes
through ``_fenced`` and is fenced by the claim's ``attempt`` number, so a task that lost its
claim (the reconciler gave the stage to another worker) cannot overwrite anything. Other apps
(escalations in ``agents``, the engine in ``orchestrator``) change a run only through the
functions here.
"""
from __future__ import annotations

import enum
from dataclasses import dataclass
from datetime import timedelta
from decimal import Decimal
from typing import Any

import structlog
from celery import current_app
from django.conf import settings
from django.contrib.auth import get_user_model
from django.db import IntegrityError, transaction
from django.db.models import F
from django.utils import timezone

from config import task_names
from config.errors import Conflict, NotFound
from projects.events import event_record
from projects.models import PipelineRun, Project, RunEvent, Stage, StageRun

log = structlog.get_logger(__name__)

# The order of a run's stages. Developer and Tester repeat once per iteration.
STAGE_ORDER: tuple[str, ...] = (
    Stage.ARCHITECT,
    Stage.PREPARER,
    Stage.DEVELOPER,
    Stage.TESTER,
    Stage.DEPLOYER,
    Stage.NOTIFY,
)
ITERATED_STAGES = (Stage.DEVELOPER, Stage.TESTER)
DONE_STATUSES = (StageRun.Status.SUCCEEDED, StageRun.Status.FAILED, StageRun.Status.SKIPPED)


def _send_start(run_id: int) -> None:
    transaction.on_commit(lambda: current_app.send_task(task_names.PIPELINE_START, kwargs={"run_id": run_id}))


# --- creating a run -------------------------------------------------------------------
@transaction.atomic
def run_create(*, project: Project, kind: str) -> PipelineRun:
    try:
        with transaction.atomic():
            run = PipelineRun.objects.create(
                project=project, kind=kind, max_iterations=settings.PIPELINE_MAX_ITERATIONS,
                budget_usd=settings.RUN_BUDGET_USD,
            )
    except IntegrityError as exc:
        raise Conflict("This project already has a run in progress.", code="run_in_progress") from exc
    now = timezone.now()
    StageRun.objects.bulk_create(
        StageRun(run=run, stage=stage, iteration=1, queued_at=now if stage == Stage.ARCHITECT else None)
        for stage in STAGE_ORDER
    )
    event_record(run_id=run.id, type=RunEvent.Type.RUN_QUEUED, payload={"kind": kind})
    _send_start(run.id)
    return run


# --- stage claims ---------------------------------------------------------------------
class ClaimState(enum.Enum):
    CLAIMED = "claimed"  # this task now owns the stage
    DONE = "done"  # already finished: the chain may go on
    BUSY = "busy"  # another task owns it, or an earlier stage is unfinished: stop this chain
    WAIT = "wait"  # the run may not start yet (its person's other runs are at their cap): retry later


@dataclass(frozen=True)
class Claim:
    state: ClaimState
    stage_run: StageRun | None = None
    run: PipelineRun | None = None


def current_stage_runs(run: PipelineRun) -> list[StageRun]:
    """The run's stage rows in pipeline order, for its current iteration."""
    rows = {
        s.stage: s
        for s in StageRun.objects.filter(run=run)
        if s.stage not in ITERATED_STAGES or s.iteration == run.iteration
    }
    return [rows[stage] for stage in STAGE_ORDER if stage in rows]


def first_open_stage(run: PipelineRun) -> str:
    """The stage a run's chain should start from: its first unfinished stage (Notify when ended)."""
    if run.is_finished:
        return Stage.NOTIFY
    rows = current_stage_runs(run)
    return next((r.stage for r in rows if r.status in (StageRun.Status.PENDING, StageRun.Status.RUNNING)),
                Stage.NOTIFY)


def _fenced(stage_run_id: int, attempt: int, **fields: Any) -> bool:
    """The one compare-and-set every write about a claim goes through: it changes the row only
    while this claim (``attempt``) still owns it and it is running."""
    done = StageRun.objects.filter(id=stage_run_id, attempt=attempt, status=StageRun.Status.RUNNING).update(**fields)
    if not done:
        log.warning("stage_claim_lost", stage_run_id=stage_run_id, attempt=attempt)
    return bool(done)


def stage_claim(*, run_id: int, stage: str, task_id: str) -> Claim:
    run = PipelineRun.objects.select_related("project").get(id=run_id)
    rows = current_stage_runs(run)
    row = next(r for r in rows if r.stage == stage)
    if run.is_finished and stage != Stage.NOTIFY:
        stage_skip(stage_run_id=row.id)  # the run ended before reaching this stage
        return Claim(ClaimState.DONE, row, run)
    if row.status in DONE_STATUSES:
        return Claim(ClaimState.DONE, row, run)
    if row.status == StageRun.Status.RUNNING or run.status == PipelineRun.Status.WAITING_HUMAN:
        return Claim(ClaimState.BUSY, row, run)  # owned by another task, or waiting for a person
    earlier = rows[: rows.index(row)] if not run.is_finished else []
    if any(r.status not in (StageRun.Status.SUCCEEDED, StageRun.Status.SKIPPED) for r in earlier):
        return Claim(ClaimState.BUSY, row, run)
    now = timezone.now()
    with transaction.atomic():
        if run.status == PipelineRun.Status.QUEUED and not _person_may_start(run):
            # Touch the row so the reconciler does not take the wait for a lost message.
            StageRun.objects.filter(id=row.id, status=StageRun.Status.PENDING).update(queued_at=now)
            return Claim(ClaimState.WAIT, row, run)
        won = StageRun.objects.filter(id=row.id, status=StageRun.Status.PENDING).update(
            status=StageRun.Status.RUNNING,
            attempt=F("attempt") + 1,
            task_id=task_id or "",
            started_at=now,
            heartbeat_at=now,
            finished_at=None,
            error="",
        )
        if not won:
            return Claim(ClaimState.BUSY, row, run)
        if PipelineRun.objects.filter(id=run_id, status=PipelineRun.Status.QUEUED).update(
            status=PipelineRun.Status.RUNNING, started_at=now
        ):
            event_record(run_id=run_id, type=RunEvent.Type.RUN_STARTED)
        PipelineRun.objects.filter(id=run_id, status=PipelineRun.Status.RUNNING).update(current_stage=stage)
        row.refresh_from_db()
        event_record(run_id=run_id, type=RunEvent.Type.STAGE_STARTED, stage=stage,
                     payload={"iteration": row.iteration, "attempt": row.attempt})
    run.refresh_from_db()
    return Claim(ClaimState.CLAIMED, row, run)


def _person_may_start(run: PipelineRun) -> bool:
    """Fairness: one person has at most RUNS_PER_PERSON runs running at once (0: no cap).

    The person's row is locked while counting, so two of their runs cannot both take the last
    place. Their other runs wait queued; when one ends, the next is started (``_start_next_queued``).
    """
    cap = settings.RUNS_PER_PERSON
    if not cap:
        return True
    owner_id = run.project.owner_id
    get_user_model().objects.select_for_update().filter(id=owner_id).first()
    running = PipelineRun.objects.filter(project__owner_id=owner_id, status=PipelineRun.Status.RUNNING).count()
    return running < cap


def _start_next_queued(run_id: int) -> None:
    """A run ended: its person's oldest queued run may take its place at once (rather than at
    its next retry)."""
    if not settings.RUNS_PER_PERSON:
        return
    owner_id = PipelineRun.objects.filter(id=run_id).values_list("project__owner_id", flat=True).first()
    waiting = (PipelineRun.objects.filter(project__owner_id=owner_id, status=PipelineRun.Status.QUEUED)
               .order_by("created_at", "id").values_list("id", flat=True).first())
    if waiting is not None:
        _send_start(waiting)


def queued_ahead(*, run: PipelineRun) -> int:
    """How many of this person's runs are queued or running ahead of this one (for priority:
    a person with many runs waiting does not hold back another person's first one)."""
    return PipelineRun.objects.filter(
        project__owner_id=run.project.owner_id, status__in=(PipelineRun.Status.QUEUED, PipelineRun.Status.RUNNING),
        id__lt=run.id,
    ).count()


def stage_heartbeat(*, stage_run_id: int, attempt: int) -> bool:
    """Prove the claim is alive. False when the claim was lost."""
    return bool(
        StageRun.objects.filter(id=stage_run_id, attempt=attempt, status=StageRun.Status.RUNNING).update(
            heartbeat_at=timezone.now()
        )
    )


def _mark_next_queued(run: PipelineRun, stage: str, now) -> None:
    rows = current_stage_runs(run)
    names = [r.stage for r in rows]
    if stage in names and names.index(stage) + 1 < len(rows):
        nxt = rows[names.index(stage) + 1]
        StageRun.objects.filter(id=nxt.id, status=StageRun.Status.PENDING).update(queued_at=now)


@transaction.atomic
def stage_succeed(*, stage_run_id: int, attempt: int, output: dict[str, Any]) -> bool:
    now = timezone.now()
    if not _fenced(stage_run_id, attempt, status=StageRun.Status.SUCCEEDED, output=output, finished_at=now):
        return False
    row = StageRun.objects.select_related("run").get(id=stage_run_id)
    _mark_next_queued(row.run, row.stage, now)
    event_record(run_id=row.run_id, type=RunEvent.Type.STAGE_SUCCEEDED, stage=row.stage,
                 payload={"iteration": row.iteration, "seconds": row.duration_seconds})
    return True


@transaction.atomic
def stage_fail(*, stage_run_id: int, attempt: int, code: str, message: str,
               output: dict[str, Any] | None = None, fail_run: bool = True) -> bool:
    """The stage failed; unless told otherwise, the run fails with the stage's reason."""
    now = timezone.now()
    if not _fenced(stage_run_id, attempt, status=StageRun.Status.FAILED, output=output, error=message,
                   finished_at=now):
        return False
    row = StageRun.objects.get(id=stage_run_id)
    event_record(run_id=row.run_id, type=RunEvent.Type.STAGE_FAILED, stage=row.stage,
                 payload={"iteration": row.iteration, "code": code, "message": message[:2000]})
    if fail_run:
        run_fail(run_id=row.run_id, code=code, message=message)
        # The stages between are skipped; Notify must still tell the person.
        StageRun.objects.filter(run_id=row.run_id, stage=Stage.NOTIFY, status=StageRun.Status.PENDING).update(
            queued_at=now
        )
    return True


@transaction.atomic
def stage_release(*, stage_run_id: int, attempt: int, reason: str, transient: bool = False) -> bool:
    """Give a claim back untouched (the stage could not start yet); it will be claimed again.

    ``transient`` counts the give-back as one more transient failure of the stage (an outside
    service hiccuped), which is what the retry limit counts; a quota wait is not a failure.
    """
    fields: dict[str, Any] = {"status": StageRun.Status.PENDING, "queued_at": timezone.now(), "started_at": None}
    if transient:
        fields["transient_failures"] = F("transient_failures") + 1
    if not _fenced(stage_run_id, attempt, **fields):
        return False
    row = StageRun.objects.get(id=stage_run_id)
    event_record(run_id=row.run_id, type=RunEvent.Type.STAGE_WAITING, stage=row.stage, payload={"reason": reason})
    return True


def stage_skip(*, stage_run_id: int) -> None:
    """A stage of a run that already ended: nothing to do."""
    StageRun.objects.filter(id=stage_run_id, status=StageRun.Status.PENDING).update(
        status=StageRun.Status.SKIPPED, finished_at=timezone.now()
    )


@transaction.atomic
def stage_loop_back(*, stage_run_id: int, attempt: int, output: dict[str, Any], message: str,
                    announce: bool = True) -> bool:
    """The Tester (or the Deployer's health check) found failures: close this row and open the
    next iteration of Developer and Tester, in one step.

    ``announce=False`` when a person is asked instead of going on at once (the event then says
    the next iteration waits for them)."""
    now = timezone.now()
    stage = StageRun.objects.filter(id=stage_run_id).values_list("stage", flat=True).first()
    if stage == Stage.DEPLOYER:
        # The release failed its checks: the Deployer runs again once the next iteration's tests pass.
        closed = _fenced(stage_run_id, attempt, status=StageRun.Status.PENDING, output=output, error=message,
                         started_at=None, queued_at=None)
    else:
        closed = _fenced(stage_run_id, attempt, status=StageRun.Status.FAILED, output=output, error=message,
                         finished_at=now)
    if not closed:
        return False
    row = StageRun.objects.select_related("run").get(id=stage_run_id)
    nxt = row.run.iteration + 1
    PipelineRun.objects.filter(id=row.run_id, iteration=row.run.iteration).update(iteration=nxt)
    for iterated in ITERATED_STAGES:
        StageRun.objects.get_or_create(run_id=row.run_id, stage=iterated, iteration=nxt,
                                       defaults={"queued_at": now if iterated == Stage.DEVELOPER else None})
    event_record(run_id=row.run_id, type=RunEvent.Type.TESTS_FAILED, stage=row.stage,
                 payload={"iteration": nxt - 1, "next_iteration": nxt, "message": message[:2000],
                          "waits_for_person": not announce})
    return True


# --- waiting for a person -------------------------------------------------------------
@transaction.atomic
def run_wait_for_human(*, run_id: int, stage_run_id: int | None = None, attempt: int | None = None) -> bool:
    """The run stops until a person answers. With ``stage_run_id``, that claimed stage is given
    back (pending, fenced by ``attempt``) so the answer resumes it; False if the claim was lost."""
    if stage_run_id is not None and not _fenced(stage_run_id, attempt, status=StageRun.Status.PENDING,
                                                  started_at=None, queued_at=None):
        return False
    PipelineRun.objects.filter(id=run_id, status=PipelineRun.Status.RUNNING).update(
        status=PipelineRun.Status.WAITING_HUMAN
    )
    return True


@transaction.atomic
def run_resume(*, run_id: int, budget_increase_usd: Decimal | None = None, extra_iteration: bool = False) -> bool:
    """A person answered: the run goes on from the stage that was waiting."""
    fields: dict[str, Any] = {"status": PipelineRun.Status.RUNNING}
    if budget_increase_usd is not None:
        fields["budget_usd"] = F("budget_usd") + budget_increase_usd
    if extra_iteration:
        fields["max_iterations"] = F("max_iterations") + 1  # one more try with the guidance
    if not PipelineRun.objects.filter(id=run_id, status=PipelineRun.Status.WAITING_HUMAN).update(**fields):
        return False
    StageRun.objects.filter(run_id=run_id, status=StageRun.Status.PENDING).update(queued_at=timezone.now())
    _send_start(run_id)
    return True


# --- ending a run ---------------------------------------------------------------------
@transaction.atomic
def run_cancel(*, run_id: int, user) -> PipelineRun:
    """A person (the owner, or staff) cancels an active run; Notify tells them it stopped."""
    run = PipelineRun.objects.select_related("project").select_for_update(of=("self",)).filter(id=run_id).first()
    if run is None or not (user.is_staff or run.project.owner_id == user.id):
        raise NotFound("No such run.", code="run_not_found")
    if run.status not in PipelineRun.ACTIVE:
        raise Conflict(f"Run #{run.id} has already {run.status}.", code="run_finished")
    who = getattr(user, "username", "") or f"user {user.id}"
    PipelineRun.objects.filter(id=run.id).update(
        status=PipelineRun.Status.CANCELLED, error_code="cancelled", error_message=f"Cancelled by {who}.",
        finished_at=timezone.now(),
    )
    event_record(run_id=run.id, type=RunEvent.Type.RUN_CANCELLED, payload={"by": who})
    run_enqueue_notify(run_id=run.id)
    _start_next_queued(run.id)
    run.refresh_from_db()
    return run


def run_enqueue_notify(*, run_id: int) -> None:
    """Deliver the final message of a run that ended outside its chain (cancelled, expired)."""
    StageRun.objects.filter(run_id=run_id, stage=Stage.NOTIFY, status=StageRun.Status.PENDING).update(
        queued_at=timezone.now()
    )
    _send_start(run_id)


@transaction.atomic
def run_fail(*, run_id: int, code: str, message: str) -> bool:
    updated = PipelineRun.objects.filter(id=run_id, status__in=PipelineRun.ACTIVE).update(
        status=PipelineRun.Status.FAILED, error_code=code, error_message=message, finished_at=timezone.now()
    )
    if updated:
        event_record(run_id=run_id, type=RunEvent.Type.RUN_FAILED, payload={"code": code, "message": message[:2000]})
        _start_next_queued(run_id)
    return bool(updated)


@transaction.atomic
def run_succeed(*, run_id: int, result_message: str) -> bool:
    updated = PipelineRun.objects.filter(id=run_id, status=PipelineRun.Status.RUNNING).update(
        status=PipelineRun.Status.SUCCEEDED, result_message=result_message, finished_at=timezone.now()
    )
    if updated:
        event_record(run_id=run_id, type=RunEvent.Type.RUN_SUCCEEDED, payload={"message": result_message})
        _start_next_queued(run_id)
    return bool(updated)


@transaction.atomic
def run_set_result_message(*, run_id: int, message: str) -> None:
    PipelineRun.objects.filter(id=run_id).update(result_message=message)


def run_lock_active(*, run_id: int) -> bool:
    """Lock the run's row for this transaction and say whether it is still active: a write on
    behalf of the run (a worker's progress or question) that holds this lock cannot land on a
    run that finished meanwhile."""
    return PipelineRun.objects.select_for_update().filter(id=run_id, status__in=PipelineRun.ACTIVE).exists()


def run_add_cost(*, stage_run_id: int, cost_usd: Decimal) -> None:
    """An agent turn of this stage cost money: the run's running cost moves with the ledger."""
    if cost_usd:
        PipelineRun.objects.filter(stages__id=stage_run_id).update(cost_usd=F("cost_usd") + cost_usd)


# --- the reconciler -------------------------------------------------------------------
@dataclass(frozen=True)
class Requeue:
    run_id: int
    stage: str
    reason: str


def runs_requeue_stuck() -> list[Requeue]:
    """Find runs whose current stage has no live task, give the stage back, say what to enqueue.

    A running stage whose heartbeat went silent lost its worker; a pending stage that nobody
    picked up within STAGE_PICKUP_SECONDS lost its message. Each is reset by compare-and-set, so
    two reconcilers never re-enqueue the same stage twice.
    """
    now = timezone.now()
    stale_before = now - timedelta(seconds=settings.STAGE_STALE_SECONDS)
    pickup_before = now - timedelta(seconds=settings.STAGE_PICKUP_SECONDS)
    found: list[Requeue] = []
    candidates = StageRun.objects.select_related("run").filter(
        status__in=[StageRun.Status.RUNNING, StageRun.Status.PENDING]
    ).exclude(run__status__in=[PipelineRun.Status.WAITING_HUMAN])
    for row in candidates.filter(status=StageRun.Status.RUNNING, heartbeat_at__lt=stale_before):
        with transaction.atomic():
            if StageRun.objects.filter(id=row.id, status=StageRun.Status.RUNNING, attempt=row.attempt,
                                       heartbeat_at__lt=stale_before).update(
                status=StageRun.Status.PENDING, queued_at=now
            ):
                event_record(run_id=row.run_id, type=RunEvent.Type.STAGE_REQUEUED, stage=row.stage,
                             payload={"reason": "worker_lost", "attempt": row.attempt})
                found.append(Requeue(row.run_id, row.stage, "worker_lost"))
    for row in candidates.filter(status=StageRun.Status.PENDING, queued_at__lt=pickup_before):
        run = row.run
        if run.is_finished:
            if row.stage != Stage.NOTIFY:
                continue
        else:
            rows = current_stage_runs(run)
            current = next((r for r in rows if r.status in (StageRun.Status.PENDING, StageRun.Status.RUNNING)), None)
            if current is None or current.id != row.id:
                continue
        if StageRun.objects.filter(id=row.id, status=StageRun.Status.PENDING, queued_at=row.queued_at).update(
                queued_at=now):
            event_record(run_id=row.run_id, type=RunEvent.Type.STAGE_REQUEUED, stage=row.stage,
                         payload={"reason": "message_lost"})
            found.append(Requeue(row.run_id, row.stage, "message_lost"))
    return found
