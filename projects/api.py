"""The HTTP API for projects and runs: parse, call one service or selector, render."""

from __future__ import annotations

import json
import time
from datetime import datetime
from decimal import Decimal
from functools import cached_property

import redis
import structlog
from django.conf import settings
from django.core.exceptions import ValidationError as DjangoValidationError
from django.http import Http404, HttpResponse, QueryDict, StreamingHttpResponse
from drf_spectacular.utils import (
    OpenApiParameter,
    OpenApiResponse,
    extend_schema,
    extend_schema_field,
    extend_schema_view,
)
from rest_framework import mixins, serializers, status, viewsets
from rest_framework.decorators import action
from rest_framework.renderers import BaseRenderer, JSONRenderer
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from config.api import parse_whole_number
from config.errors import NotFound, RateLimited, ValidationFailed
from config.schema import error_response
from projects import events, selectors, services
from projects.models import Deployment, Incident, IncidentEvent, PipelineRun, Project, RunEvent, StageRun

log = structlog.get_logger(__name__)
MAX_EVENT_ID = 2**63 - 1


class StageRunSerializer(serializers.ModelSerializer):
    duration_seconds = serializers.FloatField(read_only=True, allow_null=True)
    cost_usd = serializers.SerializerMethodField()

    class Meta:
        model = StageRun
        fields = [
            "id",
            "stage",
            "iteration",
            "status",
            "attempt",
            "started_at",
            "finished_at",
            "duration_seconds",
            "error",
            "output",
            "cost_usd",
        ]

    def get_cost_usd(self, obj: StageRun) -> str:
        total = getattr(obj, "usage_cost_usd", None)  # annotated by selectors.run_detail_queryset
        return str(total if total is not None else sum((u.cost_usd for u in obj.usage.all()), 0))


class RunEventSerializer(serializers.ModelSerializer):
    class Meta:
        model = RunEvent
        fields = ["id", "type", "stage", "payload", "created_at"]


class RunSummarySerializer(serializers.ModelSerializer):
    class Meta:
        model = PipelineRun
        # The fields the plain-row rendering reads (the serializer documents them in the schema).
        fields = ["project" if f == "project_id" else f for f in selectors.RUN_SUMMARY_FIELDS]


class RunDetailSerializer(RunSummarySerializer):
    stages = StageRunSerializer(many=True, read_only=True)
    events = RunEventSerializer(many=True, read_only=True)
    duration_seconds = serializers.SerializerMethodField()

    class Meta(RunSummarySerializer.Meta):
        fields = [*RunSummarySerializer.Meta.fields, "duration_seconds", "stages", "events"]

    def get_duration_seconds(self, obj: PipelineRun) -> float | None:
        if obj.started_at and obj.finished_at:
            return (obj.finished_at - obj.started_at).total_seconds()
        return None


class DeploymentSerializer(serializers.ModelSerializer):
    class Meta:
        model = Deployment
        fields = ["id", "run", "status", "url", "commit_sha", "created_at", "live_at", "stopped_at"]


class ProjectSummarySerializer(serializers.ModelSerializer):
    """A project in the list: everything but its spec (the detail has it). Renders projects from
    ``selectors.project_list_queryset`` (it annotates and prefetches what this reads)."""

    latest_run = serializers.SerializerMethodField()
    live_url = serializers.SerializerMethodField()
    cost_usd = serializers.DecimalField(max_digits=14, decimal_places=6, source="total_cost_usd", read_only=True)
    repo_url = serializers.CharField(
        allow_null=True, read_only=True, help_text="The project's repository on GitHub; null with the local code host."
    )
    pull_request_number = serializers.IntegerField(
        allow_null=True, read_only=True, help_text="The open pull request of the project's latest run, if any."
    )
    pull_request_url = serializers.CharField(allow_null=True, read_only=True)
    ci_status = serializers.CharField(
        allow_null=True,
        read_only=True,
        help_text="The last CI status seen on GitHub: `pending`, `success` or `failure` (the Tester's "
        "`factory/tests`, then the check runs of the commit to deploy); null before any.",
    )

    class Meta:
        model = Project
        fields = [*selectors.PROJECT_SUMMARY_FIELDS, "latest_run", "live_url", "cost_usd"]

    @cached_property
    def _run_summary(self) -> RunSummarySerializer:
        # One serializer for every row: building one per row (its fields) was most of a page's cost.
        return RunSummarySerializer(context=self.context)

    @extend_schema_field(RunSummarySerializer(allow_null=True))
    def get_latest_run(self, obj: Project) -> dict | None:
        return self._run_summary.to_representation(obj.latest_runs[0]) if obj.latest_runs else None

    def get_live_url(self, obj: Project) -> str | None:
        return obj.live_deployments[0].url if obj.live_deployments else None


class ProjectSerializer(ProjectSummarySerializer):
    """A project: the summary and its spec (``factory.json`` as the Architect wrote it)."""

    class Meta(ProjectSummarySerializer.Meta):
        fields = [*ProjectSummarySerializer.Meta.fields[:5], "spec", *ProjectSummarySerializer.Meta.fields[5:]]


class ProbeSerializer(serializers.Serializer):
    at = serializers.DateTimeField(allow_null=True, help_text="When the release was last probed.")
    ok = serializers.BooleanField(allow_null=True, help_text="Whether it was healthy then (null: not probed yet).")
    ms = serializers.IntegerField(allow_null=True, help_text="How long the probe took, in milliseconds.")
    detail = serializers.CharField(allow_blank=True, help_text="What the probe saw, e.g. `healthy`.")


class LiveReleaseSerializer(serializers.Serializer):
    id = serializers.IntegerField(help_text="The release (deployment) id: what a rollback names.")
    url = serializers.CharField(allow_blank=True)
    commit_sha = serializers.CharField()
    live_at = serializers.DateTimeField(allow_null=True)
    uptime_seconds = serializers.FloatField(allow_null=True, help_text="Seconds since it went live.")
    probe = ProbeSerializer()
    restarts = serializers.IntegerField(help_text="Times the release was restarted in place after an outage.")
    cpu_percent = serializers.FloatField(allow_null=True, help_text="CPU at the last probe, percent of one core.")
    memory_bytes = serializers.IntegerField(allow_null=True, help_text="Resident memory at the last probe.")


class HealthSerializer(serializers.Serializer):
    live_release = LiveReleaseSerializer(allow_null=True, help_text="The release serving now; null when none is.")
    incidents_24h = serializers.IntegerField(help_text="Outages detected in the last 24 hours.")
    restarts_24h = serializers.IntegerField(help_text="Restarts made by those outages' repairs.")


class ProjectDetailSerializer(ProjectSerializer):
    """A project with its spec and how it is now (``health``)."""

    health = serializers.SerializerMethodField()

    class Meta(ProjectSerializer.Meta):
        fields = [*ProjectSerializer.Meta.fields, "health"]

    @extend_schema_field(HealthSerializer)
    def get_health(self, obj) -> dict:  # documents the field: the view renders it from rows
        return {}


class ProjectRunStartedSerializer(ProjectSerializer):
    """A project with the run that was just started for it."""

    run_id = serializers.SerializerMethodField()

    class Meta(ProjectSerializer.Meta):
        fields = [*ProjectSerializer.Meta.fields, "run_id"]

    def get_run_id(self, obj) -> int:  # documents the field: the view renders it
        return 0


class IncidentEventSerializer(serializers.ModelSerializer):
    class Meta:
        model = IncidentEvent
        fields = ["id", "type", "detail", "created_at"]


class IncidentSerializer(serializers.ModelSerializer):
    events = IncidentEventSerializer(many=True, read_only=True)

    class Meta:
        model = Incident
        fields = [
            "id",
            "deployment",
            "status",
            "reason",
            "restarts",
            "serving",
            "detected_at",
            "recovering_at",
            "ended_at",
            "events",
        ]


_TIME = serializers.DateTimeField()


def render_health(health: dict) -> dict:
    """``selectors.project_health`` as HealthSerializer documents it."""
    live = health["live"]
    release = None
    if live is not None:
        live_at = live["live_at"]
        release = {
            "id": live["id"],
            "url": live["url"],
            "commit_sha": live["commit_sha"],
            "live_at": _TIME.to_representation(live_at) if live_at else None,
            "uptime_seconds": (health["now"] - live_at).total_seconds() if live_at else None,
            "probe": {
                "at": _TIME.to_representation(live["probed_at"]) if live["probed_at"] else None,
                "ok": live["probe_ok"],
                "ms": live["probe_ms"],
                "detail": live["probe_detail"],
            },
            "restarts": live["restarts"],
            "cpu_percent": live["cpu_percent"],
            "memory_bytes": live["memory_bytes"],
        }
    return {"live_release": release, "incidents_24h": health["incidents_24h"], "restarts_24h": health["restarts_24h"]}


# --- the read-only responses, rendered from plain rows ----------------------------------------
# The serializers above document these responses (drf-spectacular reads them) and render the
# event stream; the list and detail responses are built here from the selectors' dicts, which
# renders the same JSON for a fraction of the cost (no model instances, no field objects per
# row, and times as text from the database: ``selectors.UtcIso``). tests/projects/test_api_cost.py
# compares a row's latest run with RunSummarySerializer's.
_SIX_PLACES = Decimal("0.000001")


def _money(value) -> str:
    """As DRF's DecimalField(decimal_places=6) renders it: a string with six places."""
    return format(Decimal(value).quantize(_SIX_PLACES), "f")


def _seconds(started: str | None, finished: str | None) -> float | None:
    """The seconds between two times as UtcIso renders them (None unless both are set)."""
    if not (started and finished):
        return None
    return (datetime.fromisoformat(finished) - datetime.fromisoformat(started)).total_seconds()


def _run_summary(row: dict) -> dict:
    return {
        "id": row["id"],
        "project": row["project_id"],
        "kind": row["kind"],
        "status": row["status"],
        "current_stage": row["current_stage"],
        "iteration": row["iteration"],
        "max_iterations": row["max_iterations"],
        "cost_usd": _money(row["cost_usd"]),
        "error_code": row["error_code"],
        "error_message": row["error_message"],
        "result_message": row["result_message"],
        "created_at": row["created_at"],
        "started_at": row["started_at"],
        "finished_at": row["finished_at"],
    }


def render_projects(rows: list[dict]) -> list[dict]:
    """Rows of ``selectors.project_rows`` as ProjectSerializer renders them (without ``spec``
    when the rows have none, as ProjectSummarySerializer does); one more query, for the rows'
    latest runs."""
    runs = selectors.run_summary_rows(row["latest_run_id"] for row in rows)
    out = []
    for row in rows:
        run = runs.get(row["latest_run_id"])
        data = {
            "id": row["id"],
            "name": row["name"],
            "slug": row["slug"],
            "kind": row["kind"],
            "description": row["description"],
            "created_at": row["created_at_iso"],
            # A web address only (GitHub): the local code host's path is the server's business.
            "repo_url": row["repo_url"] if row["repo_url"].startswith("http") else None,
            "pull_request_number": row["pull_request_number"],
            "pull_request_url": row["pull_request_url"] or None,
            "ci_status": row["ci_status"] or None,
            "latest_run": _run_summary(run) if run is not None else None,
            "live_url": row["live_url"],
            "cost_usd": _money(row["total_cost_usd"]),
        }
        if "spec" in row:
            data["spec"] = row["spec"]
        out.append(data)
    return out


def render_run_detail(run: dict, stages: list[dict], events: list[dict]) -> dict:
    """``selectors.run_detail_rows`` as RunDetailSerializer renders it."""
    data = _run_summary(run)
    data["duration_seconds"] = _seconds(run["started_at"], run["finished_at"])
    data["stages"] = [
        {
            "id": s["id"],
            "stage": s["stage"],
            "iteration": s["iteration"],
            "status": s["status"],
            "attempt": s["attempt"],
            "started_at": s["started_at"],
            "finished_at": s["finished_at"],
            "duration_seconds": _seconds(s["started_at"], s["finished_at"]),
            "error": s["error"],
            "output": s["output"],
            # "0" without usage rows (as before); six places otherwise (SQLite sums in floats).
            "cost_usd": "0" if str(s["usage_cost_usd"]) == "0" else _money(s["usage_cost_usd"]),
        }
        for s in stages
    ]
    data["events"] = [
        {"id": e["id"], "type": e["type"], "stage": e["stage"], "payload": e["payload"], "created_at": e["created_at"]}
        for e in events
    ]
    return data


def _json_from_database(request: Request) -> bool:
    """The database renders the body (PostgreSQL) and the client asked for JSON (not, say, the
    browsable API)."""
    return selectors.json_in_database() and isinstance(request.accepted_renderer, JSONRenderer)


def _rows_for_pk(queryset, pk) -> list:
    """The rows whose id is ``pk`` (any text from the URL), as DRF's get_object_or_404 finds them."""
    try:
        return list(queryset.filter(id=pk))
    except (TypeError, ValueError, DjangoValidationError):
        return []


@extend_schema_field(
    {
        "type": "string",
        "minLength": 1,
        "maxLength": settings.PROJECT_DESCRIPTION_MAX_CHARS,
        # Some character that is not white space, and no NUL (the database cannot store it).
        "pattern": r"^[^\x00]*[^\s\x00][^\x00]*$",
        "description": "What the service should do, in a sentence (white space around it is trimmed).",
    }
)
class DescriptionField(serializers.CharField):
    """Text only (DRF's CharField takes the number 12 as "12"), at most
    PROJECT_DESCRIPTION_MAX_CHARS characters as sent; DRF refuses blanks, NUL and lone surrogates."""

    def to_internal_value(self, data):
        if not isinstance(data, str):
            self.fail("invalid")
        limit = settings.PROJECT_DESCRIPTION_MAX_CHARS
        if len(data) > limit:  # the service's rule and message, applied before trimming
            raise ValidationFailed(
                f"The description is {len(data)} characters long; the limit is {limit}.",
                code="description_too_long",
                extra={"length": len(data), "limit": limit},
            )
        return super().to_internal_value(data)


class StrictBooleanField(serializers.BooleanField):
    """true or false only (DRF's BooleanField also takes "yes", 1, "on", ...): JSON's, or a form's
    "true" and "false" (a form's fields are text)."""

    def to_internal_value(self, data):
        if isinstance(data, bool):
            return data
        if isinstance(getattr(self.parent, "initial_data", None), QueryDict) and data in ("true", "false"):
            return data == "true"
        self.fail("invalid", input=data)


class ChangeRequestSerializer(serializers.Serializer):
    description = DescriptionField(
        trim_whitespace=True,
        allow_blank=False,
        help_text="The change, in a sentence: e.g. `also roll dice` (white space around it is trimmed).",
    )


class ProjectCreateSerializer(serializers.Serializer):
    description = DescriptionField(trim_whitespace=True, allow_blank=False)
    own_bot = StrictBooleanField(
        required=False,
        default=False,
        help_text="A Telegram bot that runs as your own bot: give its token with PUT /api/projects/{id}/bot/ "
        "(the run asks for it before going live); never a bot from the factory's pool.",
    )


# The router's ``{id}`` is any text (a non-number is simply not found); documented as what it names.
OBJECT_ID = OpenApiParameter("id", int, OpenApiParameter.PATH)


@extend_schema_view(retrieve=extend_schema(parameters=[OBJECT_ID], responses={200: ProjectDetailSerializer}))
class ProjectViewSet(mixins.ListModelMixin, mixins.RetrieveModelMixin, viewsets.GenericViewSet):
    """Projects. The engine's actions on a live project (stop, start, rollback, delete) are added by
    ``orchestrator.api.ProjectEngineViewSet``, which the URLconf registers."""

    def get_serializer_class(self):
        return ProjectSummarySerializer if self.action == "list" else ProjectSerializer

    def get_queryset(self):
        return selectors.project_rows(self.request.user)

    def list(self, request: Request, *args, **kwargs) -> Response:
        """The caller's projects (everyone's for staff), newest first, without their specs."""
        if _json_from_database(request):
            return self.paginator.json_page_response(
                request, lambda limit, offset: selectors.project_page_json(request.user, limit=limit, offset=offset)
            )
        rows = selectors.project_rows(request.user, with_spec=False)
        page = self.paginator.paginate_counted(selectors.with_total_count(rows), request)
        return self.get_paginated_response(render_projects(page))

    def retrieve(self, request: Request, *args, **kwargs) -> Response:
        """The project with its spec, and how it is now: the live release, its URL and uptime, the
        last probe's result and latency, its restarts, CPU and memory, the incidents of the last 24
        hours, and the cost to date (``cost_usd``)."""
        rows = _rows_for_pk(self.get_queryset(), kwargs["pk"])
        if not rows:
            raise Http404
        data = render_projects(rows)[0]
        data["health"] = render_health(selectors.project_health(project_id=data["id"]))
        return Response(data)

    def visible_project(self, pk) -> Project:
        """The caller's project (any for staff) named by the URL, or 404 ``project_not_found``."""
        project = _rows_for_pk(selectors.projects_visible_to(self.request.user).select_related(None), pk)
        if not project:
            raise NotFound("No such project.", code="project_not_found")
        return project[0]

    def _started(self, project_id: int, run: PipelineRun) -> Response:
        data = render_projects(list(self.get_queryset().filter(id=project_id)))[0]
        data["run_id"] = run.id
        return Response(data, status=status.HTTP_201_CREATED)

    @extend_schema(
        parameters=[OBJECT_ID],
        request=ChangeRequestSerializer,
        responses={201: ProjectRunStartedSerializer, 409: error_response(409), 429: error_response(429)},
        summary="Ask for a change to a project",
        description="Starts a run of kind `change`: the Architect amends the project's spec with the change "
        "(the scripted one adds the catalogue features it names, or refuses and the run fails with its "
        "reason), the Developer builds on the live release's commit, the Tester runs the old and the new "
        "checks, and the Deployer swaps the new release in only once it passes its checks: a change that "
        "fails leaves the live release serving. 409 `run_in_progress` while a run is under way, "
        "`not_planned` before the project has a spec; 429 `change_rate_limited` (changes and redeploys "
        "share PROJECT_CREATE_LIMIT per PROJECT_CREATE_WINDOW_SECONDS).",
    )
    @action(detail=True, methods=["post"], url_path="changes", url_name="changes")
    def changes(self, request: Request, pk=None, **kwargs) -> Response:
        project = self.visible_project(pk)
        body = ChangeRequestSerializer(data=request.data)
        body.is_valid(raise_exception=True)
        run = services.project_request_change(
            project_id=project.id, description=body.validated_data["description"], user=request.user
        )
        return self._started(project.id, run)

    @extend_schema(
        parameters=[OBJECT_ID],
        request=None,
        responses={201: ProjectRunStartedSerializer, 409: error_response(409), 429: error_response(429)},
        summary="Deploy the same commit again as a new release",
        description="Starts a run of kind `redeploy`: the spec is kept (no Architect turn), the branch is the live "
        "release's commit (else the last deployed one) with no new commit, the Developer hands that commit on "
        "with no agent turn, the Tester tests it again (a failure ends the run; the live release keeps "
        "serving) and the Deployer starts it as a new release (with the secrets and bot as they are now), "
        "swapped in only once healthy. 409 `run_in_progress`, "
        "`never_deployed`; 429 `change_rate_limited`.",
    )
    @action(detail=True, methods=["post"], url_path="redeploy", url_name="redeploy")
    def redeploy(self, request: Request, pk=None, **kwargs) -> Response:
        project = self.visible_project(pk)
        run = services.project_redeploy(project_id=project.id, user=request.user)
        return self._started(project.id, run)

    @extend_schema(
        parameters=[OBJECT_ID],
        responses={200: IncidentSerializer(many=True)},
        summary="The project's incidents",
        description="Outages of the project's live releases, newest first (the latest 50), each with its steps: "
        "found down, restarts, rollback, recovered or given up.",
    )
    @action(detail=True, methods=["get"], url_path="incidents", url_name="incidents", pagination_class=None)
    def incidents(self, request: Request, pk=None, **kwargs) -> Response:
        project = self.visible_project(pk)
        return Response(IncidentSerializer(selectors.project_incidents(project_id=project.id), many=True).data)

    @extend_schema(
        request=ProjectCreateSerializer,
        responses={201: ProjectSerializer, 429: error_response(429)},
        description="Create a project from a description; its first run starts at once. One person "
        "may start PROJECT_CREATE_LIMIT projects per PROJECT_CREATE_WINDOW_SECONDS "
        "(429 `project_rate_limited` beyond).",
    )
    def create(self, request: Request, *args, **kwargs) -> Response:  # kwargs: the router's ?format suffix
        """Create a project from a description; its first run starts at once."""
        body = ProjectCreateSerializer(data=request.data)
        body.is_valid(raise_exception=True)
        project, run = services.project_create(
            owner=request.user, description=body.validated_data["description"], own_bot=body.validated_data["own_bot"]
        )
        data = render_projects(list(self.get_queryset().filter(id=project.id)))[0]
        data["run_id"] = run.id
        return Response(data, status=status.HTTP_201_CREATED)


@extend_schema_view(retrieve=extend_schema(parameters=[OBJECT_ID]))
class RunViewSet(mixins.ListModelMixin, mixins.RetrieveModelMixin, viewsets.GenericViewSet):
    def get_queryset(self):
        if self.action == "retrieve":
            return selectors.run_detail_queryset(self.request.user)
        return selectors.runs_visible_to(self.request.user)

    def get_serializer_class(self):
        return RunDetailSerializer if self.action == "retrieve" else RunSummarySerializer

    def list(self, request: Request, *args, **kwargs) -> Response:
        rows = selectors.with_total_count(selectors.run_summaries_visible_to(request.user))
        page = self.paginator.paginate_counted(rows, request)
        return self.get_paginated_response([_run_summary(selectors.renamed(row)) for row in page])

    def retrieve(self, request: Request, *args, **kwargs) -> Response:
        if _json_from_database(request):
            try:
                text = selectors.run_detail_json(request.user, int(kwargs["pk"]))
            except ValueError:  # as the ORM reads the id: int() of the URL's text
                text = None
            if text is None:
                raise Http404
            return HttpResponse(text, content_type="application/json")
        try:
            found = selectors.run_detail_rows(request.user, kwargs["pk"])
        except (TypeError, ValueError, DjangoValidationError):
            found = None
        if found is None:
            raise Http404
        return Response(render_run_detail(*found))


class EventStreamRenderer(BaseRenderer):
    media_type = "text/event-stream"
    format = "sse"

    def render(self, data, accepted_media_type=None, renderer_context=None):
        return data if isinstance(data, bytes) else json.dumps(data).encode()


def _sse(event_id: int, type: str, data: dict) -> str:
    return f"id: {event_id}\nevent: {type}\ndata: {json.dumps(data, default=str)}\n\n"


class EventStream:
    """The body of one event stream: the run's events after ``after`` from the database, then
    each new one as soon as pub/sub says it is committed (the message only wakes the stream; the
    database is read again, so nothing is missed or repeated).

    It ends once the run is settled (finished, nothing running or queued) and every event is
    sent, or after SSE_MAX_SECONDS with a ``retry:`` hint (the client resumes with
    Last-Event-ID). Without a subscription (no Redis) it sends what is stored and ends.
    Django closes it when the response ends or the client goes away: that releases the
    subscription and the stream's lease, even if it never started.
    """

    def __init__(
        self, run_id: int, after: int, *, subscription: events.Subscription | None, lease: events.StreamLease | None
    ):
        self.run_id, self.after = run_id, after
        self.subscription, self.lease = subscription, lease
        self._events = self._generate()

    def __iter__(self):
        return self._events

    def _generate(self):
        last, keepalive = self.after, settings.SSE_KEEPALIVE_SECONDS
        deadline = time.monotonic() + settings.SSE_MAX_SECONDS
        renewed = time.monotonic()
        while True:
            settled = selectors.run_is_settled(run_id=self.run_id)  # before the read: see the docstring
            for event in selectors.run_events_after(run_id=self.run_id, after_id=last):
                yield _sse(event.id, event.type, RunEventSerializer(event).data)
                last = event.id
            if settled:
                return
            if self.subscription is None:
                yield "retry: 2000\n: live streaming needs Redis; reconnect with Last-Event-ID\n\n"
                return
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                yield "retry: 1000\n: this stream reached its time limit; reconnect with Last-Event-ID\n\n"
                return
            try:
                woken = self.subscription.get(timeout=min(keepalive, remaining))
            except redis.RedisError as exc:  # Redis went away: the client resumes from what it has
                log.warning("event_stream_interrupted", run_id=self.run_id, error=str(exc))
                yield "retry: 2000\n: live streaming was interrupted; reconnect with Last-Event-ID\n\n"
                return
            if woken is None:
                yield ": keepalive\n\n"
            if self.lease is not None and time.monotonic() - renewed >= keepalive:
                self.lease.renew()
                renewed = time.monotonic()

    def close(self) -> None:
        self._events.close()
        if self.subscription is not None:
            self.subscription.close()
            self.subscription = None
        if self.lease is not None:
            self.lease.release()
            self.lease = None


def _go_live(run_id: int, user_id: int) -> tuple[events.Subscription | None, events.StreamLease | None]:
    """A place under the stream caps and a subscription, or (None, None) without Redis."""
    if not settings.REDIS_URL:
        return None, None
    # Renewed every keep-alive; a lease whose process died lapses soon after.
    lease = events.StreamLease(user_id=user_id, lease_seconds=2 * settings.SSE_KEEPALIVE_SECONDS + 5)
    try:
        lease.acquire()
    except events.StreamLimitReached as exc:
        who = "you have" if exc.scope == "user" else "the server has"
        raise RateLimited(
            f"Too many open event streams: {who} {exc.limit}. Close one, or try again later.",
            code="too_many_streams",
            extra={"scope": exc.scope, "limit": exc.limit},
        ) from exc
    except redis.RedisError as exc:
        log.warning("event_stream_not_live", run_id=run_id, error=str(exc))
        return None, None
    try:
        return events.Subscription(run_id), lease
    except redis.RedisError as exc:
        lease.release()
        log.warning("event_stream_not_live", run_id=run_id, error=str(exc))
        return None, None


# One event of the stream, as OpenAPI describes server-sent events (a block with only ``retry:``
# or a comment carries no data).
SSE_EVENT = {
    "type": "object",
    "properties": {
        "id": {"type": "string", "pattern": "^[0-9]+$"},
        "event": {"type": "string"},
        "data": {
            "type": "string",
            "contentMediaType": "application/json",
            "contentSchema": {"$ref": "#/components/schemas/RunEvent"},
        },
        "retry": {"type": "integer", "minimum": 0},
    },
}


class RunEventStreamView(APIView):
    """``GET /api/runs/<id>/events/``: server-sent events; resume with ``Last-Event-ID``."""

    renderer_classes = [EventStreamRenderer]

    @extend_schema(
        summary="The run's events as server-sent events",
        description=(
            "Each event is `id: <event id>`, `event: <type>`, `data: <the event as JSON>`. The stream ends "
            "once the run has finished and every event is sent, or after a time limit with a `retry:` "
            "hint: reconnect with `Last-Event-ID` to go on. Open streams are capped per user (429)."
        ),
        parameters=[
            OpenApiParameter(
                "Last-Event-ID",
                {"type": "integer", "minimum": 0, "maximum": MAX_EVENT_ID},
                OpenApiParameter.HEADER,
                description="Send the events after this one.",
            ),
            OpenApiParameter(
                "after",
                {"type": "integer", "minimum": 0, "maximum": MAX_EVENT_ID},
                OpenApiParameter.QUERY,
                description="Like Last-Event-ID (the header wins).",
            ),
        ],
        responses={
            (200, "text/event-stream"): OpenApiResponse(
                SSE_EVENT, description="The event stream; the schema is that of one event."
            ),
            (429, "application/json"): error_response(429),
        },
    )
    def get(self, request: Request, pk: int):
        run = selectors.runs_visible_to(request.user).filter(id=pk).first()
        if run is None:
            raise NotFound("No such run.", code="run_not_found")
        given = {
            name: parse_whole_number(raw, name=name, minimum=0, maximum=MAX_EVENT_ID)
            for name, raw in (
                ("Last-Event-ID", request.headers.get("Last-Event-ID")),
                ("after", request.query_params.get("after")),
            )
            if raw is not None
        }
        after = given.get("Last-Event-ID", given.get("after", 0))  # each is checked; the header wins
        subscription, lease = _go_live(run.id, request.user.id)
        response = StreamingHttpResponse(
            EventStream(run.id, after, subscription=subscription, lease=lease), content_type="text/event-stream"
        )
        response["Cache-Control"] = "no-cache"
        response["X-Accel-Buffering"] = "no"
        return response
