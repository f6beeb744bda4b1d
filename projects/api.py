"""The HTTP API for projects and runs: parse, call one service or selector, render."""
from __future__ import annotations

import json
from functools import cached_property

from django.conf import settings
from django.http import StreamingHttpResponse
from drf_spectacular.utils import extend_schema, extend_schema_field
from rest_framework import mixins, serializers, status, viewsets
from rest_framework.renderers import BaseRenderer, JSONRenderer
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from config.errors import NotFound, ValidationFailed
from projects import events, selectors, services
from projects.models import Deployment, PipelineRun, Project, RunEvent, StageRun


class StageRunSerializer(serializers.ModelSerializer):
    duration_seconds = serializers.FloatField(read_only=True)
    cost_usd = serializers.SerializerMethodField()

    class Meta:
        model = StageRun
        fields = ["id", "stage", "iteration", "status", "attempt", "started_at", "finished_at",
                  "duration_seconds", "error", "output", "cost_usd"]

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
        fields = ["id", "project", "kind", "status", "current_stage", "iteration", "max_iterations", "cost_usd",
                  "error_code", "error_message", "result_message", "created_at", "started_at", "finished_at"]


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


class ProjectSerializer(serializers.ModelSerializer):
    """Renders projects from ``selectors.project_list_queryset`` (it annotates and prefetches what this reads)."""

    latest_run = serializers.SerializerMethodField()
    live_url = serializers.SerializerMethodField()
    cost_usd = serializers.DecimalField(max_digits=14, decimal_places=6, source="total_cost_usd", read_only=True)

    class Meta:
        model = Project
        fields = ["id", "name", "slug", "kind", "description", "spec", "created_at", "latest_run", "live_url",
                  "cost_usd"]

    @cached_property
    def _run_summary(self) -> RunSummarySerializer:
        # One serializer for every row: building one per row (its fields) was most of a page's cost.
        return RunSummarySerializer(context=self.context)

    @extend_schema_field(RunSummarySerializer(allow_null=True))
    def get_latest_run(self, obj: Project) -> dict | None:
        return self._run_summary.to_representation(obj.latest_runs[0]) if obj.latest_runs else None

    def get_live_url(self, obj: Project) -> str | None:
        return obj.live_deployments[0].url if obj.live_deployments else None


class ProjectCreateSerializer(serializers.Serializer):
    # The length limit is the service's (one rule, one message); this only checks the shape.
    description = serializers.CharField(trim_whitespace=True, allow_blank=False)


class ProjectViewSet(mixins.ListModelMixin, mixins.RetrieveModelMixin, viewsets.GenericViewSet):
    serializer_class = ProjectSerializer

    def get_queryset(self):
        return selectors.project_list_queryset(self.request.user)

    @extend_schema(request=ProjectCreateSerializer, responses={201: ProjectSerializer})
    def create(self, request: Request) -> Response:
        """Create a project from a description; its first run starts at once."""
        body = ProjectCreateSerializer(data=request.data)
        body.is_valid(raise_exception=True)
        project, run = services.project_create(owner=request.user, description=body.validated_data["description"])
        data = ProjectSerializer(self.get_queryset().get(id=project.id)).data
        data["run_id"] = run.id
        return Response(data, status=status.HTTP_201_CREATED)


class RunViewSet(mixins.ListModelMixin, mixins.RetrieveModelMixin, viewsets.GenericViewSet):
    def get_queryset(self):
        if self.action == "retrieve":
            return selectors.run_detail_queryset(self.request.user)
        return selectors.runs_visible_to(self.request.user)

    def get_serializer_class(self):
        return RunDetailSerializer if self.action == "retrieve" else RunSummarySerializer


class EventStreamRenderer(BaseRenderer):
    media_type = "text/event-stream"
    format = "sse"

    def render(self, data, accepted_media_type=None, renderer_context=None):
        return data if isinstance(data, bytes) else json.dumps(data).encode()


# The run's last event: once it is sent, the stream ends.
FINAL_EVENT = RunEvent.Type.NOTIFIED


def _sse(event_id: int, type: str, data: dict) -> str:
    return f"id: {event_id}\nevent: {type}\ndata: {json.dumps(data, default=str)}\n\n"


def event_stream(run_id: int, after: int, keepalive: float):
    """Server-sent events of a run from ``after`` on: the backlog from the database, then each
    new event the moment it is published (Redis pub/sub). Without Redis, the backlog only."""
    subscription = events.Subscription(run_id) if settings.REDIS_URL else None
    last = after
    try:
        while True:
            for event in selectors.run_events_after(run_id=run_id, after_id=last):
                yield _sse(event.id, event.type, RunEventSerializer(event).data)
                last = event.id
                if event.type == FINAL_EVENT:
                    return
            if subscription is None:
                yield "retry: 2000\n: live streaming needs Redis; reconnect with Last-Event-ID\n\n"
                return
            message = subscription.get(timeout=keepalive)
            if message is None:
                yield ": keepalive\n\n"  # and catch up from the database, in case a publish was lost
                continue
            if message["id"] <= last:
                continue
            yield _sse(message["id"], message["type"], message)
            last = message["id"]
            if message["type"] == FINAL_EVENT:
                return
    finally:
        if subscription is not None:
            subscription.close()


class RunEventStreamView(APIView):
    """``GET /api/runs/<id>/events/``: server-sent events; resume with ``Last-Event-ID``."""

    renderer_classes = [EventStreamRenderer, JSONRenderer]

    @extend_schema(responses={(200, "text/event-stream"): str})
    def get(self, request: Request, pk: int):
        run = selectors.runs_visible_to(request.user).filter(id=pk).first()
        if run is None:
            raise NotFound("No such run.", code="run_not_found")
        raw = request.headers.get("Last-Event-ID") or request.query_params.get("after") or "0"
        if not raw.isdigit():
            raise ValidationFailed("Last-Event-ID must be an event id (a whole number).", code="bad_event_id")
        response = StreamingHttpResponse(
            event_stream(run.id, int(raw), settings.SSE_KEEPALIVE_SECONDS), content_type="text/event-stream"
        )
        response["Cache-Control"] = "no-cache"
        response["X-Accel-Buffering"] = "no"
        return response
