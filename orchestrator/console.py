"""The operator's console: Django admin's site with an overview page and a link to Flower.

``FactoryAdminSite`` is the default admin site (``orchestrator.apps.FactoryAdminConfig`` in
INSTALLED_APPS), so every app's ``admin.py`` registers on it as usual. It adds
``/admin/overview/`` (the factory's state on one page: runs of the last 24 hours by status,
success rate, median time from description to live URL, cost per project and per day as a
chart, workers by state, open incidents and waiting questions, each linking to its rows) and
puts the overview and Flower (FLOWER_URL) on the index page.

Every figure is read from the tables when the page is asked for; charts are inline SVG drawn on
the server (projects/charts.py): nothing is fetched from the internet.
"""

from __future__ import annotations

import statistics
from dataclasses import dataclass, field
from datetime import timedelta
from decimal import Decimal
from urllib.parse import urlencode

from django.conf import settings
from django.contrib import admin
from django.db.models import Count, Min, Sum
from django.db.models.functions import TruncDate
from django.http import HttpResponse
from django.template.response import TemplateResponse
from django.urls import path, reverse
from django.utils import timezone
from django.views.decorators.http import require_safe

from agents.models import Escalation, Usage, WorkerSession
from projects import charts
from projects.models import Deployment, Incident, PipelineRun

WINDOW = timedelta(hours=24)
COST_DAYS = 14
COST_SERIES = 6  # projects drawn by name; the rest are summed as "other"


def changelist(model_name: str, **filters) -> str:
    url = reverse(f"admin:{model_name}_changelist")
    return f"{url}?{urlencode(filters)}" if filters else url


@dataclass
class Overview:
    since: object
    runs_by_status: list[charts.HBar] = field(default_factory=list)
    runs_total: int = 0
    finished: int = 0
    succeeded: int = 0
    success_rate: float | None = None
    median_to_live: float | None = None
    to_live_count: int = 0
    cost_chart: str = ""
    cost_by_project: list[dict] = field(default_factory=list)
    cost_window: Decimal = Decimal(0)
    workers_by_state: list[charts.HBar] = field(default_factory=list)
    incidents: list[Incident] = field(default_factory=list)
    escalations: list[Escalation] = field(default_factory=list)
    links: dict[str, str] = field(default_factory=dict)


def overview(now=None) -> Overview:
    now = now or timezone.now()
    since = now - WINDOW
    since_param = since.isoformat(timespec="seconds")
    data = Overview(since=since)

    # Runs created in the window, by status.
    counts = dict(
        PipelineRun.objects.filter(created_at__gte=since).order_by().values_list("status").annotate(n=Count("id"))
    )
    data.runs_by_status = [
        charts.HBar(
            label=str(label),
            value=counts.get(status, 0),
            status=status,
            href=changelist("projects_pipelinerun", status__exact=status, created_at__gte=since_param),
        )
        for status, label in PipelineRun.Status.choices
    ]
    data.runs_total = sum(counts.values())
    data.finished = sum(counts.get(s, 0) for s in PipelineRun.FINISHED)
    data.succeeded = counts.get(PipelineRun.Status.SUCCEEDED, 0)
    data.success_rate = data.succeeded / data.finished if data.finished else None

    # From description to live URL: a run's creation to the first release of it that went live.
    firsts = (
        Deployment.objects.filter(run__created_at__gte=since, live_at__isnull=False)
        .order_by()
        .values("run_id", "run__created_at")
        .annotate(first_live=Min("live_at"))
    )
    waits = [(row["first_live"] - row["run__created_at"]).total_seconds() for row in firsts]
    data.to_live_count = len(waits)
    data.median_to_live = statistics.median(waits) if waits else None

    # Cost per project and per day (the ledger), the last COST_DAYS days.
    start_day = (now - timedelta(days=COST_DAYS - 1)).date()
    per_day = (
        Usage.objects.filter(created_at__date__gte=start_day)
        .order_by()
        .annotate(day=TruncDate("created_at"))
        .values("day", "project_id", "project__name", "project__slug")
        .annotate(total=Sum("cost_usd"))
    )
    days = [start_day + timedelta(days=i) for i in range(COST_DAYS)]
    by_project: dict[int, dict] = {}
    for row in per_day:
        entry = by_project.setdefault(
            row["project_id"],
            {"name": row["project__name"] or row["project__slug"] or f"project #{row['project_id']}", "days": {}},
        )
        entry["days"][row["day"]] = float(row["total"] or 0)
    ranked = sorted(by_project.values(), key=lambda e: -sum(e["days"].values()))
    series: dict[str, list[float]] = {}
    for entry in ranked[:COST_SERIES]:
        series[entry["name"]] = [entry["days"].get(day, 0.0) for day in days]
    if len(ranked) > COST_SERIES:
        series["other"] = [sum(e["days"].get(day, 0.0) for e in ranked[COST_SERIES:]) for day in days]
    data.cost_chart = charts.stacked_bars([f"{d:%m-%d}" for d in days], series) if series else ""

    totals = (
        Usage.objects.order_by()
        .values("project_id", "project__name", "project__slug")
        .annotate(total=Sum("cost_usd"), turns=Count("id"))
        .order_by("-total")[:10]
    )
    window_costs = dict(
        Usage.objects.filter(created_at__gte=since).order_by().values_list("project_id").annotate(total=Sum("cost_usd"))
    )
    data.cost_by_project = [
        {
            "name": row["project__name"] or row["project__slug"] or f"project #{row['project_id']}",
            "total": row["total"] or Decimal(0),
            "window": window_costs.get(row["project_id"]) or Decimal(0),
            "turns": row["turns"],
            "href": changelist("agents_usage", project__id__exact=row["project_id"]),
        }
        for row in totals
    ]
    data.cost_window = sum(window_costs.values(), Decimal(0))

    # Workers by state (the live ones, and those that ended in the window).
    counts = dict(WorkerSession.objects.order_by().values_list("state").annotate(n=Count("id")))
    data.workers_by_state = [
        charts.HBar(
            label=str(label),
            value=counts.get(state, 0),
            status=state,
            href=changelist("agents_workersession", state__exact=state),
        )
        for state, label in WorkerSession.State.choices
    ]

    data.incidents = list(
        Incident.objects.filter(status__in=Incident.OPEN).select_related("project", "deployment")[:20]
    )
    data.escalations = list(
        Escalation.objects.filter(status=Escalation.Status.OPEN)
        .select_related("run__project")
        .order_by("deadline")[:20]
    )
    data.links = {
        "runs": changelist("projects_pipelinerun", created_at__gte=since_param),
        "runs_finished": changelist(
            "projects_pipelinerun", status__in=",".join(PipelineRun.FINISHED), created_at__gte=since_param
        ),
        "went_live": changelist("projects_deployment", live_at__gte=since_param),
        "incidents": changelist("projects_incident", status__in="detected,recovering"),
        "escalations": changelist("agents_escalation", status__exact="open"),
        "usage": changelist("agents_usage"),
        "releases_live": changelist("projects_deployment", status__exact="live"),
    }
    return data


class FactoryAdminSite(admin.AdminSite):
    site_header = "Service factory"
    site_title = "Service factory"
    index_title = "Operator's console"
    index_template = "admin/factory/index.html"
    site_url = None  # the factory has no site of its own at "/": no "View site" link

    def each_context(self, request):
        context = super().each_context(request)
        context["flower_url"] = settings.FLOWER_URL
        return context

    def get_urls(self):
        return [path("overview/", self.admin_view(self.overview_view), name="overview"), *super().get_urls()]

    def overview_view(self, request):
        data = overview()
        context = {
            **self.each_context(request),
            "title": "Overview",
            "o": data,
            "runs_chart": charts.hbars(data.runs_by_status),
            "workers_chart": charts.hbars(data.workers_by_state),
            "median_to_live": charts.duration_text(data.median_to_live) if data.median_to_live is not None else None,
            "live_releases": Deployment.objects.filter(status=Deployment.Status.LIVE).count(),
        }
        return TemplateResponse(request, "admin/factory/overview.html", context)


# The factory's icon (browsers ask every site for /favicon.ico; without one, every admin page
# logs a 404 in the browser's console).
FAVICON = (
    '<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 16 16">'
    '<rect width="16" height="16" rx="3" fill="#417690"/>'
    '<path d="M3 12V6l3 2V6l3 2V4h4v8z" fill="#f5dd5d"/></svg>'
)


@require_safe
def favicon(request):
    response = HttpResponse(FAVICON, content_type="image/svg+xml")
    response["Cache-Control"] = "public, max-age=86400"
    return response
