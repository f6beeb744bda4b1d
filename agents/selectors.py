"""Reads over the ledger and worker sessions."""

from __future__ import annotations

from dataclasses import dataclass

from django.db.models import Q, Sum

from agents.models import Escalation, Usage, WorkerSession
from projects.models import PipelineRun


@dataclass(frozen=True)
class Spend:
    run: float
    project: float
    stage: float


def spend(*, run_id: int, project_id: int, stage_run_id: int) -> Spend:
    """Dollars spent so far by a run, its project and one stage run, in one query."""
    totals = Usage.objects.filter(project_id=project_id).aggregate(
        project=Sum("cost_usd"),
        run=Sum("cost_usd", filter=Q(stage_run__run_id=run_id)),
        stage=Sum("cost_usd", filter=Q(stage_run_id=stage_run_id)),
    )
    return Spend(**{k: float(v or 0) for k, v in totals.items()})


def latest_guidance(*, run_id: int) -> str | None:
    """The newest guidance a person gave this run's agents, if any."""
    return (
        Escalation.objects.filter(run_id=run_id, status=Escalation.Status.ANSWERED, action="guidance")
        .exclude(answer="")
        .order_by("-answered_at")
        .values_list("answer", flat=True)
        .first()
    )


def escalation_for_reply(*, telegram_message_id: int, user_id: int):
    """The person's open question a Telegram message replied to.

    Found through the OutboundMessage that carried the question: the one with that Telegram
    message id sent to this person's account (message ids are per chat), in one query.
    """
    return (
        Escalation.objects.select_related("run__project")
        .filter(
            outbound_messages__telegram_message_id=telegram_message_id,
            outbound_messages__account__user_id=user_id,
            run__project__owner_id=user_id,
            status=Escalation.Status.OPEN,
        )
        .first()
    )


def open_escalation_for_user(*, user_id: int):
    """The newest open question on any of this person's runs."""
    return (
        Escalation.objects.select_related("run__project")
        .filter(run__project__owner_id=user_id, status=Escalation.Status.OPEN)
        .order_by("-created_at")
        .first()
    )


def reclaimable_session(*, for_project_id: int) -> WorkerSession | None:
    """The paused worker to end when the worker quota is full, so finished work never blocks
    new work: the least recently used one whose run has ended (or that serves no run); failing
    that, a paused worker of the asking project's other role (its Developer's worker while its
    Tester needs one: the run goes on rather than waiting for itself)."""
    paused = WorkerSession.objects.filter(state=WorkerSession.State.PAUSED).order_by("last_activity_at", "id")
    finished = paused.filter(Q(run__isnull=True) | Q(run__status__in=PipelineRun.FINISHED)).first()
    return finished or paused.filter(project_id=for_project_id).first()
