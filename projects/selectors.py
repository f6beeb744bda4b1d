"""Reads. The only place with non-trivial queries over projects and runs."""

from __future__ import annotations

import functools
from datetime import timedelta
from decimal import Decimal

from django.db.models import (
    CharField,
    Count,
    DecimalField,
    Exists,
    Func,
    OuterRef,
    Prefetch,
    Q,
    QuerySet,
    Subquery,
    Sum,
    Value,
    Window,
)
from django.db.models.functions import Coalesce
from django.utils import timezone

from projects import sql
from projects.models import Deployment, Incident, IncidentEvent, PipelineRun, Project, RunEvent, StageRun


def projects_visible_to(user) -> QuerySet[Project]:
    """The projects ``user`` may see (staff: everyone's); deleted ones are nobody's any more."""
    qs = Project.objects.select_related("owner").filter(deleted_at__isnull=True)
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


HEALTH_FIELDS = (
    "id",
    "url",
    "commit_sha",
    "live_at",
    "probed_at",
    "probe_ok",
    "probe_ms",
    "probe_detail",
    "restarts",
    "cpu_percent",
    "memory_bytes",
)


def project_health(*, project_id: int, now=None) -> dict:
    """How a project is (US4), as plain values: its live release (``live``: HEALTH_FIELDS, or None)
    and the incidents of the last 24 hours with their restarts. Two queries."""
    now = now or timezone.now()
    live = (
        Deployment.objects.filter(project_id=project_id, status=Deployment.Status.LIVE).values(*HEALTH_FIELDS).first()
    )
    recent = Incident.objects.filter(project_id=project_id, detected_at__gte=now - timedelta(hours=24)).aggregate(
        count=Count("id"), restarts=Coalesce(Sum("restarts"), 0)
    )
    return {"live": live, "incidents_24h": recent["count"], "restarts_24h": recent["restarts"], "now": now}


def project_incidents(*, project_id: int, limit: int = 50) -> list[Incident]:
    """The project's latest incidents, newest first, each with its events (two queries)."""
    return list(
        Incident.objects.filter(project_id=project_id)
        .order_by("-detected_at", "-id")
        .prefetch_related(Prefetch("events", queryset=IncidentEvent.objects.order_by("id")))[:limit]
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
# Times come out of the database as the text DRF renders (``UtcIso``): no datetime is built.


class UtcIso(Func):
    """A timestamp as DRF renders it in UTC (TIME_ZONE is UTC): ISO 8601 with "Z", microseconds
    only when there are some (as ``datetime.isoformat``). NULL stays NULL."""

    output_field = CharField()
    arity = 1

    def as_sql(self, compiler, connection, **extra_context):  # SQLite: stored as UTC text already
        sql, params = compiler.compile(self.source_expressions[0])
        return f"(replace({sql}, ' ', 'T') || 'Z')", params

    def as_postgresql(self, compiler, connection, **extra_context):
        sql, params = compiler.compile(self.source_expressions[0])
        return _iso_sql(sql), params


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
TIME_FIELDS = frozenset({"created_at", "started_at", "finished_at"})
# The list shows a project without its spec (the detail has it): the spec was a third of a page's
# cost, parsed and rendered again for every row.
PROJECT_SUMMARY_FIELDS = (
    "id",
    "name",
    "slug",
    "kind",
    "description",
    "created_at",
    # Where its code lives (the `github` code host; see projects.api.render_projects).
    "repo_url",
    "pull_request_number",
    "pull_request_url",
    "ci_status",
)
PROJECT_FIELDS = (*PROJECT_SUMMARY_FIELDS, "spec")
STAGE_FIELDS = ("id", "stage", "iteration", "status", "attempt", "started_at", "finished_at", "error", "output")
EVENT_FIELDS = ("id", "type", "stage", "payload", "created_at")


def _columns(fields, prefix: str = "") -> tuple[list[str], dict]:
    """``values()`` arguments for ``fields`` (of the model ``prefix`` leads to): the names, and
    the times as ``UtcIso`` text under ``<prefix><name>_iso`` (``_renamed`` gives them their
    names back)."""
    names = [prefix + name for name in fields if name not in TIME_FIELDS]
    times = {f"{prefix.replace('__', '_')}{name}_iso": UtcIso(prefix + name) for name in fields if name in TIME_FIELDS}
    return names, times


def _renamed(row: dict, prefix: str = "") -> dict:
    for name in TIME_FIELDS:
        key = f"{prefix.replace('__', '_')}{name}_iso"
        if key in row:
            row[prefix + name] = row.pop(key)
    return row


def project_rows(user, *, with_spec: bool = True) -> QuerySet[dict]:
    """Visible projects, newest (highest id) first, as dicts of PROJECT_FIELDS
    (PROJECT_SUMMARY_FIELDS without ``with_spec``) with ``total_cost_usd``, ``latest_run_id`` and
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
    names, times = _columns(PROJECT_FIELDS if with_spec else PROJECT_SUMMARY_FIELDS)
    qs = Project.objects.filter(deleted_at__isnull=True)
    qs = qs if user.is_staff else qs.filter(owner=user)
    # Newest first by id (the order of creation): the primary key's index reads a page and stops;
    # ``created_at`` (the model's ordering) made every page sort all of the person's projects.
    return qs.order_by("-id").values(
        *names,
        **times,
        total_cost_usd=Coalesce(Subquery(run_costs, output_field=money), Value(Decimal(0)), output_field=money),
        latest_run_id=Subquery(latest_run),
        live_url=Subquery(live_url),
    )


def with_total_count(rows: QuerySet[dict]) -> QuerySet[dict]:
    """Each row also carries ``total_count``, the number of rows of the whole query (a window
    function): a page and its count in one query."""
    return rows.annotate(total_count=Window(Count("*")))


def run_summary_rows(run_ids) -> dict[int, dict]:
    """The runs of these ids as dicts of RUN_SUMMARY_FIELDS, by id (one query)."""
    ids = [i for i in run_ids if i is not None]
    if not ids:
        return {}
    names, times = _columns(RUN_SUMMARY_FIELDS)
    rows = PipelineRun.objects.filter(id__in=ids).order_by().values(*names, **times)
    return {row["id"]: _renamed(row) for row in rows}


def run_summaries_visible_to(user) -> QuerySet[dict]:
    """Visible runs as dicts of RUN_SUMMARY_FIELDS (times as ``UtcIso`` text under
    ``<name>_iso``: pass each row of a page through ``renamed``), newest (highest id) first."""
    names, times = _columns(RUN_SUMMARY_FIELDS)
    return runs_visible_to(user).select_related(None).order_by("-id").values(*names, **times)


def renamed(row: dict) -> dict:
    """A row of these queries with its times under their own names."""
    return _renamed(row)


def run_detail_rows(user, run_id) -> tuple[dict, list[dict], list[dict]] | None:
    """A visible run as a dict of RUN_SUMMARY_FIELDS, its stages (STAGE_FIELDS and
    ``usage_cost_usd``, the sum of its usage) and its events (EVENT_FIELDS): two queries (the
    run comes with its stage rows; every run has them from its creation), or None if the caller
    may not see it."""
    money = DecimalField(max_digits=14, decimal_places=6)
    stages = StageRun.objects.filter(run_id=run_id)
    if not user.is_staff:
        stages = stages.filter(run__project__owner=user)
    names, times = _columns(STAGE_FIELDS)
    run_names, run_times = _columns(RUN_SUMMARY_FIELDS, "run__")
    rows = list(
        stages.order_by("id").values(
            *names,
            *run_names,
            **times,
            **run_times,
            usage_cost_usd=Coalesce(Sum("usage__cost_usd"), Value(Decimal(0)), output_field=money),
        )
    )
    if not rows:
        return None
    first = _renamed(dict(rows[0]), "run__")
    run = {name: first[f"run__{name}"] for name in RUN_SUMMARY_FIELDS}
    names, times = _columns(EVENT_FIELDS)
    events = [_renamed(e) for e in RunEvent.objects.filter(run_id=run["id"]).order_by("id").values(*names, **times)]
    return run, [_renamed(row) for row in rows], events


# --- the same responses as JSON text built by PostgreSQL ---------------------------------------
# On PostgreSQL the two hottest reads (a page of projects, one run) are one statement each that
# returns the response body as JSON text: no ORM query to compile, no row objects, nothing to
# encode in Python. The text is what projects/api.py renders from the rows above (the same
# fields in the same order, money with six places, times as UtcIso); tests/projects/test_api.py
# compares the two. Other databases (the embedded SQLite) use the rows above.
MAX_ID = 2**63 - 1


def json_in_database() -> bool:
    return sql.postgresql()


def _iso_sql(column: str) -> str:
    """``UtcIso`` of a column, as PostgreSQL SQL (".000000" is what to_char writes for none)."""
    return f"replace(to_char({column} AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS.US\"Z\"'), '.000000Z', 'Z')"


def _seconds_sql(started: str, finished: str) -> str:
    return f"EXTRACT(EPOCH FROM ({finished} - {started}))::float8"


def _run_summary_sql(r: str) -> str:
    """json_build_object of a run (alias ``r``) with RUN_SUMMARY_FIELDS, as the API renders them."""
    return (
        f"'id', {r}.id, 'project', {r}.project_id, 'kind', {r}.kind, 'status', {r}.status, "
        f"'current_stage', {r}.current_stage, 'iteration', {r}.iteration, 'max_iterations', {r}.max_iterations, "
        f"'cost_usd', round({r}.cost_usd, 6)::text, 'error_code', {r}.error_code, "
        f"'error_message', {r}.error_message, 'result_message', {r}.result_message, "
        f"'created_at', {_iso_sql(f'{r}.created_at')}, 'started_at', {_iso_sql(f'{r}.started_at')}, "
        f"'finished_at', {_iso_sql(f'{r}.finished_at')}"
    )


@functools.cache
def _run_detail_sql() -> str:
    usage = StageRun._meta.get_field("usage").related_model._meta  # agents' ledger, through the relation
    usage_fk = StageRun._meta.get_field("usage").field.column
    return f"""
SELECT json_build_object(
    {_run_summary_sql("r")},
    'duration_seconds', {_seconds_sql("r.started_at", "r.finished_at")},
    'stages', (
        SELECT coalesce(json_agg(json_build_object(
            'id', s.id, 'stage', s.stage, 'iteration', s.iteration, 'status', s.status, 'attempt', s.attempt,
            'started_at', {_iso_sql("s.started_at")}, 'finished_at', {_iso_sql("s.finished_at")},
            'duration_seconds', {_seconds_sql("s.started_at", "s.finished_at")},
            'error', s.error, 'output', s.output,
            'cost_usd', (SELECT coalesce(sum(u.cost_usd), 0) FROM {usage.db_table} u WHERE u.{usage_fk} = s.id)::text
        ) ORDER BY s.id), '[]')
        FROM {StageRun._meta.db_table} s WHERE s.run_id = r.id
    ),
    'events', (
        SELECT coalesce(json_agg(json_build_object(
            'id', e.id, 'type', e.type, 'stage', e.stage, 'payload', e.payload,
            'created_at', {_iso_sql("e.created_at")}
        ) ORDER BY e.id), '[]')
        FROM {RunEvent._meta.db_table} e WHERE e.run_id = r.id
    )
)::text
FROM {PipelineRun._meta.db_table} r JOIN {Project._meta.db_table} p ON p.id = r.project_id
WHERE r.id = %s::bigint AND (%s::boolean OR p.owner_id = %s::bigint)
"""


def run_detail_json(user, run_id: int) -> str | None:
    """``run_detail_rows`` as the API renders it, as JSON text (PostgreSQL), or None if the caller
    may not see the run. One statement."""
    if not 0 < run_id <= MAX_ID:
        return None
    row = sql.fetchone_prepared(_run_detail_sql(), [run_id, user.is_staff, user.id])
    return row[0] if row else None


@functools.cache
def _project_page_sql() -> str:
    runs, projects = PipelineRun._meta.db_table, Project._meta.db_table
    deployments = Deployment._meta.db_table
    return f"""
WITH page AS (
    SELECT p.* FROM {projects} p WHERE p.deleted_at IS NULL AND (%s::boolean OR p.owner_id = %s::bigint)
    ORDER BY p.id DESC LIMIT %s::bigint OFFSET %s::bigint
)
SELECT (SELECT count(*) FROM {projects} p WHERE p.deleted_at IS NULL AND (%s::boolean OR p.owner_id = %s::bigint)),
coalesce(json_agg(json_build_object(
    'id', p.id, 'name', p.name, 'slug', p.slug, 'kind', p.kind, 'description', p.description,
    'created_at', {_iso_sql("p.created_at")},
    'repo_url', CASE WHEN left(p.repo_url, 4) = 'http' THEN p.repo_url END,
    'pull_request_number', p.pull_request_number,
    'pull_request_url', nullif(p.pull_request_url, ''),
    'ci_status', nullif(p.ci_status, ''),
    'latest_run', (SELECT json_build_object({_run_summary_sql("r")}) FROM {runs} r
                   WHERE r.project_id = p.id ORDER BY r.id DESC LIMIT 1),
    'live_url', (SELECT d.url FROM {deployments} d WHERE d.project_id = p.id AND d.status = %s::text LIMIT 1),
    'cost_usd', (SELECT round(coalesce(sum(c.cost_usd), 0), 6) FROM {runs} c WHERE c.project_id = p.id)::text
) ORDER BY p.id DESC), '[]')::text
FROM page p
"""


def project_page_json(user, *, limit: int, offset: int) -> tuple[int, str]:
    """A page of ``project_rows(user, with_spec=False)`` as the API renders it: (the count of
    all, the page as JSON text), one statement (PostgreSQL)."""
    visible = [user.is_staff, user.id]
    total, text = sql.fetchone_prepared(
        _project_page_sql(), [*visible, limit, offset, *visible, str(Deployment.Status.LIVE)]
    )
    return total, text


def live_routes() -> list[tuple[str, int]]:
    """(slug, internal port) of every live web release: what the proxy must route by name."""
    return list(
        Deployment.objects.filter(status=Deployment.Status.LIVE, project__kind="web_service")
        .exclude(project__slug=None)
        .order_by("project__slug")
        .values_list("project__slug", "port")
    )
