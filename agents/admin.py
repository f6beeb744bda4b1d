from django.contrib import admin
from django.db.models import Sum

from agents.models import AgentConfig, Usage, WorkerSession


@admin.register(AgentConfig)
class AgentConfigAdmin(admin.ModelAdmin):
    list_display = ["role", "backend", "model", "runtime", "time_limit_seconds", "budget_usd", "updated_at"]


@admin.register(WorkerSession)
class WorkerSessionAdmin(admin.ModelAdmin):
    list_display = ["id", "project", "role", "runtime", "state", "state_reason", "last_activity_at", "owner_node"]
    list_filter = ["state", "runtime", "role"]
    readonly_fields = [f.name for f in WorkerSession._meta.fields]


@admin.register(Usage)
class UsageAdmin(admin.ModelAdmin):
    list_display = ["created_at", "project", "role", "backend", "model", "input_tokens", "output_tokens", "cost_usd"]
    list_filter = ["backend", "role", "model"]
    date_hierarchy = "created_at"
    readonly_fields = [f.name for f in Usage._meta.fields]

    def changelist_view(self, request, extra_context=None):
        response = super().changelist_view(request, extra_context)
        try:
            qs = response.context_data["cl"].queryset
        except (AttributeError, KeyError):
            return response
        response.context_data["title"] = f"Usage: total ${qs.aggregate(t=Sum('cost_usd'))['t'] or 0}"
        return response
