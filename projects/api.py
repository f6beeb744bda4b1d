"""The HTTP API for projects and runs: parse, call one service or selector, render."""
from __future__ import annotations

from drf_spectacular.utils import extend_schema, extend_schema_field
from rest_framework import mixins, serializers, status, viewsets
from rest_framework.request import Request
from rest_framework.response import Response

from projects import selectors, services
from projects.models import Deployment, PipelineRun, Project, RunEvent, StageRun


class StageRunSerializer(serializers.ModelSerializer):
    duration_seconds = serializers.FloatField(read_only=True)
    cost_usd = serializers.SerializerMethodField()

    class Meta:
        model = StageRun
        fields = ["id", "stage", "iteration", "status", "attempt", "started_at", "finished_at",
                  "duration_seconds", "error", "output", "cost_usd"]

    def get_cost_usd(self, obj: StageRun) -> str:
        return str(sum((u.cost_usd for u in obj.usage.all()), 0))


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

    @extend_schema_field(RunSummarySerializer(allow_null=True))
    def get_latest_run(self, obj: Project) -> dict | None:
        return RunSummarySerializer(obj.latest_runs[0]).data if obj.latest_runs else None

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
