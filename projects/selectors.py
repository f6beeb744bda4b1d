"""Reads. The only place with non-trivial queries over projects and runs."""

from __future__ import annotations

from decimal import Decimal

from django.db.models import DecimalField, Exists, OuterRef, Prefetch, Q, QuerySet, Subquery, Sum, Value
from django.db.models.functions import Coalesce

from projects.models import Deployment, PipelineRun, Project, RunEvent, StageRun


def projects_visible_to(user) -> QuerySet[Project]:
    qs = Project.objects.select_related("owner")
    return qs if user.is_staff else qs.filter(owner=user)


def project_list_queryset(user) -> QuerySet[Project]:
    """Visible projects with what their summary shows, in the same number of queries for any count.

    Each project carries ``total_cost_usd`` (the sum over its runs), ``latest_runs`` (a list of at
    most its newest run) and ``live_deployments`` (a list of at most its live deployment).
    """
    money = DecimalField(max_digits=14, decimal_places=6)
    run_costs = (
        PipelineRun.objects.filter(project=OuterRef("pk"))
        .order_by()
        .values("project")
        .annotate(total=Sum("cost_usd"))
        .values("total")
    )
    # Not the owner: a summary does not show it (the join and the user objects cost more than the rows).
    return (
        projects_visible_to(user)
        .select_related(None)
        .annotate(
            total_cost_usd=Coalesce(Subquery(run_costs, output_field=money), Value(Decimal(0)), output_field=money),
        )
        .prefetch_related(
            Prefetch("runs", queryset=PipelineRun.objects.order_by("-id")[:1], to_attr="latest_runs"),
            Prefetch(
                "deployments",
                queryset=Deployment.objects.filter(status=Deployment.Status.LIVE),
                to_attr="live_deployments",
            ),
        )
    )


def runs_visible_to(user) -> QuerySet[PipelineRun]:
    qs = PipelineRun.objects.select_related("project")
    return qs if user.is_staff else qs.filter(project__owner=user)


def run_detail_queryset(user) -> QuerySet[PipelineRun]:
    """Visible runs with their stages (each with ``usage_cost_usd``, the sum of its usage) and events."""
    money = DecimalField(max_digits=14, decimal_places=6)
    stages = StageRun.objects.order_by("id").annotate(
        usage_cost_usd=Coalesce(Sum("usage__cost_usd"), Value(Decimal(0)), output_field=money)
    )
    return runs_visible_to(user).prefetch_related(
        Prefetch("stages", queryset=stages),
        Prefetch("events", queryset=RunEvent.objects.order_by("id")),
    )


def live_deployment(*, project_id: int) -> Deployment | None:
    return Deployment.objects.filter(project_id=project_id, status=Deployment.Status.LIVE).first()


def project_cost(*, project_id: int):
    return PipelineRun.objects.filter(project_id=project_id).aggregate(total=Sum("cost_usd"))["total"] or 0


def run_events_after(*, run_id: int, after_id: int = 0) -> QuerySet[RunEvent]:
    return RunEvent.objects.filter(run_id=run_id, id__gt=after_id).order_by("id")


def run_is_settled(*, run_id: int) -> bool:
    """The run has finished and none of its stages is running or queued (Notify included): no
    event will be added to it. Every change that makes a run settled commits with its last event,
    so events read after this returned True are all the run will ever have."""
    busy = StageRun.objects.filter(run_id=OuterRef("pk")).filter(
        Q(status=StageRun.Status.RUNNING) | Q(status=StageRun.Status.PENDING, queued_at__isnull=False)
    )
    return PipelineRun.objects.filter(id=run_id, status__in=PipelineRun.FINISHED).exclude(Exists(busy)).exists()
