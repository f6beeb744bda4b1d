from django.contrib import admin
from django.db.models import Sum

from projects.models import Deployment, PipelineRun, Project, RunEvent, StageRun


class RunInline(admin.TabularInline):
    model = PipelineRun
    extra = 0
    can_delete = False
    show_change_link = True
    fields = ["id", "kind", "status", "current_stage", "iteration", "cost_usd", "created_at", "finished_at"]
    readonly_fields = fields


@admin.register(Project)
class ProjectAdmin(admin.ModelAdmin):
    list_display = ["id", "name", "slug", "kind", "owner", "cost", "created_at"]
    list_filter = ["kind"]
    search_fields = ["name", "slug", "description", "owner__username"]
    readonly_fields = ["owner", "name", "slug", "kind", "spec", "repo_url", "created_at", "updated_at"]
    inlines = [RunInline]

    def get_queryset(self, request):
        return super().get_queryset(request).annotate(total_cost=Sum("usage__cost_usd"))

    @admin.display(description="cost (USD)", ordering="total_cost")
    def cost(self, obj: Project):
        return obj.total_cost or 0


class StageRunInline(admin.TabularInline):
    model = StageRun
    extra = 0
    can_delete = False
    fields = ["stage", "iteration", "status", "attempt", "started_at", "finished_at", "duration", "error"]
    readonly_fields = fields

    @admin.display(description="seconds")
    def duration(self, obj: StageRun):
        seconds = obj.duration_seconds
        return f"{seconds:.1f}" if seconds is not None else "-"


class RunEventInline(admin.TabularInline):
    model = RunEvent
    extra = 0
    can_delete = False
    fields = ["created_at", "type", "stage", "payload"]
    readonly_fields = fields


@admin.register(PipelineRun)
class PipelineRunAdmin(admin.ModelAdmin):
    list_display = ["id", "project", "kind", "status", "current_stage", "iteration", "cost_usd", "created_at"]
    list_filter = ["status", "kind", "current_stage"]
    search_fields = ["project__name", "project__slug"]
    readonly_fields = [f.name for f in PipelineRun._meta.fields]
    inlines = [StageRunInline, RunEventInline]


@admin.register(Deployment)
class DeploymentAdmin(admin.ModelAdmin):
    list_display = ["id", "project", "run", "status", "url", "commit_sha", "live_at", "stopped_at"]
    list_filter = ["status", "target"]
    readonly_fields = [f.name for f in Deployment._meta.fields]
