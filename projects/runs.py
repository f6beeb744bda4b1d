"""The run state machine: the one owner of PipelineRun and StageRun rows.

A stage task *claims* its StageRun by compare-and-set; every later write about that claim goes
through ``_fenced`` and is fenced by the claim's ``attempt`` number, so a task that lost its
claim (the reconciler gave the stage to another worker) cannot overwrite anything. Other apps
(escalations in ``agents``, the engine in ``orchestrator``) change a run only through the
functions here.
"""

from __future__ import annotations

import enum
import functools
import json
from dataclasses import dataclass
from datetime import timedelta
from decimal import Decimal
from typing import Any

import structlog
from celery import current_app
from django.conf import settings
from django.contrib.auth import get_user_model
from django.db import IntegrityError, connection, transaction
from django.db.models import F
from django.utils import timezone

from config import task_names
from config.errors import Conflict, NotFound
from projects import sql
from projects.events import event_inserted, event_record
from projects.models import PipelineRun, Project, RunEvent, Stage, StageRun, TelegramAccount

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
    """Enqueue ``pipeline.start``, which sends the run's chain from its first open stage."""
    transaction.on_commit(
        lambda: current_app.send_task(
            task_names.PIPELINE_START, kwargs={"run_id": run_id}, priority=task_names.PIPELINE_START_PRIORITY
        )
    )


def _send_first_stage(run: PipelineRun) -> None:
    """A new run's first message is its first stage's task itself (no ``pipeline.start`` to
    read the run again): the rest of its chain is sent when that stage is done. It goes after
    every stage of the runs under way, and after this person's runs already waiting
    (``queued_ahead``), so a busy person's queue does not hold back another person's first run."""
    priority = min(task_names.MAX_PRIORITY, task_names.PIPELINE_START_PRIORITY_NEW + queued_ahead(run=run))
    transaction.on_commit(
        lambda: current_app.send_task(task_names.PIPELINE_ARCHITECT, kwargs={"run_id": run.id}, priority=priority)
    )


# --- creating a run -------------------------------------------------------------------
@transaction.atomic
def run_create(*, project: Project, kind: str) -> PipelineRun:
    try:
        with transaction.atomic():
            run = PipelineRun.objects.create(
                project=project,
                kind=kind,
                max_iterations=settings.PIPELINE_MAX_ITERATIONS,
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
    _send_first_stage(run)
    return run


# --- stage claims ---------------------------------------------------------------------
class ClaimState(enum.Enum):
    CLAIMED = "claimed"  # this task now owns the stage
    DONE = "done"  # already finished: the chain may go on
    BUSY = "busy"  # another task owns it, or an earlier stage is unfinished: stop this chain
    WAIT = "wait"  # the run may not start yet (its person's other runs are at their cap): retry later
    GONE = "gone"  # no such run (deleted, or a message meant for another database)


@dataclass(frozen=True)
class Claim:
    state: ClaimState
    stage_run: StageRun | None = None
    run: PipelineRun | None = None


def _current(run: PipelineRun, rows) -> list[StageRun]:
    by_stage = {s.stage: s for s in rows if s.stage not in ITERATED_STAGES or s.iteration == run.iteration}
    return [by_stage[stage] for stage in STAGE_ORDER if stage in by_stage]


def current_stage_runs(run: PipelineRun) -> list[StageRun]:
    """The run's stage rows in pipeline order, for its current iteration."""
    return _current(run, StageRun.objects.filter(run=run))


def _run_with_current_stage_runs(run_id: int) -> tuple[PipelineRun | None, list[StageRun]]:
    """The run (with its project) and its current stage rows, in one query; (None, []) if no such run."""
    rows = list(StageRun.objects.select_related("run__project").filter(run_id=run_id))
    if not rows:
        return None, []
    run = rows[0].run
    for row in rows:
        row.run = run
    return run, _current(run, rows)


def first_open_stage(run: PipelineRun) -> str:
    """The stage a run's chain should start from: its first unfinished stage (Notify when ended)."""
    if run.is_finished:
        return Stage.NOTIFY
    if run.status == PipelineRun.Status.QUEUED:  # never started: every stage is still to run
        return Stage.ARCHITECT
    rows = current_stage_runs(run)
    return next((r.stage for r in rows if r.status in (StageRun.Status.PENDING, StageRun.Status.RUNNING)), Stage.NOTIFY)


def _fenced(stage_run_id: int, attempt: int, **fields: Any) -> bool:
    """The one compare-and-set every write about a claim goes through: it changes the row only
    while this claim (``attempt``) still owns it and it is running."""
    done = StageRun.objects.filter(id=stage_run_id, attempt=attempt, status=StageRun.Status.RUNNING).update(**fields)
    if not done:
        log.warning("stage_claim_lost", stage_run_id=stage_run_id, attempt=attempt)
    return bool(done)


def stage_claim(*, run_id: int, stage: str, task_id: str) -> Claim:
    """Claim the run's ``stage`` for this task by compare-and-set on its row.

    On PostgreSQL, the usual case (a running run's next stage, every earlier one done) is one
    statement (``_claim_in_one_statement``). Otherwise, and whenever that statement claims
    nothing, the run and its stage rows are read once and the case decided here; the claim's
    writes are the row's compare-and-set (on the status and the attempt read, so a row claimed
    and given back meanwhile is not taken on a stale read), the run's status and current stage,
    and the events.
    """
    if sql.postgresql() and stage != Stage.ARCHITECT:  # a first stage mostly finds its run queued
        claim = _claim_in_one_statement(run_id=run_id, stage=stage, task_id=task_id)
        if claim is not None:
            return claim
    run, rows = _run_with_current_stage_runs(run_id)
    if run is None:
        return Claim(ClaimState.GONE)
    row = next(r for r in rows if r.stage == stage)
    if run.is_finished and stage != Stage.NOTIFY:
        stage_skip(stage_run_id=row.id)  # the run ended before reaching this stage
        return Claim(ClaimState.DONE, row, run)
    if row.status in DONE_STATUSES:
        # A redelivered or duplicate message. Its chain goes on only while the next stage has
        # not been taken up: if it is running or done, another chain carries the run, and a
        # second one would only run every later task again to find it done.
        after = rows[rows.index(row) + 1 : rows.index(row) + 2]
        if after and after[0].status in (StageRun.Status.RUNNING, StageRun.Status.SUCCEEDED, StageRun.Status.FAILED):
            return Claim(ClaimState.BUSY, row, run)
        return Claim(ClaimState.DONE, row, run)
    if row.status == StageRun.Status.RUNNING or run.status == PipelineRun.Status.WAITING_HUMAN:
        return Claim(ClaimState.BUSY, row, run)  # owned by another task, or waiting for a person
    earlier = rows[: rows.index(row)] if not run.is_finished else []
    if any(r.status not in (StageRun.Status.SUCCEEDED, StageRun.Status.SKIPPED) for r in earlier):
        return Claim(ClaimState.BUSY, row, run)
    now = timezone.now()
    claimed = {
        "status": StageRun.Status.RUNNING,
        "attempt": row.attempt + 1,
        "task_id": task_id or "",
        "started_at": now,
        "heartbeat_at": now,
        "finished_at": None,
        "error": "",
    }
    with transaction.atomic():
        if run.status == PipelineRun.Status.QUEUED and not _person_may_start(run):
            # Its chain stops here and the run is parked (no start on its way: ``queued_at``
            # empty); it is started when a place frees (``_start_queued_of``).
            StageRun.objects.filter(id=row.id, status=StageRun.Status.PENDING).update(queued_at=None)
            return Claim(ClaimState.WAIT, row, run)
        if not StageRun.objects.filter(id=row.id, status=StageRun.Status.PENDING, attempt=row.attempt).update(
            **claimed
        ):
            return Claim(ClaimState.BUSY, row, run)
        for field, value in claimed.items():
            setattr(row, field, value)
        if run.status == PipelineRun.Status.QUEUED and PipelineRun.objects.filter(
            id=run_id, status=PipelineRun.Status.QUEUED
        ).update(status=PipelineRun.Status.RUNNING, started_at=now, current_stage=stage):
            run.status, run.started_at, run.current_stage = PipelineRun.Status.RUNNING, now, stage
            event_record(run_id=run_id, type=RunEvent.Type.RUN_STARTED)
        elif PipelineRun.objects.filter(id=run_id, status=PipelineRun.Status.RUNNING).update(current_stage=stage):
            run.status, run.current_stage = PipelineRun.Status.RUNNING, stage
        elif not run.is_finished:
            run.refresh_from_db()  # it ended or stopped meanwhile: the stage sees it as it is
        event_record(
            run_id=run_id,
            type=RunEvent.Type.STAGE_STARTED,
            stage=stage,
            payload={"iteration": row.iteration, "attempt": row.attempt},
        )
    return Claim(ClaimState.CLAIMED, row, run)


def _columns(model, alias: str) -> tuple[list[str], str]:
    fields = model._meta.concrete_fields
    return [f.attname for f in fields], ", ".join(f'{alias}."{f.column}"' for f in fields)


def _from_row(model, values: list):
    """A model instance from its concrete fields' raw values, converted as the ORM would (JSON)."""
    fields = model._meta.concrete_fields
    converted = [
        f.from_db_value(v, None, connection) if v is not None and hasattr(f, "from_db_value") else v
        for f, v in zip(fields, values, strict=True)
    ]
    return model.from_db("default", [f.attname for f in fields], converted)


@functools.cache
def _claim_sql() -> str:
    stages, runs_ = StageRun._meta.db_table, PipelineRun._meta.db_table
    _, stage_cols = _columns(StageRun, "claimed")
    _, run_cols = _columns(PipelineRun, "moved")
    _, project_cols = _columns(Project, "p")
    S, R = StageRun.Status, PipelineRun.Status
    # Parameters carry their types: psycopg would send a small id as smallint, and a plan made for
    # that type skips the indexes. The UPDATE's own conditions are the compare-and-set: a row
    # claimed meanwhile by another task is re-checked once its lock is free and no longer matches.
    return f"""
WITH claimed AS (
    UPDATE {stages} s SET status = '{S.RUNNING}', attempt = s.attempt + 1, task_id = %(task)s::text,
        started_at = %(now)s::timestamptz, heartbeat_at = %(now)s::timestamptz, finished_at = NULL, error = ''
    FROM {runs_} r
    WHERE s.run_id = %(run)s::bigint AND s.stage = %(stage)s::text AND s.status = '{S.PENDING}'
      AND r.id = %(run)s::bigint AND r.status = '{R.RUNNING}'
      AND (s.stage <> ALL(%(iterated)s::text[]) OR s.iteration = r.iteration)
      AND NOT EXISTS (
          SELECT 1 FROM {stages} e WHERE e.run_id = %(run)s::bigint AND e.stage = ANY(%(earlier)s::text[])
            AND (e.stage <> ALL(%(iterated)s::text[]) OR e.iteration = r.iteration)
            AND e.status NOT IN ('{S.SUCCEEDED}', '{S.SKIPPED}'))
    RETURNING s.*
), moved AS (
    UPDATE {runs_} r SET current_stage = %(stage)s::text
    WHERE r.id = %(run)s::bigint AND r.status = '{R.RUNNING}' AND EXISTS (SELECT 1 FROM claimed)
    RETURNING r.*
), event AS (
    INSERT INTO {RunEvent._meta.db_table} (run_id, type, stage, payload, created_at)
    SELECT run_id, '{RunEvent.Type.STAGE_STARTED}', %(stage)s::text,
        jsonb_build_object('iteration', iteration, 'attempt', attempt), %(now)s::timestamptz
    FROM claimed
    RETURNING id
)
SELECT {stage_cols}, moved.id IS NOT NULL, {run_cols}, {project_cols}, event.id,
    EXISTS (SELECT 1 FROM {TelegramAccount._meta.db_table} t
            WHERE t.user_id = p.owner_id AND t.chat_id IS NOT NULL AND t.blocked_at IS NULL)
FROM claimed CROSS JOIN event LEFT JOIN moved ON true LEFT JOIN {Project._meta.db_table} p ON p.id = moved.project_id
"""


def _claim_in_one_statement(*, run_id: int, stage: str, task_id: str) -> Claim | None:
    """PostgreSQL: the claim of a running run's pending stage whose earlier stages (of the
    current iteration) are all done, in one statement: the compare-and-set on the row's status
    (re-checked on the newest row once a concurrent claim's lock is free), the run's current
    stage, the ``stage.started`` event, and the rows the stage needs, returned. None when it
    claimed nothing (done, busy, waiting, not started, finished: ``stage_claim`` then reads and
    decides as on any database)."""
    now = timezone.now()
    position = STAGE_ORDER.index(stage)
    row = sql.fetchone_prepared(
        _claim_sql(),
        {
            "run": run_id,
            "stage": stage,
            "task": task_id or "",
            "now": now,
            "iterated": list(ITERATED_STAGES),
            "earlier": list(STAGE_ORDER[:position]),
        },
    )
    if row is None:
        return None
    stage_n, run_n = len(StageRun._meta.concrete_fields), len(PipelineRun._meta.concrete_fields)
    values = list(row)
    claimed = _from_row(StageRun, values[:stage_n])
    moved, values = values[stage_n], values[stage_n + 1 :]
    if moved:
        run = _from_row(PipelineRun, values[:run_n])
        run.project = _from_row(Project, values[run_n:-2])
    else:  # the run ended or stopped meanwhile: the stage sees it as it is
        run = PipelineRun.objects.select_related("project").get(id=run_id)
    claimed.run = run
    event_id, reachable = values[-2], values[-1]
    payload = {"iteration": claimed.iteration, "attempt": claimed.attempt}
    event = RunEvent(
        id=event_id, run_id=run_id, type=RunEvent.Type.STAGE_STARTED, stage=stage, payload=payload, created_at=now
    )
    event_inserted(event, reachable=reachable if moved else None)
    return Claim(ClaimState.CLAIMED, claimed, run)


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
    """A run ended (or now waits for a person): its person's parked runs may take the free
    places at once. Counted after the commit, so of two runs of one person ending together the
    later commit sees both places free."""
    if settings.RUNS_PER_PERSON:
        transaction.on_commit(lambda: _start_parked_of_owner_of(run_id))


@functools.cache
def _parked_owner_sql() -> str:
    s, r, p = StageRun._meta.db_table, PipelineRun._meta.db_table, Project._meta.db_table
    return f"""SELECT p.owner_id FROM {r} r JOIN {p} p ON p.id = r.project_id
WHERE r.id = %s::bigint AND EXISTS (
    SELECT 1 FROM {p} op JOIN {r} q ON q.project_id = op.id JOIN {s} a ON a.run_id = q.id
    WHERE op.owner_id = p.owner_id AND q.status = '{PipelineRun.Status.QUEUED}'
      AND a.stage = '{Stage.ARCHITECT}' AND a.status = '{StageRun.Status.PENDING}' AND a.queued_at IS NULL)"""


def _start_parked_of_owner_of(run_id: int) -> None:
    """``_start_queued_of`` for the owner of ``run_id``, when they have parked runs at all (one
    prepared statement says so on PostgreSQL; most people have none)."""
    if sql.postgresql():
        row = sql.fetchone_prepared(_parked_owner_sql(), (run_id,))
        owner_id = row[0] if row else None
    else:
        owner_id = PipelineRun.objects.filter(id=run_id).values_list("project__owner_id", flat=True).first()
    if owner_id is not None:
        _start_queued_of(owner_id)


def _start_queued_of(owner_id: int) -> list[int]:
    """Send a start to as many of this person's parked runs (queued, their turn not come: the
    first stage's ``queued_at`` empty), oldest first, as they have free places, counting the
    queued runs whose start is already on its way. Each is taken by compare-and-set on its
    ``queued_at``, so two callers never start the same run twice."""
    queued = StageRun.objects.filter(
        run__project__owner_id=owner_id,
        run__status=PipelineRun.Status.QUEUED,
        stage=Stage.ARCHITECT,
        status=StageRun.Status.PENDING,
    )
    room = None  # without a cap (set to 0 while runs were parked), every parked run starts
    if settings.RUNS_PER_PERSON:
        running = PipelineRun.objects.filter(project__owner_id=owner_id, status=PipelineRun.Status.RUNNING).count()
        room = settings.RUNS_PER_PERSON - running - queued.filter(queued_at__isnull=False).count()
        if room <= 0:
            return []
    started = []
    now = timezone.now()
    for row_id, run_id in (
        queued.filter(queued_at__isnull=True).order_by("run__created_at", "run_id").values_list("id", "run_id")[:room]
    ):
        if StageRun.objects.filter(id=row_id, queued_at__isnull=True).update(queued_at=now):
            _send_start(run_id)
            started.append(run_id)
    return started


def runs_start_parked() -> list[int]:
    """The reconciler's half of fairness: a person with parked runs and free places (the start
    sent when a place freed was lost, or a run of theirs was deleted) gets them started."""
    owners = (
        StageRun.objects.filter(
            run__status=PipelineRun.Status.QUEUED,
            stage=Stage.ARCHITECT,
            status=StageRun.Status.PENDING,
            queued_at__isnull=True,
        )
        .values_list("run__project__owner_id", flat=True)
        .distinct()
    )
    started = []
    for owner_id in list(owners):
        started += _start_queued_of(owner_id)
    return started


def queued_ahead(*, run: PipelineRun) -> int:
    """How many of this person's runs are queued or running ahead of this one (for priority:
    a person with many runs waiting does not hold back another person's first one)."""
    return PipelineRun.objects.filter(
        project__owner_id=run.project.owner_id,
        status__in=(PipelineRun.Status.QUEUED, PipelineRun.Status.RUNNING),
        id__lt=run.id,
    ).count()


def stage_heartbeat(*, stage_run_id: int, attempt: int) -> bool:
    """Prove the claim is alive. False when the claim was lost."""
    return bool(
        StageRun.objects.filter(id=stage_run_id, attempt=attempt, status=StageRun.Status.RUNNING).update(
            heartbeat_at=timezone.now()
        )
    )


def _mark_next_queued(row: StageRun, now) -> None:
    """The stage after ``row`` (in the run's current iteration) is now due: one UPDATE."""
    position = STAGE_ORDER.index(row.stage)
    if position + 1 == len(STAGE_ORDER):
        return
    nxt = STAGE_ORDER[position + 1]
    due = StageRun.objects.filter(run_id=row.run_id, stage=nxt, status=StageRun.Status.PENDING)
    if nxt in ITERATED_STAGES:
        due = due.filter(iteration=F("run__iteration"))
    due.update(queued_at=now)


def stage_succeed(*, stage_run_id: int, attempt: int, output: dict[str, Any], claimed: StageRun | None = None) -> bool:
    """The claimed stage succeeded. ``claimed`` is the row as ``stage_claim`` returned it (its
    run, stage, iteration and start are fixed while the claim holds), which saves reading it
    again (and on PostgreSQL makes the record one statement)."""
    if claimed is not None and (claimed.id, claimed.attempt) != (stage_run_id, attempt):
        raise ValueError("claimed is not the row of this claim")
    now = timezone.now()
    if claimed is not None and sql.postgresql():
        return _succeed_in_one_statement(claimed, output, now)
    with transaction.atomic():
        if not _fenced(stage_run_id, attempt, status=StageRun.Status.SUCCEEDED, output=output, finished_at=now):
            return False
        if claimed is not None:
            claimed.status, claimed.output, claimed.finished_at = StageRun.Status.SUCCEEDED, output, now
        row = claimed if claimed is not None else StageRun.objects.get(id=stage_run_id)
        _mark_next_queued(row, now)
        seconds = (now - row.started_at).total_seconds() if row.started_at else None
        event_record(
            run_id=row.run_id,
            type=RunEvent.Type.STAGE_SUCCEEDED,
            stage=row.stage,
            payload={"iteration": row.iteration, "seconds": seconds},
        )
    return True


@functools.cache
def _succeed_sql() -> str:
    stages, S = StageRun._meta.db_table, StageRun.Status
    return f"""
WITH done AS (
    UPDATE {stages} SET status = '{S.SUCCEEDED}', output = %(output)s::jsonb, finished_at = %(now)s::timestamptz
    WHERE id = %(id)s::bigint AND attempt = %(attempt)s::integer AND status = '{S.RUNNING}'
    RETURNING run_id
), due AS (
    UPDATE {stages} n SET queued_at = %(now)s::timestamptz FROM done, {PipelineRun._meta.db_table} r
    WHERE r.id = done.run_id AND n.run_id = done.run_id AND n.stage = %(next)s::text
      AND n.status = '{S.PENDING}' AND (NOT %(iterated)s::boolean OR n.iteration = r.iteration)
), event AS (
    INSERT INTO {RunEvent._meta.db_table} (run_id, type, stage, payload, created_at)
    SELECT run_id, '{RunEvent.Type.STAGE_SUCCEEDED}', %(stage)s::text, %(payload)s::jsonb, %(now)s::timestamptz
    FROM done
    RETURNING id
)
SELECT id FROM event
"""


def _succeed_in_one_statement(claimed: StageRun, output: dict[str, Any], now) -> bool:
    """PostgreSQL: ``stage_succeed`` in one statement: the fenced write, the next stage's due
    time (as ``_mark_next_queued``) and the ``stage.succeeded`` event, or nothing at all when the
    claim was lost."""
    position = STAGE_ORDER.index(claimed.stage)
    nxt = STAGE_ORDER[position + 1] if position + 1 < len(STAGE_ORDER) else ""
    seconds = (now - claimed.started_at).total_seconds() if claimed.started_at else None
    payload = {"iteration": claimed.iteration, "seconds": seconds}
    row = sql.fetchone_prepared(
        _succeed_sql(),
        {
            "id": claimed.id,
            "attempt": claimed.attempt,
            "output": None if output is None else json.dumps(output),
            "now": now,
            "next": nxt,
            "iterated": nxt in ITERATED_STAGES,
            "stage": claimed.stage,
            "payload": json.dumps(payload),
        },
    )
    if row is None:
        log.warning("stage_claim_lost", stage_run_id=claimed.id, attempt=claimed.attempt)
        return False
    claimed.status, claimed.output, claimed.finished_at = StageRun.Status.SUCCEEDED, output, now
    event_inserted(
        RunEvent(
            id=row[0],
            run_id=claimed.run_id,
            type=RunEvent.Type.STAGE_SUCCEEDED,
            stage=claimed.stage,
            payload=payload,
            created_at=now,
        )
    )
    return True


@transaction.atomic
def stage_fail(
    *,
    stage_run_id: int,
    attempt: int,
    code: str,
    message: str,
    output: dict[str, Any] | None = None,
    fail_run: bool = True,
) -> bool:
    """The stage failed; unless told otherwise, the run fails with the stage's reason."""
    now = timezone.now()
    if not _fenced(stage_run_id, attempt, status=StageRun.Status.FAILED, output=output, error=message, finished_at=now):
        return False
    row = StageRun.objects.get(id=stage_run_id)
    event_record(
        run_id=row.run_id,
        type=RunEvent.Type.STAGE_FAILED,
        stage=row.stage,
        payload={"iteration": row.iteration, "code": code, "message": message[:2000]},
    )
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
def stage_loop_back(
    *, stage_run_id: int, attempt: int, output: dict[str, Any], message: str, announce: bool = True
) -> bool:
    """The Tester (or the Deployer's health check) found failures: close this row and open the
    next iteration of Developer and Tester, in one step.

    ``announce=False`` when a person is asked instead of going on at once (the event then says
    the next iteration waits for them)."""
    now = timezone.now()
    stage = StageRun.objects.filter(id=stage_run_id).values_list("stage", flat=True).first()
    if stage == Stage.DEPLOYER:
        # The release failed its checks: the Deployer runs again once the next iteration's tests pass.
        closed = _fenced(
            stage_run_id,
            attempt,
            status=StageRun.Status.PENDING,
            output=output,
            error=message,
            started_at=None,
            queued_at=None,
        )
    else:
        closed = _fenced(
            stage_run_id, attempt, status=StageRun.Status.FAILED, output=output, error=message, finished_at=now
        )
    if not closed:
        return False
    row = StageRun.objects.select_related("run").get(id=stage_run_id)
    nxt = row.run.iteration + 1
    PipelineRun.objects.filter(id=row.run_id, iteration=row.run.iteration).update(iteration=nxt)
    for iterated in ITERATED_STAGES:
        StageRun.objects.get_or_create(
            run_id=row.run_id,
            stage=iterated,
            iteration=nxt,
            defaults={"queued_at": now if iterated == Stage.DEVELOPER else None},
        )
    event_record(
        run_id=row.run_id,
        type=RunEvent.Type.TESTS_FAILED,
        stage=row.stage,
        payload={
            "iteration": nxt - 1,
            "next_iteration": nxt,
            "message": message[:2000],
            "waits_for_person": not announce,
        },
    )
    return True


# --- waiting for a person -------------------------------------------------------------
@transaction.atomic
def run_wait_for_human(*, run_id: int, stage_run_id: int | None = None, attempt: int | None = None) -> bool:
    """The run stops until a person answers. With ``stage_run_id``, that claimed stage is given
    back (pending, fenced by ``attempt``) so the answer resumes it; False if the claim was lost."""
    if stage_run_id is not None and not _fenced(
        stage_run_id, attempt, status=StageRun.Status.PENDING, started_at=None, queued_at=None
    ):
        return False
    if PipelineRun.objects.filter(id=run_id, status=PipelineRun.Status.RUNNING).update(
        status=PipelineRun.Status.WAITING_HUMAN
    ):
        _start_next_queued(run_id)  # a run waiting for a person does not hold its person's place
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
        status=PipelineRun.Status.CANCELLED,
        error_code="cancelled",
        error_message=f"Cancelled by {who}.",
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
    candidates = (
        StageRun.objects.select_related("run")
        .filter(status__in=[StageRun.Status.RUNNING, StageRun.Status.PENDING])
        .exclude(run__status__in=[PipelineRun.Status.WAITING_HUMAN])
    )
    for row in candidates.filter(status=StageRun.Status.RUNNING, heartbeat_at__lt=stale_before):
        with transaction.atomic():
            if StageRun.objects.filter(
                id=row.id, status=StageRun.Status.RUNNING, attempt=row.attempt, heartbeat_at__lt=stale_before
            ).update(status=StageRun.Status.PENDING, queued_at=now):
                event_record(
                    run_id=row.run_id,
                    type=RunEvent.Type.STAGE_REQUEUED,
                    stage=row.stage,
                    payload={"reason": "worker_lost", "attempt": row.attempt},
                )
                found.append(Requeue(row.run_id, row.stage, "worker_lost"))
    pending = candidates.filter(status=StageRun.Status.PENDING, queued_at__lt=pickup_before)
    for row in pending.select_related("run__project").order_by("run__created_at", "run_id"):
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
            queued_at=now
        ):
            event_record(
                run_id=row.run_id,
                type=RunEvent.Type.STAGE_REQUEUED,
                stage=row.stage,
                payload={"reason": "message_lost"},
            )
            found.append(Requeue(row.run_id, row.stage, "message_lost"))
    return found
