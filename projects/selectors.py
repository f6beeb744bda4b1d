"""Reads. The only place with non-trivial queries over projects and runs."""
from __future__ import annotations

from django.db.models import Prefetch, QuerySet, Sum

from projects.models import Deployment, PipelineRun, Project, RunEvent, StageRun


def projects_visible_to(user) -> QuerySet[Project]:
    qs = Project.objects.select_related("owner")
    return qs if user.is_staff else qs.filter(owner=user)


def runs_visible_to(user) -> QuerySet[PipelineRun]:
    qs = PipelineRun.objects.select_related("project")
    return qs if user.is_staff else qs.filter(project__owner=user)


def run_detail_queryset(user) -> QuerySet[PipelineRun]:
    return runs_visible_to(user).prefetch_related(
        Prefetch("stages", queryset=StageRun.objects.order_by("id")),
        Prefetch("events", queryset=RunEvent.objects.order_by("id")),
    )


def live_deployment(*, project_id: int) -> Deployment | None:
    return Deployment.objects.filter(project_id=project_id, status=Deployment.Status.LIVE).first()


def project_cost(*, project_id: int):
    return PipelineRun.objects.filter(project_id=project_id).aggregate(total=Sum("cost_usd"))["total"] or 0


def run_events_after(*, run_id: int, after_id: int = 0) -> QuerySet[RunEvent]:
    return RunEvent.objects.filter(run_id=run_id, id__gt=after_id).order_by("id")
