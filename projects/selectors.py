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


# --- plain rows for the read-only API responses ------------------------------------------------
# projects/api.py renders these dicts itself: no model instances, no serializer fields per row.
RUN_SUMMARY_FIELDS = (
    "id",
    "project_id",
    "kind",
    "status",
    "current_stage",
    "iteration",
    "max_iterations",
    "cost_usd",
    "error_code",
    "error_message",
    "result_message",
    "created_at",
    "started_at",
    "finished_at",
)
PROJECT_FIELDS = ("id", "name", "slug", "kind", "description", "spec", "created_at")
STAGE_FIELDS = ("id", "stage", "iteration", "status", "attempt", "started_at", "finished_at", "error", "output")
EVENT_FIELDS = ("id", "type", "stage", "payload", "created_at")


def project_rows(user) -> QuerySet[dict]:
    """Visible projects as dicts of PROJECT_FIELDS with ``total_cost_usd``, ``latest_run_id`` and
    ``live_url`` (each one correlated subquery): one query for a page of any size."""
    money = DecimalField(max_digits=14, decimal_places=6)
    run_costs = (
        PipelineRun.objects.filter(project=OuterRef("pk"))
        .order_by()
        .values("project")
        .annotate(total=Sum("cost_usd"))
        .values("total")
    )
    latest_run = PipelineRun.objects.filter(project=OuterRef("pk")).order_by("-id").values("id")[:1]
    live_url = Deployment.objects.filter(project=OuterRef("pk"), status=Deployment.Status.LIVE).values("url")[:1]
    return projects_visible_to(user).values(
        *PROJECT_FIELDS,
        total_cost_usd=Coalesce(Subquery(run_costs, output_field=money), Value(Decimal(0)), output_field=money),
        latest_run_id=Subquery(latest_run),
        live_url=Subquery(live_url),
    )


def run_summary_rows(run_ids) -> dict[int, dict]:
    """The runs of these ids as dicts of RUN_SUMMARY_FIELDS, by id (one query)."""
    ids = [i for i in run_ids if i is not None]
    if not ids:
        return {}
    return {row["id"]: row for row in PipelineRun.objects.filter(id__in=ids).order_by().values(*RUN_SUMMARY_FIELDS)}


def run_summaries_visible_to(user) -> QuerySet[dict]:
    """Visible runs as dicts of RUN_SUMMARY_FIELDS, newest first."""
    return runs_visible_to(user).select_related(None).values(*RUN_SUMMARY_FIELDS)


def run_detail_rows(user, run_id) -> tuple[dict, list[dict], list[dict]] | None:
    """A visible run as a dict of RUN_SUMMARY_FIELDS, its stages (STAGE_FIELDS and
    ``usage_cost_usd``, the sum of its usage) and its events (EVENT_FIELDS): three queries, or
    None if the caller may not see it."""
    run = runs_visible_to(user).select_related(None).filter(id=run_id).values(*RUN_SUMMARY_FIELDS).first()
    if run is None:
        return None
    money = DecimalField(max_digits=14, decimal_places=6)
    stages = list(
        StageRun.objects.filter(run_id=run["id"])
        .order_by("id")
        .annotate(usage_cost_usd=Coalesce(Sum("usage__cost_usd"), Value(Decimal(0)), output_field=money))
        .values(*STAGE_FIELDS, "usage_cost_usd")
    )
    events = list(RunEvent.objects.filter(run_id=run["id"]).order_by("id").values(*EVENT_FIELDS))
    return run, stages, events


def live_routes() -> list[tuple[str, int]]:
    """(slug, internal port) of every live web release: what the proxy must route by name."""
    return list(
        Deployment.objects.filter(status=Deployment.Status.LIVE, project__kind="web_service")
        .exclude(project__slug=None)
        .order_by("project__slug")
        .values_list("project__slug", "port")
    )
