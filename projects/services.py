"""State changes of projects and runs. Every function here is the only way to make its change.

Stage bookkeeping follows one rule: a stage task *claims* its StageRun by compare-and-set, and
every later write about that claim is fenced by the claim's ``attempt`` number, so a task that
lost its claim (the reconciler gave the stage to another worker) cannot overwrite anything.
"""
from __future__ import annotations

import enum
import socket
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import structlog
from celery import current_app
from django.conf import settings
from django.db import IntegrityError, transaction
from django.db.models import F
from django.utils import timezone

from config.errors import Conflict, NotFound, ValidationFailed
from projects import events, notifications
from projects.models import Deployment, PipelineRun, Project, RunEvent, Stage, StageRun
from projects.specs import ProjectSpec

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


# --- events ---------------------------------------------------------------------------
def event_record(*, run_id: int, type: str, stage: str = "", payload: dict[str, Any] | None = None) -> RunEvent:
    """Store a typed event; once committed, publish it on ``run:<id>`` and tell the person."""
    event = RunEvent.objects.create(run_id=run_id, type=type, stage=stage, payload=payload or {})
    log.info("run_event", run_id=run_id, type=type, stage=stage or None, payload=payload or {})
    transaction.on_commit(lambda: events.publish(
        run_id=run_id, event_id=event.id, type=str(type), stage=str(stage), payload=event.payload,
        created_at=event.created_at.isoformat(),
    ))
    transaction.on_commit(lambda: notifications.run_event_notify(event.id), robust=True)
    return event


# --- people ---------------------------------------------------------------------------
def person_ensure(*, username: str):
    """A local user by name (the demo's person); created without a usable password."""
    from django.contrib.auth import get_user_model

    user, created = get_user_model().objects.get_or_create(username=username)
    if created:
        user.set_unusable_password()
        user.save(update_fields=["password"])
    return user


# --- projects and runs ----------------------------------------------------------------
def _clean_description(description: Any) -> str:
    if not isinstance(description, str) or not description.strip():
        raise ValidationFailed("Describe the service you want, e.g. 'a web service that greets people by name'.",
                               code="description_required")
    text = description.strip()
    limit = settings.PROJECT_DESCRIPTION_MAX_CHARS
    if len(text) > limit:
        raise ValidationFailed(
            f"The description is {len(text)} characters long; the limit is {limit}.",
            code="description_too_long",
            extra={"length": len(text), "limit": limit},
        )
    return text


@transaction.atomic
def project_create(*, owner, description: str) -> tuple[Project, PipelineRun]:
    """Create a project from a description and start its first run."""
    text = _clean_description(description)
    project = Project.objects.create(owner=owner, description=text)
    run = run_create(project=project, kind=PipelineRun.Kind.CREATE)
    return project, run


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
    transaction.on_commit(lambda: current_app.send_task("pipeline.start", kwargs={"run_id": run.id}))
    return run


@transaction.atomic
def project_set_spec(*, project_id: int, spec: ProjectSpec) -> Project:
    """Record the Architect's spec; the slug is made unique by a numeric suffix if taken."""
    project = Project.objects.select_for_update().get(id=project_id)
    if project.slug:  # a rerun of the Architect keeps the slug it was given
        slug = project.slug
    else:
        slug, n = spec.slug, 1
        while Project.objects.filter(slug=slug).exclude(id=project_id).exists():
            n += 1
            slug = f"{spec.slug[:36]}-{n}"
    project.name, project.slug, project.kind = spec.name, slug, spec.kind
    project.spec = spec.model_dump(mode="json") | {"slug": slug}
    project.save(update_fields=["name", "slug", "kind", "spec", "updated_at"])
    return project


@transaction.atomic
def project_set_repo(*, project_id: int, repo_url: str) -> None:
    Project.objects.filter(id=project_id).update(repo_url=repo_url, updated_at=timezone.now())


# --- stage claims ---------------------------------------------------------------------
class ClaimState(enum.Enum):
    CLAIMED = "claimed"  # this task now owns the stage
    DONE = "done"  # already finished: the chain may go on
    BUSY = "busy"  # another task owns it, or an earlier stage is unfinished: stop this chain


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


def stage_claim(*, run_id: int, stage: str, task_id: str) -> Claim:
    run = PipelineRun.objects.get(id=run_id)
    rows = current_stage_runs(run)
    row = next(r for r in rows if r.stage == stage)
    if run.is_finished and stage != Stage.NOTIFY:
        stage_skip(stage_run_id=row.id)  # the run ended before reaching this stage
        return Claim(ClaimState.DONE, row, run)
    if row.status in (StageRun.Status.SUCCEEDED, StageRun.Status.FAILED, StageRun.Status.SKIPPED):
        return Claim(ClaimState.DONE, row, run)
    if row.status == StageRun.Status.RUNNING or run.status == PipelineRun.Status.WAITING_HUMAN:
        return Claim(ClaimState.BUSY, row, run)  # owned by another task, or waiting for a person
    earlier = rows[: rows.index(row)] if not run.is_finished else []
    if any(r.status not in (StageRun.Status.SUCCEEDED, StageRun.Status.SKIPPED) for r in earlier):
        return Claim(ClaimState.BUSY, row, run)
    now = timezone.now()
    with transaction.atomic():
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
    done = StageRun.objects.filter(id=stage_run_id, attempt=attempt, status=StageRun.Status.RUNNING).update(
        status=StageRun.Status.SUCCEEDED, output=output, finished_at=now
    )
    if not done:
        log.warning("stage_claim_lost", stage_run_id=stage_run_id, attempt=attempt)
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
    done = StageRun.objects.filter(id=stage_run_id, attempt=attempt, status=StageRun.Status.RUNNING).update(
        status=StageRun.Status.FAILED, output=output, error=message, finished_at=now
    )
    if not done:
        log.warning("stage_claim_lost", stage_run_id=stage_run_id, attempt=attempt)
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
def stage_release(*, stage_run_id: int, attempt: int, reason: str) -> bool:
    """Give a claim back untouched (the stage could not start yet); it will be claimed again."""
    done = StageRun.objects.filter(id=stage_run_id, attempt=attempt, status=StageRun.Status.RUNNING).update(
        status=StageRun.Status.PENDING, queued_at=timezone.now(), started_at=None
    )
    if done:
        row = StageRun.objects.get(id=stage_run_id)
        event_record(run_id=row.run_id, type=RunEvent.Type.STAGE_WAITING, stage=row.stage, payload={"reason": reason})
    return bool(done)


def stage_skip(*, stage_run_id: int) -> None:
    """A stage of a run that already ended: nothing to do."""
    StageRun.objects.filter(id=stage_run_id, status=StageRun.Status.PENDING).update(
        status=StageRun.Status.SKIPPED, finished_at=timezone.now()
    )


@transaction.atomic
def stage_loop_back(*, stage_run_id: int, attempt: int, output: dict[str, Any], message: str) -> bool:
    """The Tester found failures: close its row and open the next iteration, in one step."""
    now = timezone.now()
    done = StageRun.objects.filter(id=stage_run_id, attempt=attempt, status=StageRun.Status.RUNNING).update(
        status=StageRun.Status.FAILED, output=output, error=message, finished_at=now
    )
    if not done:
        log.warning("stage_claim_lost", stage_run_id=stage_run_id, attempt=attempt)
        return False
    row = StageRun.objects.get(id=stage_run_id)
    nxt = row.iteration + 1
    PipelineRun.objects.filter(id=row.run_id, iteration=row.iteration).update(iteration=nxt)
    for stage in ITERATED_STAGES:
        StageRun.objects.get_or_create(run_id=row.run_id, stage=stage, iteration=nxt,
                                       defaults={"queued_at": now if stage == Stage.DEVELOPER else None})
    event_record(run_id=row.run_id, type=RunEvent.Type.TESTS_FAILED, stage=row.stage,
                 payload={"iteration": row.iteration, "next_iteration": nxt, "message": message[:2000]})
    return True


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
    _enqueue_notify(run.id)
    run.refresh_from_db()
    return run


def _enqueue_notify(run_id: int) -> None:
    """Deliver the final message of a run that ended outside its chain (cancelled, expired)."""
    StageRun.objects.filter(run_id=run_id, stage=Stage.NOTIFY, status=StageRun.Status.PENDING).update(
        queued_at=timezone.now()
    )
    transaction.on_commit(lambda: current_app.send_task("pipeline.start", kwargs={"run_id": run_id}))


@transaction.atomic
def run_fail(*, run_id: int, code: str, message: str) -> None:
    updated = PipelineRun.objects.filter(id=run_id, status__in=PipelineRun.ACTIVE).update(
        status=PipelineRun.Status.FAILED, error_code=code, error_message=message, finished_at=timezone.now()
    )
    if updated:
        event_record(run_id=run_id, type=RunEvent.Type.RUN_FAILED, payload={"code": code, "message": message[:2000]})


@transaction.atomic
def run_succeed(*, run_id: int, result_message: str) -> bool:
    updated = PipelineRun.objects.filter(id=run_id, status=PipelineRun.Status.RUNNING).update(
        status=PipelineRun.Status.SUCCEEDED, result_message=result_message, finished_at=timezone.now()
    )
    if updated:
        event_record(run_id=run_id, type=RunEvent.Type.RUN_SUCCEEDED, payload={"message": result_message})
    return bool(updated)


@transaction.atomic
def run_set_result_message(*, run_id: int, message: str) -> None:
    PipelineRun.objects.filter(id=run_id).update(result_message=message)



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
        if StageRun.objects.filter(id=row.id, status=StageRun.Status.PENDING, queued_at=row.queued_at).update(queued_at=now):
            event_record(run_id=row.run_id, type=RunEvent.Type.STAGE_REQUEUED, stage=row.stage,
                         payload={"reason": "message_lost"})
            found.append(Requeue(row.run_id, row.stage, "message_lost"))
    return found


# --- deployments ----------------------------------------------------------------------
def _port_bindable(port: int) -> bool:
    """Is the candidate port free on this host? (Something outside the factory may hold it.)"""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        try:
            sock.bind((settings.DEPLOY_HOST, port))
        except OSError:
            return False
    return True


def deployment_allocate(*, project_id: int, run_id: int, commit_sha: str) -> Deployment:
    """Create the run's deployment with a free internal port, or return the one it has.

    The port is taken by inserting the row: a unique constraint over the ports of deployments
    that hold one makes two concurrent deploys unable to take the same port.
    """
    existing = Deployment.objects.filter(run_id=run_id).first()
    if existing is not None:
        return existing
    for _ in range(50):
        taken = set(Deployment.objects.filter(status__in=Deployment.HOLDS_PORT).values_list("port", flat=True))
        port = next((p for p in range(settings.DEPLOY_PORT_MIN, settings.DEPLOY_PORT_MAX + 1)
                     if p not in taken and _port_bindable(p)), None)
        if port is None:
            raise Conflict("Every deploy port is in use.", code="no_free_port")
        try:
            with transaction.atomic():
                return Deployment.objects.create(project_id=project_id, run_id=run_id, port=port, commit_sha=commit_sha)
        except IntegrityError:
            existing = Deployment.objects.filter(run_id=run_id).first()
            if existing is not None:
                return existing
    raise Conflict("Could not allocate a deploy port; too many deploys at once.", code="no_free_port")


def deployment_started(*, deployment_id: int, pid: int, release_dir: str) -> None:
    Deployment.objects.filter(id=deployment_id).update(pid=pid, release_dir=release_dir)


@transaction.atomic
def deployment_go_live(*, deployment_id: int, url: str) -> list[Deployment]:
    """Make this release the project's live one; return the releases it replaces (to be stopped)."""
    new = Deployment.objects.select_for_update().get(id=deployment_id)
    previous = list(
        Deployment.objects.select_for_update()
        .filter(project_id=new.project_id, status=Deployment.Status.LIVE)
        .exclude(id=new.id)
    )
    Deployment.objects.filter(id__in=[d.id for d in previous]).update(status=Deployment.Status.STOPPING)
    Deployment.objects.filter(id=new.id).update(status=Deployment.Status.LIVE, url=url, live_at=timezone.now())
    event_record(run_id=new.run_id, type=RunEvent.Type.DEPLOYED, stage=Stage.DEPLOYER,
                 payload={"deployment_id": new.id, "url": url, "replaces": [d.id for d in previous]})
    return previous


def deployment_fail(*, deployment_id: int, error: str) -> None:
    Deployment.objects.filter(id=deployment_id).update(
        status=Deployment.Status.FAILED, error=error[:4000], stopped_at=timezone.now()
    )


def deployment_stopped(*, deployment_id: int) -> None:
    Deployment.objects.filter(id=deployment_id).update(status=Deployment.Status.STOPPED, stopped_at=timezone.now())
