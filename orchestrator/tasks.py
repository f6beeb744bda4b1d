"""Celery tasks: thin adapters with stable names (``config.task_names``). Each calls one service
and maps its outcome."""

from __future__ import annotations

import structlog
from celery import shared_task
from celery.exceptions import Ignore
from django.conf import settings

from agents import services as agent_services
from config import task_names as names
from orchestrator import maintenance, pipeline, releases, workers
from orchestrator.stages import Next
from orchestrator.telegram import delivery
from projects import notifications, runs
from projects.models import Stage

log = structlog.get_logger(__name__)

STAGE_TASK = dict(
    bind=True,
    acks_late=True,
    # Waiting for a worker (or a person's turn) is not failing: Celery does not count retries;
    # transient failures are counted on the StageRun (``transient_failures``).
    max_retries=None,
    ignore_result=True,
    soft_time_limit=settings.STAGE_SOFT_TIME_LIMIT,
    time_limit=settings.STAGE_TIME_LIMIT,
)


def _run_stage(task, stage: str, run_id: int) -> None:
    outcome, wait = pipeline.execute_step(stage=stage, run_id=run_id, task_id=task.request.id or "")
    if outcome is None:
        # Another task owns this stage (or an earlier one): that task's chain goes on, not ours.
        # Ignore ends this task without success, so Celery does not apply the rest of the chain.
        raise Ignore()
    if outcome is Next.WAIT:
        # Over the worker quota, or an outside service hiccuped: retry later, never sleep (after
        # the service's own Retry-After when it gave one, capped by STAGE_RETRY_MAX_SECONDS).
        raise task.retry(countdown=wait)
    if outcome is Next.CONTINUE and not task.request.chain and stage != Stage.NOTIFY:
        # Sent alone (a new run's first stage): the rest of the run's chain follows now.
        pipeline.chain_from(run_id, pipeline.next_stage(stage)).apply_async()
        return
    if outcome is Next.LOOP:
        # Back to the Developer; the rest of this chain follows the new iteration. A Tester is
        # replaced by developer → tester; a Deployer whose release failed by developer → tester
        # → deployer.
        raise task.replace(pipeline.chain_from(run_id, Stage.DEVELOPER, until=stage))


@shared_task(name=names.PIPELINE_START, acks_late=True, ignore_result=True, soft_time_limit=30, time_limit=60)
def start(run_id: int) -> None:
    pipeline.start(run_id=run_id)


@shared_task(name=names.PIPELINE_ARCHITECT, **STAGE_TASK)
def architect(self, run_id: int) -> None:
    _run_stage(self, Stage.ARCHITECT, run_id)


@shared_task(name=names.PIPELINE_PREPARER, **STAGE_TASK)
def preparer(self, run_id: int) -> None:
    _run_stage(self, Stage.PREPARER, run_id)


@shared_task(name=names.PIPELINE_DEVELOPER, **STAGE_TASK)
def developer(self, run_id: int) -> None:
    _run_stage(self, Stage.DEVELOPER, run_id)


@shared_task(name=names.PIPELINE_TESTER, **STAGE_TASK)
def tester(self, run_id: int) -> None:
    _run_stage(self, Stage.TESTER, run_id)


@shared_task(name=names.PIPELINE_DEPLOYER, **STAGE_TASK)
def deployer(self, run_id: int) -> None:
    _run_stage(self, Stage.DEPLOYER, run_id)


@shared_task(name=names.PIPELINE_NOTIFY, **STAGE_TASK)
def notify(self, run_id: int) -> None:
    _run_stage(self, Stage.NOTIFY, run_id)


@shared_task(name=names.RECONCILE_RUNS, acks_late=True, ignore_result=True, soft_time_limit=60, time_limit=90)
def reconcile_runs() -> int:
    """Re-enqueue every run whose current stage lost its message or its worker."""
    requeued = runs.runs_requeue_stuck()
    for item in requeued:
        log.info("run_requeued", run_id=item.run_id, stage=item.stage, reason=item.reason)
        pipeline.chain_from(item.run_id, item.stage).apply_async()
    started = runs.runs_start_parked()  # queued runs whose person has a free place
    if started:
        log.info("parked_runs_started", run_ids=started)
    return len(requeued) + len(started)


SWEEP_TASK = dict(acks_late=True, ignore_result=True, soft_time_limit=120, time_limit=180)
# A repair step starts a release and waits for its health (bounded by the health timeouts).
_REPAIR_LIMITS = dict(soft_time_limit=120, time_limit=180)


@shared_task(name=names.WORKERS_PAUSE_IDLE, **SWEEP_TASK)
def pause_idle() -> int:
    return maintenance.workers_pause_idle()


@shared_task(name=names.WORKERS_REAP, **SWEEP_TASK)
def reap() -> int:
    return maintenance.workers_reap().total()


@shared_task(name=names.RELEASES_PROBE, **SWEEP_TASK)
def probe_releases() -> dict:
    """Look at every live release; one found down opens an incident and starts its repair."""
    return releases.releases_probe()


@shared_task(
    name=names.RELEASES_REPAIR, bind=True, acks_late=True, ignore_result=True, max_retries=None, **_REPAIR_LIMITS
)
def repair_release(self, incident_id: int) -> None:
    """One repair step (restart, or roll back, or give up); waits between steps by retrying."""
    countdown = releases.release_repair(incident_id=incident_id)
    if countdown is not None:
        raise self.retry(countdown=countdown)


@shared_task(name=names.RELEASES_RECONCILE, **SWEEP_TASK)
def reconcile_releases() -> int:
    """Finish "stopping" releases, stop releases no live or starting row accounts for."""
    return maintenance.releases_reconcile().total()


@shared_task(name=names.ROUTES_SYNC, **SWEEP_TASK)
def sync_routes() -> int:
    return maintenance.routes_sync()


@shared_task(name=names.ESCALATIONS_EXPIRE, **SWEEP_TASK)
def expire_escalations() -> int:
    return maintenance.escalations_expire()


@shared_task(name=names.WORKERS_PAUSE_SESSION, **SWEEP_TASK)
def pause_session(session_id: int) -> None:
    workers.operator_action(session_id=session_id, action="pause")


@shared_task(name=names.WORKERS_RESUME_SESSION, **SWEEP_TASK)
def resume_session(session_id: int) -> None:
    workers.operator_action(session_id=session_id, action="resume")


@shared_task(name=names.WORKERS_TERMINATE_SESSION, **SWEEP_TASK)
def terminate_session(session_id: int) -> None:
    workers.operator_action(session_id=session_id, action="terminate")


@shared_task(
    name=names.NOTIFY_SEND_MESSAGE,
    bind=True,
    acks_late=True,
    ignore_result=True,
    soft_time_limit=delivery.TASK_SOFT_TIME_LIMIT,
    time_limit=delivery.TASK_TIME_LIMIT,
    max_retries=None,
)
def send_message(self, message_id: int) -> None:
    """Deliver an OutboundMessage's chat, in order; Telegram's rate limit and hiccups are waited
    out by retrying (countdown, never sleep).

    The retry budget is counted on the message row (``attempts``), not by Celery.
    """
    outcome = delivery.message_send(message_id=message_id)
    if outcome.retry_in is not None:
        raise self.retry(countdown=outcome.retry_in)


@shared_task(name=names.NOTIFY_REQUEUE_STALE, acks_late=True, ignore_result=True, soft_time_limit=60, time_limit=90)
def requeue_stale_messages() -> int:
    return len(
        notifications.messages_requeue_stale(
            older_than_seconds=settings.OUTBOUND_REQUEUE_SECONDS, sending_stale_seconds=delivery.SENDING_STALE_SECONDS
        )
    )


@shared_task(name=names.SECRETS_PROVIDED, acks_late=True, ignore_result=True, soft_time_limit=30, time_limit=60)
def secrets_provided(project_id: int) -> None:
    """A secret or a bot token arrived: a run waiting for it goes on (idempotent)."""
    agent_services.escalation_values_provided(project_id=project_id)
